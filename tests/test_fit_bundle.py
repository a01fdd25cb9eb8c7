"""``groupmood fit-bundle``: a bundle fitted on labelled photos through ``main([...])``, written, loaded back and
run; and the inputs it refuses, with the file and what to do named, before any photo is read."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from groupmood.cli import main
from groupmood.data.folds import stratified_folds, write_folds
from groupmood.engine.bundle_fit import FITTED_BRANCHES
from groupmood.engine.bundle_writer import write_group_bundle
from groupmood.engine.group_cv import GROUP_BRANCH, SCENE_BRANCH, Stack
from groupmood.engine.group_eval import read_fit_photos
from groupmood.engine.regime_cv import CROWD_GROUP_BRANCH, RegimeStack, write_regime_bundle
from groupmood.fusion.calibration import Calibration
from groupmood.fusion.linear import LinearHead
from groupmood.fusion.model import FusionModel
from groupmood.labels import GROUP_CLASSES
from groupmood.pipeline import Bundle, GroupEmotionRecognizer

from test_group_fit import scene_trunk_setup
from test_pipeline import _bundle

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads gain nothing


def _photos(folder, images, n: int) -> list[str]:
    """``n`` labelled photos (the classes in turn, the images in turn) in ``folder`` with its labels.csv; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, names = ["path,label"], []
    for i in range(n):
        Image.fromarray(images[i % len(images)]).save(folder / f"p{i}.jpg", quality=92 - i)
        rows.append(f"p{i}.jpg,{GROUP_CLASSES[i % 3]}")
        names.append(f"p{i}.jpg")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return names


def _folds(path, names, k=2):
    labels = np.arange(len(names)) % 3
    return write_folds(path, names, stratified_folds(labels, k, 0), k, 0, "test")


def _check_loads_back(out) -> Bundle:
    """The written YAML reads into a Bundle whose own mapping is the file's (nothing lost or changed)."""
    spec = Bundle.load(out)
    assert spec.to_dict() == yaml.safe_load(out.read_text())
    return spec


