"""GroupEmotionRecognizer end to end on real photos through bundles of tiny random models; the CLI commands."""
from __future__ import annotations

import copy
import csv
import html
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from groupmood.cli import main
from groupmood.config import DEFAULTS
from groupmood.errors import ConfigError, WeightsError
from groupmood.fusion import ABSTAIN
from groupmood.labels import FERPLUS_EMOTIONS, GROUP_CLASSES
from groupmood.models import create_model
from groupmood.pipeline import GroupEmotionRecognizer
from groupmood.report import annotate


def _save(path, name, classes):
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"]["name"] = name
    model = create_model(name, num_classes=len(classes), head="softmax", margin_m=4, drop_rate=0.0)
    torch.save({"model": model.state_dict(), "config": cfg, "classes": list(classes)}, path)


def _bundle(folder, with_global=True, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    _save(folder / "aligned.pt", "sphereface_tiny", GROUP_CLASSES)
    _save(folder / "nonaligned.pt", "resnet_tiny_48", FERPLUS_EMOTIONS)  # read as valence
    branches = [{"name": "aligned", "model": "aligned.pt"}, {"name": "nonaligned", "model": "nonaligned.pt"}]
    weights = {"aligned": 3.0, "nonaligned": 0.5}
    if with_global:
        _save(folder / "global.pt", "mobilenet_v2", GROUP_CLASSES)  # random init, 2.2 M parameters
        branches.append({"name": "global", "model": "global.pt"})
        weights["global"] = 0.5
    spec = {"format": "groupmood-bundle-1", "branches": branches, "weights": weights,
            "chosen_on": {"data": "none (random tiny models)", "method": "preset run1"}, **extra}
    (folder / "bundle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "bundle.yaml"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return _bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def recognizer(bundle, detector):
    torch.set_num_threads(1)
    return GroupEmotionRecognizer.from_bundle(bundle, detector=detector)


@pytest.fixture(scope="module")
def results(recognizer, astronaut, coffee):
    return recognizer.predict([astronaut, coffee])


def test_results_fuse_the_branches_by_weight(recognizer, results):
    assert set(recognizer.branches) == {"aligned", "nonaligned", "global"}
    assert recognizer.branches["aligned"].tta_flip and recognizer.branches["nonaligned"].top_k == 3
    astro, cof = results
    assert len(astro.faces) == 1 and not astro.no_face and not astro.abstained
    assert astro.label in GROUP_CLASSES and astro.probs.shape == (3,)
    assert astro.probs.sum() == pytest.approx(1.0)
    for name, br in astro.branches.items():
        assert br.spoke and br.probs.shape == (3,) and br.probs.sum() == pytest.approx(1.0)
    assert sum(br.effective_weight for br in astro.branches.values()) == pytest.approx(1.0)
    assert astro.branches["aligned"].effective_weight == pytest.approx(3 / 4)
    face = astro.faces[0]
    assert face.box.shape == (4,) and face.landmarks.shape == (5, 2) and face.score > 0.9
    assert set(face.branch_probs) == {"aligned", "nonaligned"} and face.pooled == ("aligned", "nonaligned")
    assert face.probs.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(astro.branches["aligned"].probs, face.branch_probs["aligned"])
    # the fused vector is the weighted mean of the branches, and the label its argmax
    fused = sum(br.effective_weight * br.probs for br in astro.branches.values())
    np.testing.assert_allclose(astro.probs, fused, atol=1e-6)
    assert astro.label == GROUP_CLASSES[int(np.argmax(fused))]
    rec = json.loads(json.dumps(astro.to_dict()))
    assert rec["label"] == astro.label and rec["n_faces"] == 1 and rec["faces"][0]["pooled_in"]


def test_no_face_photo_face_branches_abstain(results):
    cof = results[1]
    assert cof.no_face and cof.faces == [] and not cof.abstained
    assert not cof.branches["aligned"].spoke and not cof.branches["nonaligned"].spoke
    assert cof.branches["aligned"].effective_weight == 0.0 and cof.branches["global"].effective_weight == 1.0
    np.testing.assert_allclose(cof.probs, cof.branches["global"].probs)
    d = cof.to_dict()
    assert d["no_face"] is True and d["faces"] == [] and d["branches"]["aligned"]["spoke"] is False


def test_batch_equals_one_by_one(recognizer, results, astronaut, coffee):
    for img, batched in zip((astronaut, coffee), results):
        single = recognizer.predict_one(img)
        np.testing.assert_allclose(single.probs, batched.probs, atol=1e-5)
        assert single.label == batched.label and len(single.faces) == len(batched.faces)
        for b in single.branches:
            np.testing.assert_allclose(single.branches[b].probs, batched.branches[b].probs, atol=1e-5)


def test_face_branches_only_abstain_without_faces(tmp_path, detector, coffee):
    rec = GroupEmotionRecognizer.from_bundle(_bundle(tmp_path / "faces_only", with_global=False), detector=detector)
    r = rec.predict([coffee])[0]
    assert r.no_face and r.abstained and r.label == ABSTAIN
    assert r.to_dict()["label"] == ABSTAIN


def test_branches_without_weight_are_skipped_unless_asked(recognizer, astronaut):
    """A weight-0 branch changes no label: it is not run, unless its evidence is asked for."""
    rec = recognizer.with_fusion(weights={"aligned": 0.0, "nonaligned": 1.0, "global": 1.0})
    assert list(rec.active_branches()) == ["nonaligned", "global"]
    quick, full = rec.predict(astronaut)[0], rec.predict(astronaut, all_branches=True)[0]
    assert set(quick.branches) == {"nonaligned", "global"} and set(full.branches) == {"aligned", "nonaligned", "global"}
    assert quick.label == full.label and np.allclose(quick.probs, full.probs)
    assert set(quick.faces[0].branch_probs) == {"nonaligned"}
    assert full.branches["aligned"].effective_weight == 0.0


def test_top_k_pooling_uses_largest_faces(recognizer, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256)))
    canvas = np.full((512, 768, 3), 255, np.uint8)
    canvas[:, :512] = astronaut
    canvas[128:384, 512:] = small
    top1 = recognizer.with_fusion(pooling="top1").predict_one(canvas)
    assert len(top1.faces) == 2
    largest = int(np.argmax([f.area for f in top1.faces]))
    assert top1.branches["aligned"].faces == (largest,) and top1.branches["aligned"].pooling == "top1"
    np.testing.assert_allclose(top1.branches["aligned"].probs, top1.faces[largest].branch_probs["aligned"])
    every = recognizer.with_fusion(pooling="all").predict_one(canvas)
    assert every.branches["nonaligned"].faces == (0, 1)
    np.testing.assert_allclose(every.branches["nonaligned"].probs,
                               np.mean([f.branch_probs["nonaligned"] for f in every.faces], axis=0))


