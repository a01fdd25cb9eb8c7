"""Batches: sized by decoded pixels, and a photo's result is the same bit for bit whatever its batch neighbours
(detection on both backends, the recognizer's scores on a CPU)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from groupmood.config import DEFAULTS
from groupmood.errors import ImageLoadError
from groupmood.images import Photo, load_in_order
from groupmood.labels import FERPLUS_EMOTIONS, GROUP_CLASSES
from groupmood.models import create_model
from groupmood.pipeline import GroupEmotionRecognizer


def _write(folder, sizes):
    paths = []
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_pixel_budget_batches(tmp_path):
    paths = _write(tmp_path, [(100, 100), (100, 100), (300, 300), (100, 100), (100, 100), (100, 100)])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths.insert(1, tmp_path / "bad.png")
    batches = list(load_in_order(paths, batch_size=8, pixel_budget=50_000))
    # 10k + (bad: 0) + 10k + 90k reaches the budget; then 3 x 10k
    assert [len(b) for b in batches] == [4, 3]
    assert isinstance(batches[0][1][1], ImageLoadError)
    assert [len(b) for b in load_in_order(paths, batch_size=2, pixel_budget=50_000)] == [2, 2, 2, 1]
    assert [len(b) for b in load_in_order(paths, batch_size=8, pixel_budget=None)] == [7]
    assert [len(b) for b in load_in_order(paths, batch_size=8, pixel_budget=1)] == [1, 2, 1, 1, 1, 1]
    photos = [x for b in load_in_order(paths[:1], 8, min_short_side=50) for _, x in b]
    assert isinstance(photos[0], Photo) and photos[0].pixels.shape == (50, 50, 3) and photos[0].width == 100


@pytest.fixture(scope="module")
def photos(astronaut, coffee):
    """The five-person sample at full and half size among other photos: before detection was made per
    photo, the half-size one's boxes moved by 0.6 px between a batch and a call of its own."""
    from skimage import data

    from groupmood.images import load_image
    from groupmood.samples import sample_path

    group = load_image(sample_path("group"))
    return [group, coffee, group[::2, ::2].copy(), np.ascontiguousarray(data.chelsea())]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x.box, y.box) and np.array_equal(x.landmarks, y.landmarks)
                                    and x.score == y.score for x, y in zip(a, b))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_detection_does_not_depend_on_batch(backend, detector, photos, astronaut):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    det = detector.with_backend(backend, lambda: [astronaut])
    batch = det.detect(photos)
    for img, faces in zip(photos, batch):
        assert _same(det.detect_one(img), faces)
    assert _same(det.detect(photos[::-1])[::-1][0], batch[0])


def _save(path, name, classes):
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"]["name"] = name
    model = create_model(name, num_classes=len(classes), head="softmax", margin_m=4, drop_rate=0.0)
    torch.save({"model": model.state_dict(), "config": cfg, "classes": list(classes)}, path)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_predict_does_not_depend_on_batch(backend, tmp_path, detector, photos, astronaut):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    _save(tmp_path / "aligned.pt", "sphereface_tiny", GROUP_CLASSES)
    _save(tmp_path / "nonaligned.pt", "resnet_tiny_48", FERPLUS_EMOTIONS)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({
        "branches": [{"name": "aligned", "model": "aligned.pt"}, {"name": "nonaligned", "model": "nonaligned.pt"}],
        "weights": {"aligned": 1.0, "nonaligned": 1.0}}))
    rec = GroupEmotionRecognizer.from_bundle(tmp_path / "b.yaml", detector=detector)
    rec = rec.with_backend(backend, lambda: [astronaut])
    batch = rec.predict(photos)
    for img, res in zip(photos, batch):
        alone = rec.predict_one(img)
        assert np.array_equal(alone.probs, res.probs) and len(alone.faces) == len(res.faces)
        for fa, fb in zip(alone.faces, res.faces):
            assert np.array_equal(fa.box, fb.box) and np.array_equal(fa.probs, fb.probs)


@pytest.mark.parametrize("workers", [1, 3])
def test_run_photos_in_input_order_on_worker_threads(tmp_path, workers):
    """Photos handled on several threads are written in input order, a bad file in its place, none lost."""
    import threading

    from PIL import ImageFile

    from groupmood.cli.common import JsonlSink, run_photos

    paths = _write(tmp_path, [(60 + 7 * i, 50 + 3 * i) for i in range(9)])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths.insert(4, tmp_path / "bad.png")
    seen: set[str] = set()

    def handle(good):
        seen.add(threading.current_thread().name)
        return [{"file": str(p), "w": int(x.shape[1]), "h": int(x.shape[0])} for p, x in good]

    out = tmp_path / f"out{workers}.jsonl"
    limit = Image.MAX_IMAGE_PIXELS
    run = run_photos(paths, 2, 10**8, JsonlSink(str(out)), False, handle, workers=workers)
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [ln["file"] for ln in lines] == [str(p) for p in paths]
    assert "error" in lines[4] and run.ok == 9 and len(run.failed) == 1
    assert [(ln["w"], ln["h"]) for ln in lines if "w" in ln] == [(60 + 7 * i, 50 + 3 * i) for i in range(9)]
    assert all(n.startswith("groupmood-photo") for n in seen) == (workers > 1)
    assert Image.MAX_IMAGE_PIXELS == limit and ImageFile.LOAD_TRUNCATED_IMAGES is False  # PIL's globals restored
