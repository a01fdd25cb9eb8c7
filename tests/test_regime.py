"""Fusion by regime: the gate, the mix of two weighted fusions, their fitting and the bundles that carry them."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from groupmood.data.folds import stratified_folds
from groupmood.engine.group_cv import GROUP_BRANCH, SCENE_BRANCH, Evidence, StackOptions, collect_evidence
from groupmood.engine.regime_cv import (CROWD_GROUP_BRANCH, RegimeOptions, apply_regimes, cross_validate_regimes,
                                        select_and_fit_regimes, write_regime_bundle)
from groupmood.errors import ConfigError, DatasetError, WeightsError
from groupmood.fusion import ABSTAIN, Fused, Pooled, fuse
from groupmood.fusion.regime import RegimeGate, mix
from groupmood.labels import GROUP_CLASSES
from groupmood.fusion.linear import LinearHead
from groupmood.pipeline import Bundle, GroupEmotionRecognizer
from groupmood.samples import sample_path

from test_group_fit import scene_trunk_setup
from test_pipeline import _bundle

FAST = RegimeOptions(gate_cs=(0.01, 1.0), stack=StackOptions(head_cs=(1.0,), scene_cs=(1.0,), fusion_cs=(1.0,),
                                                             fusion_kinds=("single", "weighted")))


def _fused(probs, weights, spoke=True) -> Fused:
    i = int(np.argmax(probs)) if spoke else -1
    return Fused(GROUP_CLASSES[i] if spoke else ABSTAIN, i, np.asarray(probs, float), weights,
                 {n: spoke for n in weights})


def test_mix_weighs_the_two_fusions_by_the_gate():
    photo = _fused([0.7, 0.2, 0.1], {"group": 1.0, "scene": 0.0})
    crowd = _fused([0.1, 0.2, 0.7], {"group": 0.0, "scene": 1.0})
    for p in (0.0, 0.25, 1.0):
        m = mix(photo, crowd, p)
        assert m.probs == pytest.approx((1 - p) * photo.probs + p * crowd.probs)
        assert m.weights == pytest.approx({"group": 1 - p, "scene": p}) and sum(m.weights.values()) == pytest.approx(1)
    assert mix(photo, crowd, 0.6).label == "Positive" and mix(photo, crowd, 0.4).label == "Negative"
    silent = _fused([1 / 3] * 3, {"group": 0.0}, spoke=False)
    assert mix(silent, crowd, 0.1).probs == pytest.approx(crowd.probs)  # an abstaining side gives way
    assert mix(photo, silent, 0.9).probs == pytest.approx(photo.probs)
    assert mix(silent, silent, 0.5).abstained


def test_gate_file_round_trip_and_errors(tmp_path):
    head = LinearHead(np.array([[0.5, -1.0], [-0.5, 1.0]]), np.array([0.1, -0.1]))
    gate = RegimeGate(head, "scene", {"group_crowd": 0.6, "scene": 0.4}, ("scene",), "ab" * 32, {"c": "0.01"})
    path = gate.save(tmp_path / "gate.safetensors")
    back = RegimeGate.load(path, gate.weights, gate.fallback)
    assert back.reads == "scene" and back.trunk_sha256 == "ab" * 32 and back.meta == {"c": "0.01"}
    x = np.array([[1.0, 2.0], [-3.0, 0.5]])
    z = x @ head.weight.T + head.bias
    want = np.exp(z[:, 1]) / np.exp(z).sum(1)
    assert np.abs(back.crowd_probs(x) - want).max() <= 4 * np.finfo(float).eps
    with pytest.raises(ConfigError, match="reads 2 trunk features"):
        back.crowd_probs(np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="every crowd-regime weight is 0"):
        RegimeGate(head, "scene", {"scene": 0.0})
    with pytest.raises(ConfigError, match="2 classes"):
        RegimeGate(LinearHead(np.zeros((3, 2)), np.zeros(3)), "scene", {"scene": 1.0})
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        RegimeGate.load(tmp_path / "bad.safetensors", {"scene": 1.0})
    with pytest.raises(WeightsError, match="does not exist"):
        RegimeGate.load(tmp_path / "missing.safetensors", {"scene": 1.0})


def test_bundle_rejects_a_bad_regime_section(tmp_path):
    base = _bundle(tmp_path / "b", with_global=True)
    spec = yaml.safe_load(base.read_text())
    cases = {
        "needs 'gate: FILE'": {"kind": "regime", "reads": "global", "crowd": {"weights": {"global": 1.0}}},
        "whole-image branch of the bundle": {"kind": "regime", "gate": "g.safetensors", "reads": "nope",
                                             "crowd": {"weights": {"global": 1.0}}},
        "fusion.crowd must be": {"kind": "regime", "gate": "g.safetensors", "reads": "global",
                                 "crowd": {"weights": {"elsewhere": 1.0}}},
        "fusion must be": {"kind": "regime", "model": "x.safetensors"},
    }
    for message, fusion in cases.items():
        (tmp_path / "b" / "r.yaml").write_text(yaml.safe_dump({**spec, "fusion": fusion}))
        with pytest.raises(ConfigError, match=message) as info:
            Bundle.load(tmp_path / "b" / "r.yaml")
        assert "r.yaml" in str(info.value)


def _two_sets(n_photo: int, n_crowd: int, seed: int) -> Evidence:
    """Photos of a few people whose faces tell the class, and crowds whose scene tells it; the whole-image features
    also tell the two apart (their first feature)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(0, 1, (3, 8))
    parts = []
    for name, n, crowd in (("groups", n_photo, 0), ("crowds", n_crowd, 1)):
        y = np.arange(n) % 3
        faces = [(centres[y[i]] * (1 - crowd) + rng.normal(0, 0.7, (3, 8))) for i in range(n)]
        images = np.concatenate([np.full((n, 1), 3.0 * crowd), centres[y] * crowd + rng.normal(0, 0.7, (n, 8))], 1)
        parts.append(Evidence([f"{name}/p{i}" for i in range(n)], y,
                              {"global": rng.dirichlet(np.ones(3), n), "nonaligned": rng.dirichlet(np.ones(3), n)},
                              {"global": np.ones(n, bool), "nonaligned": np.ones(n, bool)}, ("nonaligned",), faces,
                              [np.full(3, 0.01) for _ in range(n)], images.astype(np.float32), np.full(n, name)))
    return Evidence.concat(parts)