@pytest.mark.slow
def test_fit_bundle_group_writes_a_bundle_that_loads_and_predicts(tmp_path, detector, astronaut, coffee, capsys):
    torch.manual_seed(0)
    base = _bundle(tmp_path / "base", with_global=False)
    small = np.ascontiguousarray(astronaut[::2, ::2])  # a face of about 60 px: found, and MTCNN is quick
    images = [small, np.ascontiguousarray(small[:, ::-1]), np.ascontiguousarray(astronaut[64:448, 64:448]),
              np.ascontiguousarray(coffee[::2, ::2])]
    names = _photos(tmp_path / "photos", images, 9)  # photos 3 and 7 have no face
    (tmp_path / "photos" / "p9.jpg").write_bytes(b"not a photo")  # a bad photo: reported, left out, exit status 1
    with (tmp_path / "photos" / "labels.csv").open("a") as fh:
        fh.write("p9.jpg,Negative\n")
    # nested: each outer fold's choices by CV over the other two; every fold keeps two photos with a face
    folds = _folds(tmp_path / "folds.json", [*names, "p9.jpg"], k=3)
    out = tmp_path / "fitted" / "mine.yaml"
    rc = main(["fit-bundle", str(tmp_path / "photos"), "--folds", str(folds), "--base", str(base), "-o", str(out),
               "--cache", str(tmp_path / "cache"), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and "skipped" in captured.err and "p9.jpg" in captured.err, captured.err
    assert "1 photo(s) could not be read" in captured.err
    assert f"wrote {out}" in captured.out and "held-out accuracy" in captured.out
    spec = _check_loads_back(out)
    assert spec.names[0] == GROUP_BRANCH and set(spec.names) == {GROUP_BRANCH, "aligned", "nonaligned"}
    assert spec.weights["aligned"] == 0.0 and sum(spec.weights.values()) > 0  # aligned left out by default
    assert spec.branch(GROUP_BRANCH).model == (out.parent / "face_group.safetensors").resolve()
    chosen = dict(spec.chosen_on)
    assert chosen["command"].startswith("groupmood fit-bundle ") and "--kind group" in chosen["command"]
    assert 0.0 <= chosen["cv_accuracy"] <= 1.0 and set(chosen["cv_per_class"]) == set(GROUP_CLASSES)
    assert chosen["fit_photos"] == str(out.parent / "mine_fit_photos.tsv")
    assert [role for _, role in read_fit_photos(chosen["fit_photos"])] == ["group"] * 9
    rec = GroupEmotionRecognizer.from_bundle(out, detector=detector)
    results = rec.predict([small, coffee], all_branches=True)
    assert results[0].label in GROUP_CLASSES and len(results[0].faces) >= 1 and results[0].branches[GROUP_BRANCH].spoke
    assert results[1].abstained and not results[1].faces  # no face, and no whole-image fallback in this bundle
    # the evidence is cached: a second fit into another file reads no photo and writes the same group model
    (tmp_path / "photos" / "p0.jpg").write_bytes(b"")  # unreadable now: the cache must be used
    again = tmp_path / "fitted" / "again.yaml"
    assert main(["fit-bundle", str(tmp_path / "photos"), "--folds", str(folds), "--base", str(base), "-o", str(again),
                 "--cache", str(tmp_path / "cache"), "--no-progress", "--no-cv"]) == 0
    spec2 = _check_loads_back(again)
    assert spec2.branch(GROUP_BRANCH).sha256 == spec.branch(GROUP_BRANCH).sha256
    assert spec2.weights == spec.weights and "cv_accuracy" not in spec2.chosen_on


@pytest.mark.slow
def test_fit_bundle_regime_writes_a_regime_bundle(tmp_path, detector, astronaut, coffee, capsys):
    base, _, items = scene_trunk_setup(tmp_path, detector, astronaut, coffee, 12)
    data = tmp_path / "photos"
    for set_name, part in (("groups", items[:6]), ("crowds", items[6:])):
        rows = ["path,label", *[f"{p.name},{GROUP_CLASSES[y]}" for p, y, _ in part]]
        (data / f"{set_name}.csv").write_text("\n".join(rows) + "\n")
        _folds(tmp_path / f"{set_name}_folds.json", [p.name for p, _, _ in part])
    out = tmp_path / "regime" / "bundle.yaml"
    rc = main(["fit-bundle", str(data / "groups.csv"), "--folds", str(tmp_path / "groups_folds.json"),
               "--crowds", str(data / "crowds.csv"), "--crowd-folds", str(tmp_path / "crowds_folds.json"),
               "--kind", "regime", "--base", str(base), "-o", str(out), "--no-cv", "--no-progress",
               "--cache", str(tmp_path / "cache"), "--min-face-frac", "0.05", "--gate-extra", str(data / "0.png")])
    assert rc == 0, capsys.readouterr().err
    spec = _check_loads_back(out)
    assert set(FITTED_BRANCHES) <= set(spec.names)
    assert spec.fusion.kind == "regime" and spec.fusion.reads == SCENE_BRANCH
    assert spec.fusion.file == (out.parent / "regime_gate.safetensors").resolve()
    assert set(spec.fusion.crowd_weights) <= {CROWD_GROUP_BRANCH, SCENE_BRANCH}
    assert "telling crowds from" in spec.chosen_on["method"]  # the last set is the crowd set
    assert "(1 more photos on its photo side" in spec.chosen_on["method"]  # --gate-extra
    rec = GroupEmotionRecognizer.from_bundle(out, detector=detector)
    res = rec.predict([astronaut])[0]
    assert res.label in GROUP_CLASSES and res.crowd is not None and 0.0 <= res.crowd <= 1.0
    # the crowd bundle's procedure on the same sets: the evidence (same photos, trunks, detector) from the cache
    crowd = tmp_path / "crowd" / "bundle.yaml"
    rc = main(["fit-bundle", str(data / "groups.csv"), "--folds", str(tmp_path / "groups_folds.json"),
               "--crowds", str(data / "crowds.csv"), "--crowd-folds", str(tmp_path / "crowds_folds.json"),
               "--kind", "crowd", "--base", str(base), "-o", str(crowd), "--no-cv", "--no-progress",
               "--cache", str(tmp_path / "cache"), "--min-face-frac", "0.05"])
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "cache").glob("evidence_*.npz"))) == 2  # one per set, read again
    spec = _check_loads_back(crowd)
    assert {GROUP_BRANCH, SCENE_BRANCH} <= set(spec.names) and CROWD_GROUP_BRANCH not in spec.names
    assert spec.weights["global"] == 0.0 and spec.weights["aligned"] == 0.0  # kept out by default for crowds
    assert spec.detector_overrides()["min_face_frac"] == 0.05 and spec.chosen_on["min_face_frac"] == 0.05
    assert GroupEmotionRecognizer.from_bundle(crowd, detector=detector).predict([astronaut])[0].crowd is None