def test_global_branch_is_the_model_on_centre_crop_and_flip(tmp_path, detector, astronaut, coffee):
    """The shipped global model through the pipeline equals the model run by hand on centre crop and flip."""
    from groupmood.data.transforms import global_eval_views, normalize
    from groupmood.engine.evaluate import load_model
    from groupmood.models import model_info
    from groupmood.pipeline import default_bundle_path

    shipped = default_bundle_path().parent / "global_efficientnet_lite0.safetensors"
    spec = {"format": "groupmood-bundle-1", "branches": [{"name": "global", "model": str(shipped)}],
            "weights": {"global": 1.0}, "chosen_on": {"data": "none", "method": "test"}}
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump(spec))
    rec = GroupEmotionRecognizer.from_bundle(tmp_path / "bundle.yaml", detector=detector)
    model, _ = load_model(shipped)
    for photo in (astronaut, coffee):  # coffee: the flip moves Negative by about 0.04
        with torch.no_grad():
            logits = model(normalize(global_eval_views(photo), model_info("efficientnet_lite0"))).mean(dim=0)
        res = rec.predict_one(photo)
        np.testing.assert_allclose(res.branches["global"].probs, torch.softmax(logits, 0).numpy(), atol=1e-4)
        np.testing.assert_allclose(res.probs, res.branches["global"].probs, atol=1e-6)


def test_annotate_real_result_adds_banner(results, astronaut, coffee):
    for photo, res in zip((astronaut, coffee), results):  # a face, and no face (face branches abstain)
        out = annotate(photo, res)
        assert out.shape[1] == photo.shape[1] and out.shape[0] > photo.shape[0] and out.dtype == np.uint8
        below = out[out.shape[0] - photo.shape[0]:]
        keep = np.ones(photo.shape[:2], bool)  # the photo is untouched away from the faces' boxes and tags
        for f in res.faces:
            x1, y1, x2, y2 = f.box
            keep[max(0, int(y1) - 40):int(y2) + 10, max(0, int(x1) - 10):int(x2) + 10] = False
        assert np.array_equal(below[keep], photo[keep])
        assert (res.faces == []) == np.array_equal(below, photo)