def test_regimes_fit_each_set_its_own_evidence_and_the_cv_is_nested():
    """Faces tell the class on one set and the scene on the other: the photo regime leans on the group head, the
    crowd regime on the scene head, the gate tells the sets apart, and held-out labels are right on both."""
    ev = _two_sets(45, 135, 0)  # crowds outnumber the group photos, as in the real sets
    opts = RegimeOptions(crowd_set="crowds", **{k: getattr(FAST, k) for k in ("gate_cs", "stack")})
    folds = stratified_folds(ev.labels, 3, 0)
    rs = select_and_fit_regimes(ev, folds, opts)
    assert rs.photo.weights[GROUP_BRANCH] > 0.5 and rs.crowd.weights[SCENE_BRANCH] > 0  # the scene speaks for crowds
    assert set(rs.crowd.weights) == {GROUP_BRANCH, SCENE_BRANCH}  # the photo regime's branches stay out
    fused, p = apply_regimes(rs, ev, opts)
    assert np.allclose(fused.sum(1), 1) and (p[ev.sets == "crowds"] > 0.5).all() and (p[ev.sets == "groups"] < 0.5).all()
    cv = cross_validate_regimes(ev, folds, opts)
    assert len(cv["folds"]) == 3 and all(f["gate_c"] in opts.gate_cs for f in cv["folds"])
    assert cv["tables"]["groups"]["accuracy"] > 0.8 and cv["tables"]["crowds"]["accuracy"] > 0.8
    assert cv["gate_accuracy"] == {"groups": 1.0, "crowds": 1.0}
    with pytest.raises(DatasetError, match="crowd set"):
        select_and_fit_regimes(ev.subset(np.flatnonzero(ev.sets == "groups")), folds[ev.sets == "groups"], opts)


