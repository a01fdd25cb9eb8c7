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
from groupmood.models.registry import list_models, model_info
from groupmood.pipeline import Branch, GroupEmotionRecognizer
from groupmood.runtime.onnx import PARITY_TOL, export_onnx, resolve_backend

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
    from groupmood.runtime import onnx

    folder = tmp_path_factory.getbasetemp() / "onnx"
    monkeypatch.setattr(onnx, "onnx_cache_dir", lambda: folder)
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
    assert meta["parity_max_abs_diff"] <= PARITY_TOL and meta["name"].endswith(name)


def test_mtcnn_parity_and_same_faces(detector, astronaut, coffee):
    ort = detector.with_backend("onnxruntime", lambda: [astronaut])
    assert ort.backend == "onnxruntime" and all(r.model.parity <= PARITY_TOL for r in ort.runners)
    for img in (astronaut, coffee):
        a, b = detector.detect_one(img), ort.detect_one(img)
        assert len(a) == len(b)
        for fa, fb in zip(a, b):
            np.testing.assert_allclose(fb.box, fa.box, atol=0.01)
            np.testing.assert_allclose(fb.landmarks, fa.landmarks, atol=0.01)


def test_cache_reused_and_rebuilt_when_damaged(tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet_tiny_48", num_classes=3, head="softmax", drop_rate=0.0).eval()
    x = torch.randn(4, 1, 48, 48)
    calls = []

    def inputs():
        calls.append(1)
        return [x]

    first = export_onnx(net, "tiny", ("logits",), x[:1], inputs, cache_dir=tmp_path)
    second = export_onnx(net, "tiny", ("logits",), x[:1], inputs, cache_dir=tmp_path)
    assert second.path == first.path and len(calls) == 1  # from the cache, not exported again
    first.path.write_bytes(first.path.read_bytes()[:-10])  # damaged: the sha256 no longer matches
    third = export_onnx(net, "tiny", ("logits",), x[:1], inputs, cache_dir=tmp_path)
    assert third.path == first.path and len(calls) == 2
    with torch.no_grad():
        net.fc.weight.add_(1.0) if hasattr(net, "fc") else next(net.parameters()).add_(1.0)
    changed = export_onnx(net, "tiny", ("logits",), x[:1], inputs, cache_dir=tmp_path)
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


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx_bundle")
    _save(folder / "aligned.pt", "sphereface_tiny", GROUP_CLASSES)
    _save(folder / "nonaligned.pt", "resnet_tiny_48", FERPLUS_EMOTIONS)
    spec = {"format": "groupmood-bundle-1", "branches": [{"name": "aligned", "model": "aligned.pt"},
                                                         {"name": "nonaligned", "model": "nonaligned.pt"}],
            "weights": {"aligned": 1.0, "nonaligned": 1.0}}
    (folder / "bundle.yaml").write_text(yaml.safe_dump(spec))
    return folder / "bundle.yaml"


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