def test_bundle_errors(tmp_path, bundle, monkeypatch):
    import groupmood.pipeline.recognizer as recognizer

    monkeypatch.setattr(recognizer, "default_bundle_path", lambda: tmp_path / "assets" / "bundle.yaml")
    with pytest.raises(WeightsError, match="bundle.yaml is missing"):
        GroupEmotionRecognizer.default()
    spec = yaml.safe_load(bundle.read_text())
    spec["branches"][0]["model"] = "gone.pt"
    (tmp_path / "b1.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(WeightsError, match="gone.pt"):
        GroupEmotionRecognizer.from_bundle(tmp_path / "b1.yaml", detector=object())
    spec = yaml.safe_load(bundle.read_text())
    spec["weigths"] = spec.pop("weights")
    (tmp_path / "b2.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="weigths"):
        GroupEmotionRecognizer.from_bundle(tmp_path / "b2.yaml", detector=object())
    spec = yaml.safe_load(bundle.read_text())
    spec["weights"]["faces"] = 1.0
    (tmp_path / "b3.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="faces"):
        GroupEmotionRecognizer.from_bundle(tmp_path / "b3.yaml", detector=object())


# --------------------------------------------------------------------------- CLI

def _photos(tmp_path, astronaut, coffee):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "astronaut photo.jpg")
    Image.fromarray(coffee).save(src / "cup <b>&amp.png")
    (src / "broken.jpg").write_bytes(b"")
    return src


def test_cli_detector_settings_come_from_the_bundle(tmp_path, bundle, astronaut):
    """The bundle's detector section is what predict uses, unless the command line says otherwise."""
    from groupmood.cli.common import detector_settings

    spec = yaml.safe_load(bundle.read_text())
    spec["detector"] = {"min_face_frac": 0.5, "thresholds": [0.5, 0.6, 0.8]}
    det_bundle = bundle.parent / "det.yaml"
    det_bundle.write_text(yaml.safe_dump(spec))
    assert detector_settings(None, None, None, None, det_bundle) == {"min_face_frac": 0.5,
                                                                     "thresholds": (0.5, 0.6, 0.8)}
    assert detector_settings(0.1, None, None, 0.8, det_bundle) == {"min_face_frac": 0.1, "factor": 0.8,
                                                                   "thresholds": (0.5, 0.6, 0.8)}
    assert detector_settings(None, None, None, None, det_bundle, use_bundle=False) == {}
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo)
    faces = {}
    for name, extra in (("bundle", []), ("cli", ["--min-face-frac", "0.05"])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["predict", str(photo), "--bundle", str(det_bundle), "-o", str(out), "--no-progress", *extra]) == 0
        faces[name] = json.loads(out.read_text())["n_faces"]
    assert faces == {"bundle": 0, "cli": 1}  # her face is about a fifth of the photo's shorter side


def test_predict_cli_jsonl_annotate_report(tmp_path, bundle, astronaut, coffee, capsys):
    src = _photos(tmp_path, astronaut, coffee)
    out = tmp_path / "out" / "pred.jsonl"
    report = tmp_path / "report.html"
    rc = main(["predict", str(src), "--bundle", str(bundle), "-o", str(out), "--annotate", str(tmp_path / "ann"),
               "--report", str(report), "--no-progress", "--batch-size", "2"])
    assert rc == 1  # the broken file
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "2 photos, 1 faces, 1 failed" in err
    recs = {json.loads(ln)["file"].split("/")[-1]: json.loads(ln) for ln in out.read_text().splitlines()}
    assert set(recs) == {"astronaut photo.jpg", "cup <b>&amp.png", "broken.jpg"}
    assert recs["broken.jpg"]["error"] == "empty file (0 bytes)"
    assert recs["cup <b>&amp.png"]["no_face"] is True
    assert recs["astronaut photo.jpg"]["n_faces"] == 1 and recs["astronaut photo.jpg"]["label"] in GROUP_CLASSES
    assert (tmp_path / "ann" / "astronaut photo.jpg").exists() and (tmp_path / "ann" / "cup <b>&amp.jpg").exists()
    page = report.read_text(encoding="utf-8")
    assert html.escape("cup <b>&amp.png") in page and "cup <b>" not in page
    assert page.count("data:image/jpeg;base64,") == 2 and "broken.jpg" in page and "abstained" in page
    assert f"bundle: {bundle}" in page and "weights: aligned=3, nonaligned=0.5, global=0.5" in page
    assert not list(tmp_path.rglob("*.partial"))


def test_predict_cli_csv_with_preset_and_pooling(tmp_path, bundle, astronaut, coffee, capsys):
    src = _photos(tmp_path, astronaut, coffee)
    out = tmp_path / "pred.csv"
    rc = main(["predict", str(src / "astronaut photo.jpg"), str(src / "cup*.png"), "--bundle", str(bundle),
               "--format", "csv", "-o", str(out), "--preset", "run5", "--pooling", "all", "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 2 and rows[0]["file"].endswith("astronaut photo.jpg")
    assert rows[0]["aligned_spoke"] == "1" and rows[1]["aligned_spoke"] == "0" and rows[1]["no_face"] == "1"
    assert sum(float(rows[0][c]) for c in GROUP_CLASSES) == pytest.approx(1, abs=1e-3)
    assert main(["predict", str(src), "--bundle", str(bundle), "--weights", "aligned=1", "--preset", "run1"]) == 2
    assert main(["predict", str(src), "--bundle", str(bundle), "--weights", "face=1", "--no-progress"]) == 2
    assert main(["predict", str(src), "--bundle", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_groups_cli_then_fuse_search(tmp_path, bundle, astronaut, coffee, capsys):
    data = tmp_path / "groups"
    for split, cls, img, name in (("val", "Positive", astronaut, "astro.jpg"),
                                  ("val", "Neutral", coffee, "cup one.png"),
                                  ("train", "Negative", coffee, "other.png")):
        (data / split / cls).mkdir(parents=True)
        Image.fromarray(img).save(data / split / cls / name)
    out = tmp_path / "eval"
    rc = main(["evaluate-groups", str(data), "--split", "val", "--bundle", str(bundle), "-o", str(out),
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fused" in printed and "pooling: top3" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 2 and set(report["tables"]) == {"bundle", "all", "top3"}
    fused = report["tables"]["bundle"]["models"]["fused"]
    assert fused["n"] == 2 and fused["coverage"] == 1.0
    assert report["tables"]["all"]["models"]["aligned"]["coverage"] == 0.5  # coffee: no face
    assert (out / "confusion_fused.png").exists() and (out / "confusion_global.png").exists()
    aligned_scores = (out / "scores" / "aligned_all.txt").read_text().splitlines()
    assert len(aligned_scores) == 1 and aligned_scores[0].startswith("val/Positive/astro.jpg ")
    rc = main(["fuse", f"--branch=aligned={out / 'scores' / 'aligned_top3.txt'}",
               f"--branch=nonaligned={out / 'scores' / 'nonaligned_top3.txt'}",
               f"--branch=global={out / 'scores' / 'global.txt'}", "--search", "--labels",
               str(out / "scores" / "labels.csv"), "-o", str(tmp_path / "fused.csv")])
    assert rc == 0
    assert "66 weight sets tried" in capsys.readouterr().err


def test_bundle_with_safetensors_export_and_sha256(tmp_path, bundle, detector, astronaut, results):
    from groupmood.engine.train import export
    from groupmood.weights import sha256_file

    folder = bundle.parent
    exported = export(folder / "aligned.pt", tmp_path / "aligned.safetensors")
    spec = yaml.safe_load(bundle.read_text())
    spec["branches"][0].update(model=str(exported), sha256=sha256_file(exported))
    for b in spec["branches"][1:]:
        b["model"] = str(folder / b["model"])
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(spec))
    rec = GroupEmotionRecognizer.from_bundle(tmp_path / "st.yaml", detector=detector)
    r = rec.predict_one(astronaut)
    np.testing.assert_allclose(r.branches["aligned"].probs, results[0].branches["aligned"].probs, atol=1e-2)
    spec["branches"][0]["sha256"] = "0" * 64
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(WeightsError, match="sha256"):
        GroupEmotionRecognizer.from_bundle(tmp_path / "bad.yaml", detector=detector)


def test_read_group_items_csv_and_errors(tmp_path, astronaut):
    from groupmood.engine.group_eval import read_group_items
    from groupmood.errors import DatasetError

    (tmp_path / "img").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "img" / "a b.jpg")
    (tmp_path / "list.csv").write_text("path,label\nimg/a b.jpg,positive\n")
    items = read_group_items(tmp_path / "list.csv")
    assert items == [(tmp_path / "img" / "a b.jpg", 2, "img/a b.jpg")]
    with pytest.raises(DatasetError, match="no split"):
        read_group_items(tmp_path / "list.csv", split="val")
    with pytest.raises(DatasetError, match="does not exist"):
        read_group_items(tmp_path / "nothing")


def test_branch_reads_subsets_of_group_classes_and_expressions():
    from groupmood.models import model_info
    from groupmood.pipeline import Branch

    torch.set_num_threads(1)
    info = model_info("resnet_tiny_48")
    two = Branch(create_model("resnet_tiny_48", num_classes=2), ["Negative", "Positive"], info)
    p = two.scores(np.zeros((2, 48, 48, 1), np.uint8))
    assert p.shape == (2, 3) and np.all(p[:, 1] == 0) and np.allclose(p.sum(1), 1)
    with pytest.raises(ConfigError, match="neither group classes nor expressions"):
        Branch(create_model("resnet_tiny_48", num_classes=2), ["cat", "dog"], info)


def test_branch_chunks_give_the_same_scores(recognizer):
    from groupmood.models import model_info
    from groupmood.pipeline import Branch

    torch.manual_seed(0)
    info = model_info("resnet_tiny_48")
    model = create_model("resnet_tiny_48", num_classes=len(FERPLUS_EMOTIONS))
    x = np.random.default_rng(0).integers(0, 256, (7, 48, 48, 1), dtype=np.uint8)
    whole = Branch(model, FERPLUS_EMOTIONS, info, tta_flip=True)
    chunked = Branch(copy.deepcopy(model), FERPLUS_EMOTIONS, info, tta_flip=True, batch_size=3)
    assert whole.batch_size == 128 and chunked.batch_size == 3
    np.testing.assert_allclose(chunked.scores(x), whole.scores(x), atol=1e-5)
    assert recognizer.branches["global"].batch_size == 1  # one photo (two views) per pass on a CPU
    with pytest.raises(ValueError, match="batch_size"):
        Branch(model, FERPLUS_EMOTIONS, info, batch_size=0)


def test_min_faces_lets_the_whole_image_branch_decide_a_single_face(tmp_path, detector, astronaut):
    path = _bundle(tmp_path / "mf", min_faces=2)
    spec = yaml.safe_load(path.read_text())
    del spec["min_faces"]
    (path.parent / "one.yaml").write_text(yaml.safe_dump(spec))
    group = GroupEmotionRecognizer.from_bundle(path, detector=detector)
    every = GroupEmotionRecognizer.from_bundle(path.parent / "one.yaml", detector=detector)
    assert (group.min_faces, every.min_faces) == (2, 1)
    (one,), (ref,) = group.predict(astronaut), every.predict(astronaut)
    assert len(one.faces) == 1
    for name in ("aligned", "nonaligned"):
        assert ref.branches[name].spoke and not one.branches[name].spoke
    assert one.branches["global"].spoke
    np.testing.assert_allclose(one.probs, one.branches["global"].probs, atol=1e-12)
    assert not np.allclose(ref.probs, one.probs)
    np.testing.assert_allclose(one.faces[0].probs, ref.faces[0].probs)  # the face keeps its evidence
    (pair,) = group.predict(np.concatenate([astronaut, astronaut], axis=1))
    assert len(pair.faces) == 2 and pair.branches["aligned"].spoke and pair.branches["nonaligned"].spoke
    for bad in (0, "2", True):
        with pytest.raises(ConfigError, match="min_faces"):
            GroupEmotionRecognizer.from_bundle(_bundle(tmp_path / f"bad{bad}", min_faces=bad), detector=detector)


def test_fallback_branch_runs_only_where_no_weighted_branch_speaks(tmp_path, detector, astronaut):
    """Whole-image branch at weight 0 as the fallback: it labels the one-face photo and is not run on the group."""
    path = _bundle(tmp_path / "fb", min_faces=2, fallback=["global"])
    spec = yaml.safe_load(path.read_text())
    spec["weights"]["global"] = 0.0
    path.write_text(yaml.safe_dump(spec))
    rec = GroupEmotionRecognizer.from_bundle(path, detector=detector)
    assert rec.fallback == ("global",) and rec.fallback_only() == frozenset({"global"})
    assert "global" in rec.active_branches()
    pair_photo = np.concatenate([astronaut, astronaut], axis=1)
    one, pair = rec.predict([astronaut, pair_photo])
    assert len(one.faces) == 1 and one.branches["global"].spoke and one.label != ABSTAIN
    np.testing.assert_allclose(one.probs, one.branches["global"].probs, atol=1e-12)
    assert len(pair.faces) == 2 and not pair.branches["global"].spoke  # not run: the face branches decide
    (every,) = rec.predict([pair_photo], all_branches=True)
    assert every.branches["global"].spoke  # asked for every branch: it runs, and still does not vote
    np.testing.assert_allclose(every.probs, pair.probs, atol=1e-12)
    without = GroupEmotionRecognizer.from_bundle(path, detector=detector).with_fusion()
    assert without.fallback == ("global",)
    spec["fallback"] = ["nope"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="fallback"):
        GroupEmotionRecognizer.from_bundle(path, detector=detector)


def test_evaluate_groups_names_its_in_sample_photos_and_writes_calibrated_scores(tmp_path, detector, astronaut,
                                                                                coffee, capsys):
    """A bundle listing its fitting photos (chosen_on.fit_photos): evaluate-groups says how many of the photos it
    evaluates were fitted on, and by what; its score files are calibrated as the bundle fuses them, so ``fuse``
    with the bundle's weights gives the bundle's labels on the score files alone."""
    from groupmood.engine.group_eval import write_fit_photos

    data = tmp_path / "groups"
    for cls, img, name in (("Positive", astronaut, "astro.jpg"), ("Neutral", coffee, "cup.png")):
        (data / cls).mkdir(parents=True)
        Image.fromarray(img).save(data / cls / name)
    folder = tmp_path / "b"
    spec_path = _bundle(folder, with_global=False)
    write_fit_photos(folder / "fit_photos.tsv", [(data / "Positive" / "astro.jpg", "group")])
    spec = yaml.safe_load(spec_path.read_text())
    spec["branches"][0]["calibration"] = {"temperature": 0.25}  # a temperature that changes the scores
    spec["chosen_on"].update(fit_photos="fit_photos.tsv", cv_accuracy=0.5)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "eval"
    assert main(["evaluate-groups", str(data), "--bundle", str(spec_path), "-o", str(out), "--no-progress",
                 "--pooling", "all"]) == 0
    printed = capsys.readouterr().out
    assert "note: 1 of the 2 photos evaluated were used to fit this bundle (1 fitted the group head" in printed
    assert "cross-validated accuracy on its fitting photos is 50.0%" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["in_sample"] == {"known": True, "n": 1, "of": 2, "roles": {"group": 1}}
    raw = (out / "scores" / "raw" / "aligned_all.txt").read_text()
    calibrated = (out / "scores" / "aligned_all.txt").read_text()
    assert raw != calibrated
    fused = tmp_path / "fused.csv"
    assert main(["fuse", f"--branch=aligned={out / 'scores' / 'aligned_all.txt'}",
                 f"--branch=nonaligned={out / 'scores' / 'nonaligned_all.txt'}", "--weights",
                 "aligned=3,nonaligned=0.5", "-o", str(fused)]) == 0
    rec = GroupEmotionRecognizer.from_bundle(spec_path, detector=detector, pooling="all")
    want = {"Positive/astro.jpg": rec.predict_one(astronaut).label}
    got = {r["name"]: r["label"] for r in csv.DictReader(fused.open()) if r["name"] in want}
    assert got == want


def test_shipped_bundle_lists_its_fitting_photos():
    from groupmood.pipeline import Bundle, default_bundle_path

    for bundle, n in (("photo", 127), (default_bundle_path(), 127 + 926)):  # multiemova-dev (and crowd-dev)
        listed = Bundle.load(bundle).chosen_on["fit_photos"]
        lines = [ln for ln in open(listed, encoding="utf-8").read().splitlines() if not ln.startswith("#")]
        assert sum(ln.endswith("\tgroup") for ln in lines) == n