def _check_regime_result(rec: GroupEmotionRecognizer, res) -> None:
    """The result's fused probabilities are the two regimes' weighted fusions of its calibrated branches, mixed by
    its crowd probability (recomputed here from the branch results)."""
    pooled = {n: Pooled(b.probs, b.spoke, b.faces) for n, b in res.branches.items()}
    photo = fuse(pooled, rec.weights, fallback=rec.fallback)
    crowd = fuse(pooled, rec.regime.weights, fallback=rec.regime.fallback)
    p = res.crowd
    assert 0.0 <= p <= 1.0
    want = (1 - p) * photo.probs + p * crowd.probs
    assert np.abs(res.probs - want).max() <= 8 * np.finfo(float).eps and res.label == GROUP_CLASSES[int(want.argmax())]
    assert sum(b.effective_weight for b in res.branches.values()) == pytest.approx(1.0)
    assert res.to_dict()["crowd"] == round(p, 4)


@pytest.mark.slow
def test_written_regime_bundle_runs_end_to_end(tmp_path, detector, astronaut, coffee):
    """Evidence of real photos in two sets -> regimes -> a written bundle: its group heads, scene model and gate
    load, the gate reads the scene branch's trunk, and every result is the mix of the two fusions."""
    base, rec, items = scene_trunk_setup(tmp_path, detector, astronaut, coffee, 12)
    ev = collect_evidence(rec, items, "nonaligned", progress=False, scene_trunk="global")
    ev.sets = np.array(["groups" if i < 6 else "crowds" for i in range(len(ev))])
    folds = np.arange(len(ev)) % 2
    opts = RegimeOptions(crowd_set="crowds", photo_exclude=("aligned",), **{k: getattr(FAST, k) for k in ("gate_cs", "stack")})
    rs = select_and_fit_regimes(ev, folds, opts)
    out = write_regime_bundle(rs, base, tmp_path / "base" / "regime.yaml", "nonaligned", {"data": "test"})
    spec = Bundle.load(out)
    assert {GROUP_BRANCH, CROWD_GROUP_BRANCH, SCENE_BRANCH} <= set(spec.names)
    assert spec.fusion.kind == "regime" and spec.fusion.reads == SCENE_BRANCH
    fitted = GroupEmotionRecognizer.from_bundle(out, detector=detector)
    assert fitted.regime is not None and fitted.regime.weights == pytest.approx(
        {{GROUP_BRANCH: CROWD_GROUP_BRANCH}.get(b, b): w for b, w in rs.crowd.weights.items()})
    photos = [np.asarray(Image.open(p).convert("RGB")) for p, _, _ in items[:4]]
    results = fitted.predict(photos)
    scene = fitted.branches[SCENE_BRANCH]
    feats = np.concatenate([scene.features(scene.crops(img, [])) for img in photos])
    gate = fitted.regime.crowd_probs(feats)
    for res, g in zip(results, gate):
        assert res.crowd == pytest.approx(g, abs=1e-9)
        _check_regime_result(fitted, res)
    assert fitted.with_fusion({"nonaligned": 1.0}).regime is None  # other weights: one plain weighted fusion
    assert fitted.predict(photos[:1], all_branches=True)[0].crowd == pytest.approx(gate[0], abs=1e-9)


def test_shipped_default_bundle_mixes_its_regimes():
    """The shipped default bundle (photo and crowd regimes, gate on the scene branch) on the sample photos."""
    rec = GroupEmotionRecognizer.default()
    assert rec.regime is not None and rec.regime.reads == SCENE_BRANCH
    for name in ("group", "coffee"):
        res = rec.predict_one(sample_path(name))
        _check_regime_result(rec, res)
    # the whole-image fallback sits on the gate's trunk: scored from the same trunk pass, as its own full model
    # scores it (float32 features through the fp16-exported head: agreement well within 1e-4)
    scene, whole = rec.branches[SCENE_BRANCH], rec.branches["global"]
    assert whole.trunk_sha256 == scene.trunk_sha256 and whole.share_key() == scene.share_key()
    from groupmood.images import load_image

    photos = [load_image(sample_path(n)) for n in ("group", "coffee")]
    every = rec.predict(photos, all_branches=True)
    own = whole.calibration.apply(whole.scores(np.concatenate([whole.crops(img, []) for img in photos])))
    for res, want in zip(every, own):
        assert res.branches["global"].spoke and np.abs(res.branches["global"].probs - want).max() < 1e-4
