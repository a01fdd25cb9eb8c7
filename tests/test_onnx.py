"""ONNX Runtime backend: every small registered model and P-, R-, O-Net exported and checked against PyTorch
on real crops (scikit-image's astronaut), the cache keyed by the weights, the CLI's --backend and export."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
import yaml

from groupmood.cli import main
from groupmood.config import DEFAULTS
from groupmood.errors import ConfigError
from groupmood.labels import FERPLUS_EMOTIONS, GROUP_CLASSES
from groupmood.models import create_model
from groupmood.models import list_models, model_info
from groupmood.pipeline import Branch, GroupEmotionRecognizer
from groupmood.runtime.export import export_onnx, weights_sha256
from groupmood.runtime.session import PARITY_TOL, resolve_backend
from numerics import assert_off_threshold_edge, cascade_error, float32_tolerance, max_abs_diff

pytest.importorskip("onnxruntime")

#: registered face and global models small enough to export in a test (parameters)
SMALL = 5_000_000


def _small_models() -> list[str]:
    out = []
    for name in list_models():
        model = create_model(name, num_classes=3, head="softmax", margin_m=4, drop_rate=0.0)
        if sum(p.numel() for p in model.parameters()) < SMALL:
            out.append(name)
    return out


@pytest.fixture(autouse=True)
def onnx_dir(tmp_path_factory, monkeypatch):
    """The ONNX files of this module in a private folder (the weights and samples stay in the cache)."""
    from groupmood.runtime import session

    folder = tmp_path_factory.getbasetemp() / "onnx"
    monkeypatch.setattr(session, "onnx_cache_dir", lambda: folder)
    return folder


@pytest.fixture(scope="module")
def astro_faces(detector, astronaut, coffee):
    torch.set_num_threads(1)
    return [(astronaut, detector.detect_one(astronaut)), (coffee, [])]


@pytest.mark.parametrize("name", _small_models())
def test_registered_model_parity(name, astro_faces):
    torch.manual_seed(0)
    info = model_info(name)
    model = create_model(name, num_classes=3, head="softmax", margin_m=4, drop_rate=0.0)
    branch = Branch(model, GROUP_CLASSES, info, tta_flip=True)
    ort = branch.with_backend("onnxruntime", lambda: branch.parity_inputs(astro_faces))
    assert ort.backend == "onnxruntime" and ort.runner.parity <= PARITY_TOL
    x = np.concatenate([branch.crops(img, faces) for img, faces in astro_faces if faces or not branch.is_face])
    np.testing.assert_allclose(ort.scores(x), branch.scores(x), atol=1e-5)
    meta = json.loads(ort.runner.path.with_suffix(".json").read_text())
    assert meta["parity_max_abs_diff"] <= PARITY_TOL and meta["key"]["name"].endswith(name)


def test_mtcnn_parity_and_same_faces(detector, astronaut, coffee):
    ort = detector.with_backend("onnxruntime", lambda: [astronaut])
    assert ort.backend == "onnxruntime" and all(r.parity <= PARITY_TOL for r in ort.runners)
    px, _ = cascade_error([astronaut, coffee], detector.runners, detector)  # PyTorch's float32 error here
    for k, img in enumerate((astronaut, coffee)):
        assert_off_threshold_edge(img, detector, name=f"photo {k}")
        a, b = detector.detect_one(img), ort.detect_one(img)
        assert len(a) == len(b)
        for fa, fb in zip(a, b):
            tol = float32_tolerance(fa.box, px)
            assert max_abs_diff(fb.box, fa.box) <= tol and max_abs_diff(fb.landmarks, fa.landmarks) <= tol


def test_cache_reused_and_rebuilt_when_damaged(tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet_tiny_48", num_classes=3, head="softmax", drop_rate=0.0).eval()
    x = torch.randn(4, 1, 48, 48)
    calls = []

    def inputs():
        calls.append(1)
        return [x]

    def export():
        return export_onnx(net, "tiny", {"weights": weights_sha256(net)}, ("logits",), x[:1], inputs, cache_dir=tmp_path)

    first = export()
    second = export()
    assert second.path == first.path and len(calls) == 1  # from the cache, not exported again
    first.path.write_bytes(first.path.read_bytes()[:-10])  # damaged: the sha256 no longer matches
    third = export()
    assert third.path == first.path and len(calls) == 2
    with torch.no_grad():
        net.fc.weight.add_(1.0) if hasattr(net, "fc") else next(net.parameters()).add_(1.0)
    changed = export()
    assert changed.path != first.path  # other weights, other file


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "onnxruntime"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ConfigError, match="--backend torch"):
        resolve_backend("onnxruntime", "cuda")
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_backend("tensorrt", "cpu")


def _save(path, name, classes):
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"]["name"] = name
    model = create_model(name, num_classes=len(classes), head="softmax", margin_m=4, drop_rate=0.0)
    torch.save({"model": model.state_dict(), "config": cfg, "classes": list(classes)}, path)


def _write_bundle(folder, models: dict[str, str], weights: dict[str, float]):
    """A bundle YAML in ``folder`` naming branch -> model file, with fusion ``weights``."""
    spec = {"format": "groupmood-bundle-1", "branches": [{"name": n, "model": m} for n, m in models.items()],
            "weights": weights}
    (folder / "bundle.yaml").write_text(yaml.safe_dump(spec))
    return folder / "bundle.yaml"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx_bundle")
    _save(folder / "aligned.pt", "sphereface_tiny", GROUP_CLASSES)
    _save(folder / "nonaligned.pt", "resnet_tiny_48", FERPLUS_EMOTIONS)
    return _write_bundle(folder, {"aligned": "aligned.pt", "nonaligned": "nonaligned.pt"},
                         {"aligned": 1.0, "nonaligned": 1.0})


def test_recognizer_backends_agree(tiny_bundle, detector, astronaut, coffee):
    rec = GroupEmotionRecognizer.from_bundle(tiny_bundle, detector=detector)
    ort = rec.with_backend("onnxruntime", lambda: [astronaut])
    assert rec.backend == "torch" and ort.backend == "onnxruntime"
    for a, b in zip(rec.predict([astronaut, coffee]), ort.predict([astronaut, coffee])):
        assert a.label == b.label and len(a.faces) == len(b.faces)
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)


def test_cli_backends_and_export(tiny_bundle, tmp_path, astronaut, onnx_dir):
    from PIL import Image

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    records = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.jsonl"
        assert main(["predict", str(photo), "--bundle", str(tiny_bundle), "--backend", backend, "-o", str(out),
                     "--no-progress"]) == 0
        records[backend] = json.loads(out.read_text())
    a, b = records["torch"], records["onnxruntime"]
    assert a["label"] == b["label"] and a["n_faces"] == b["n_faces"] == 1
    assert max(abs(a["probs"][c] - b["probs"][c]) for c in GROUP_CLASSES) <= 1e-4
    assert main(["export", "--format", "onnx", "--bundle", str(tiny_bundle)]) == 0
    names = os.listdir(onnx_dir)
    assert any(n.startswith("mtcnn_pnet-") and n.endswith(".onnx") for n in names)
    assert any(n.startswith("face_aligned-sphereface_tiny-") for n in names)
    assert main(["export", "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2


@pytest.fixture(scope="module")
def tiny_st_bundle(tmp_path_factory):
    """A bundle of two tiny safetensors models (what ships: the ONNX cache is keyed by the file's sha256)."""
    from groupmood.checkpoint import save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx_st_bundle")
    for name, arch, classes in (("aligned", "sphereface_tiny", GROUP_CLASSES),
                                ("nonaligned", "resnet_tiny_48", FERPLUS_EMOTIONS)):
        model = create_model(arch, num_classes=len(classes), head="softmax", margin_m=4, drop_rate=0.0).eval()
        save_model(model, {"classes": list(classes), "arch": {"name": arch}}, folder / f"{name}.safetensors")
    return _write_bundle(folder, {"aligned": "aligned.safetensors", "nonaligned": "nonaligned.safetensors"},
                         {"aligned": 1.0, "nonaligned": 1.0})


def _export_bundle_models(tiny_bundle, detector, astronaut):
    """Export the tiny bundle's branches and MTCNN into the (private) ONNX cache; the torch recognizer."""
    rec = GroupEmotionRecognizer.from_bundle(tiny_bundle, detector=detector)
    rec.with_backend("onnxruntime", lambda: [astronaut])
    return rec


def test_branch_from_onnx_cache_without_torch_model(tmp_path, detector, astronaut, coffee):
    torch.manual_seed(0)
    from groupmood.checkpoint import save_model

    info = model_info("resnet_tiny_48")
    model = create_model("resnet_tiny_48", num_classes=len(FERPLUS_EMOTIONS), head="softmax", drop_rate=0.0).eval()
    path = save_model(model, {"classes": list(FERPLUS_EMOTIONS), "arch": {"name": "resnet_tiny_48"}},
                      tmp_path / "tiny.safetensors")
    assert Branch.from_onnx_cache(path) is None  # nothing exported yet
    branch = Branch.from_file(path)
    faces = [(astronaut, detector.detect_one(astronaut))]
    branch.with_backend("onnxruntime", lambda: branch.parity_inputs(faces))
    cached = Branch.from_onnx_cache(path, pooling="top3")
    assert cached is not None and cached.model is None and cached.backend == "onnxruntime"
    assert cached.info.name == info.name
    assert cached.info.recipe(list(FERPLUS_EMOTIONS)) == info.recipe(list(FERPLUS_EMOTIONS))
    assert cached.classes == FERPLUS_EMOTIONS and cached.top_k == 3
    x = branch.crops(astronaut, faces[0][1])
    np.testing.assert_allclose(cached.scores(x), branch.scores(x), atol=1e-5)
    back = cached.with_backend("torch", lambda: [])  # the PyTorch model loads from the file on demand
    np.testing.assert_allclose(back.scores(x), branch.scores(x), atol=1e-12)
    from groupmood.errors import WeightsError

    with pytest.raises(WeightsError, match="sha256"):
        Branch.from_onnx_cache(path, sha256="0" * 64)


def test_predict_on_photo_threads_matches_one_at_a_time(tiny_st_bundle, detector, astronaut, coffee):
    _export_bundle_models(tiny_st_bundle, detector, astronaut)
    ort = GroupEmotionRecognizer.from_bundle(tiny_st_bundle, backend="onnxruntime")
    assert all(br.model is None for br in ort.branches.values())  # from the cache alone
    photos = [astronaut, coffee, astronaut[::2, ::2].copy(), astronaut[:, ::-1].copy()]
    one = GroupEmotionRecognizer(ort.detector, ort.branches, ort.weights, workers=1).predict(photos)
    many = GroupEmotionRecognizer(ort.detector, ort.branches, ort.weights, workers=3).predict(photos)
    assert [r.to_dict() for r in one] == [r.to_dict() for r in many]
    with pytest.raises(ConfigError, match="workers"):
        GroupEmotionRecognizer(ort.detector, ort.branches, ort.weights, workers=0)


@pytest.mark.integration
def test_onnxruntime_predict_never_imports_torch(tiny_st_bundle, detector, astronaut, tmp_path, onnx_dir):
    """Once the cache holds the ONNX files, ``groupmood predict`` on a CPU runs without importing torch at all."""
    import subprocess
    import sys

    from PIL import Image

    _export_bundle_models(tiny_st_bundle, detector, astronaut)
    tiny_bundle = tiny_st_bundle
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo)
    out = tmp_path / "out.jsonl"
    code = (
        "import sys, pathlib\n"
        "import groupmood.runtime.session as s\n"
        f"s.onnx_cache_dir = lambda: pathlib.Path({str(onnx_dir)!r})\n"
        "from groupmood.cli import main\n"
        f"rc = main(['predict', {str(photo)!r}, '--bundle', {str(tiny_bundle)!r}, '-o', {str(out)!r}, "
        "'--no-progress'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "print('RC', rc, 'TORCH', len(bad), bad[:5])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "RC 0 TORCH 0 []" in proc.stdout, proc.stdout + proc.stderr
    rec = json.loads(out.read_text())
    assert rec["n_faces"] == 1 and rec["label"] in GROUP_CLASSES


def test_onnx_name_of_shipped_files_from_their_header():
    """The shipped weight files name their model and family in the header: enough to find their ONNX files."""
    from groupmood.pipeline import Bundle
    from groupmood.runtime.session import safetensors_model_name

    names = {b.name: safetensors_model_name(b.model) for b in Bundle.load("default").branches}
    assert names == {"group": "face_nonaligned-resnet_compact_48", "aligned": "face_aligned-sphereface_compact",
                     "nonaligned": "face_nonaligned-resnet_compact_48", "global": "global-efficientnet_lite0",
                     "group_crowd": "face_nonaligned-resnet_compact_48", "scene": "global-efficientnet_lite0"}


@pytest.fixture(scope="module")
def shared_trunk_bundle(tmp_path_factory):
    """Two face models with one trunk and two heads (as the shipped group and non-aligned branches), and a bundle."""
    from groupmood.checkpoint import save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("shared_trunk")
    expr = create_model("resnet_tiny_48", num_classes=len(FERPLUS_EMOTIONS), head="softmax", drop_rate=0.0).eval()
    group = copy.deepcopy(expr)
    group.reset_classifier(len(GROUP_CLASSES))
    save_model(expr, {"classes": list(FERPLUS_EMOTIONS), "arch": {"name": "resnet_tiny_48"}}, folder / "expr.safetensors")
    save_model(group, {"classes": list(GROUP_CLASSES), "arch": {"name": "resnet_tiny_48"}}, folder / "group.safetensors")
    return _write_bundle(folder, {"group": "group.safetensors", "nonaligned": "expr.safetensors"},
                         {"group": 0.6, "nonaligned": 0.4})


def test_shared_trunk_one_pass_same_scores(shared_trunk_bundle, detector, astronaut, coffee):
    from groupmood.pipeline import shared_trunks

    rec = GroupEmotionRecognizer.from_bundle(shared_trunk_bundle, detector=detector)
    assert shared_trunks(rec.branches) == [["group", "nonaligned"]]
    faces = detector.detect_one(astronaut)
    x = rec.branches["group"].crops(astronaut, faces)
    feats = rec.branches["group"].features(x)
    for br in rec.branches.values():  # the trunk pass + each head == each branch's own model
        np.testing.assert_allclose(br.scores_from_features(feats), br.scores(x), atol=1e-6)
    ort = rec.with_backend("onnxruntime", lambda: [astronaut])
    cached = GroupEmotionRecognizer.from_bundle(shared_trunk_bundle, backend="onnxruntime")
    assert all(br.model is None and br.features_runner is not None for br in cached.branches.values())
    assert cached.branches["group"].features_runner.path == cached.branches["nonaligned"].features_runner.path
    calls = []
    run = cached.branches["group"].features_runner.session.run
    cached.branches["group"].features_runner.session.run = lambda *a, **k: calls.append(1) or run(*a, **k)
    for a, b, c in zip(rec.predict([astronaut, coffee]), ort.predict([astronaut, coffee]),
                       cached.predict([astronaut, coffee])):
        assert a.label == b.label == c.label and len(a.faces) == len(b.faces) == len(c.faces)
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)
        np.testing.assert_allclose(c.probs, b.probs, atol=1e-12)
    assert len(calls) == 1  # one trunk call for the photo with faces, for both branches