def test_fit_bundle_refuses_bad_input_before_reading_a_photo(tmp_path, astronaut, capsys):
    base = _bundle(tmp_path / "base", with_global=False)
    names = _photos(tmp_path / "photos", [astronaut], 3)
    for n in names:  # unreadable: a case that read photos first would end in "no photo could be read" instead
        (tmp_path / "photos" / n).write_bytes(b"")
    good = _folds(tmp_path / "folds.json", names)
    out = str(tmp_path / "out" / "b.yaml")

    def fails(args, *words):
        rc = main(["fit-bundle", *args, *([] if "--base" in args else ["--base", str(base)]), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2, err
        for w in words:
            assert w in err, (w, err)
        assert "Traceback" not in err

    missing = tmp_path / "nowhere" / "labels.csv"
    fails([str(missing), "--folds", str(good), "-o", out], str(missing), "does not exist")
    bad = tmp_path / "bad_folds.json"
    bad.write_text("not json at all")
    fails([str(tmp_path / "photos"), "--folds", str(bad), "-o", out], str(bad), "is not a fold file")
    stale = _folds(tmp_path / "stale.json", names[:2])
    fails([str(tmp_path / "photos"), "--folds", str(stale), "-o", out], str(stale), "not in the fold file")
    absent = tmp_path / "absent.json"
    fails([str(tmp_path / "photos"), "--folds", str(absent), "-o", out], str(absent), "--write-folds")
    fails([str(tmp_path / "photos"), "--folds", str(good), "-o", str(tmp_path / "b.json")], "must be a .yaml")
    fails([str(tmp_path / "photos"), "--folds", str(good), "--kind", "regime", "-o", out], "--crowds")
    fails([str(tmp_path / "photos"), "--folds", str(good), "--base", str(tmp_path / "no.yaml"), "-o", out],
          str(tmp_path / "no.yaml"), "shipped bundle")
    assert not (tmp_path / "out").exists() and not absent.exists()


def test_fit_bundle_with_an_unknown_trunk_names_the_branches(tmp_path, astronaut, capsys):
    """A trunk the base bundle lacks is refused with the bundle's branches named (evidence collection checks it)."""
    torch.manual_seed(0)
    base = _bundle(tmp_path / "base", with_global=True)
    names = _photos(tmp_path / "photos", [astronaut], 3)
    folds = _folds(tmp_path / "folds.json", names)
    rc = main(["fit-bundle", str(tmp_path / "photos"), "--folds", str(folds), "--base", str(base), "--trunk", "nope",
               "-o", str(tmp_path / "o.yaml"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "trunk 'nope' is not a face branch" in err and "nonaligned" in err, err


# --------------------------------------------------------------------------- the writers, through the typed Bundle

def _head(k: int, d: int, seed: int) -> LinearHead:
    rng = np.random.default_rng(seed)
    return LinearHead(rng.normal(0, 0.1, (k, d)), rng.normal(0, 0.1, k))


def test_writers_write_what_they_are_given_and_it_loads_back_equal(tmp_path):
    """Both writers build the YAML as a Bundle: every branch (fitted, then carried with its options), weight,
    calibration, the fusion section, the detector (the base's with the override), min_faces, fallback and chosen_on
    come back from the file as given; files beside it are named relative to it."""
    torch.manual_seed(0)
    base = _bundle(tmp_path / "base", with_global=True, min_faces=2,
                   detector={"thresholds": [0.5, 0.6, 0.8], "min_face_frac": 0.04})
    raw = yaml.safe_load(base.read_text())
    raw["branches"][0].update(calibration={"temperature": 1.5}, grey=True, pooling="top3")  # aligned
    raw["branches"][1].update(tta_flip=True)  # nonaligned: the group head's trunk
    base.write_text(yaml.safe_dump(raw, sort_keys=False))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 10)), np.arange(30) % 3
    model = FusionModel.fit(x, y, ("group", "nonaligned", "global"), ("group", "nonaligned"), 1.0)
    stack = Stack(_head(3, 8, 0), 1e-3, {"group": Calibration(0.5), "nonaligned": Calibration(1.2, (0.1, 0.0, -0.1)),
                                         "global": Calibration()}, "model c=1.0",
                  {"group": 0.7, "nonaligned": 0.3, "global": 0.0}, model, fallback=("global",))
    out = tmp_path / "fitted" / "photo.yaml"
    (tmp_path / "fitted").mkdir()
    (tmp_path / "fitted" / "fit.tsv").write_text("# none\n")
    write_group_bundle(stack, base, out, "nonaligned", {"data": "test", "fit_photos": "fit.tsv"},
                       detector={"min_face_frac": 0.03})
    spec = _check_loads_back(out)
    assert spec.names == ["group", "aligned", "nonaligned", "global"]
    group = spec.branch("group")
    assert (group.tta_flip, group.pooling, group.grey, group.calibration.to_dict()) == (True, "all", None,
                                                                                        {"temperature": 0.5})
    assert spec.branch("aligned").calibration.to_dict() == {"temperature": 1.5}  # left out of the fit: the base's
    assert (spec.branch("aligned").grey, spec.branch("aligned").pooling) == (True, "top3")
    assert spec.branch("nonaligned").calibration.to_dict() == {"temperature": 1.2, "bias": [0.1, 0.0, -0.1]}
    assert spec.branch("global").calibration.is_identity
    assert dict(spec.weights) == {"group": 0.7, "nonaligned": 0.3, "global": 0.0, "aligned": 0.0}
    assert spec.fusion.kind == "model" and spec.fusion.file == (out.parent / "fusion.safetensors").resolve()
    assert spec.detector_overrides() == {"thresholds": (0.5, 0.6, 0.8), "min_face_frac": 0.03}
    assert (spec.min_faces, spec.fallback) == (2, ("global",))
    assert dict(spec.chosen_on) == {"data": "test", "fit_photos": str((out.parent / "fit.tsv").resolve())}
    text = out.read_text()
    assert "model: face_group.safetensors" in text and "fit_photos: fit.tsv" in text

    photo = Stack(_head(3, 8, 1), 1e-4, {"group": Calibration(0.3), "global": Calibration(9.0)}, "weighted",
                  {"group": 0.8, "nonaligned": 0.2}, None, fallback=("global",))
    crowd = Stack(_head(3, 8, 2), 1e-3, {"group": Calibration(0.6), "scene": Calibration(0.7)}, "weighted",
                  {"group": 0.6, "scene": 0.4}, None, fallback=("scene",), scene_head=_head(3, 1280, 3))
    rs = RegimeStack(photo, crowd, _head(2, 1280, 4), 0.01)
    regime = write_regime_bundle(rs, base, tmp_path / "fitted" / "regime.yaml", "nonaligned", {"data": "test"})
    spec = _check_loads_back(regime)
    assert spec.names == ["group", "group_crowd", "scene", "aligned", "nonaligned", "global"]
    assert spec.branch("group_crowd").calibration.to_dict() == {"temperature": 0.6}  # the crowd regime's, renamed
    assert spec.branch("global").calibration.is_identity  # kept as the base's (keep_calibration), not 9.0
    assert dict(spec.weights) == {"group": 0.8, "group_crowd": 0.0, "scene": 0.0, "aligned": 0.0,
                                  "nonaligned": 0.2, "global": 0.0}
    assert spec.fusion.kind == "regime" and spec.fusion.reads == "scene"
    assert dict(spec.fusion.crowd_weights) == {"group_crowd": 0.6, "scene": 0.4}
    assert spec.fusion.crowd_fallback == ("scene",) and spec.fallback == ("global",)
    assert spec.detector_overrides() == {"thresholds": (0.5, 0.6, 0.8), "min_face_frac": 0.04}
    gate = (tmp_path / "fitted" / "regime_gate.safetensors").read_bytes()
    write_regime_bundle(rs, base, tmp_path / "fitted" / "regime.yaml", "nonaligned", {"data": "again"})
    assert (tmp_path / "fitted" / "regime_gate.safetensors").read_bytes() == gate  # the same gate: the file stays
