"""The numpy MTCNN cascade: torchvision's NMS bit for bit, the former PyTorch cascade's results, no torch import."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from groupmood.detect import CascadeSettings, FaceDetector
from groupmood.detect.cascade import run_cascade
from groupmood.detect.nms import nms, nms_min, nms_per_group
from numerics import (assert_off_threshold_edge, cascade_error, float32_tolerance, float64_runners,
                      max_abs_diff)

GOLDEN = pathlib.Path(__file__).parent / "data" / "mtcnn_cascade_golden.npz"


def _random_boxes(rng, n, ties=True):
    xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
    wh = rng.uniform(1, 60, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    if ties:
        scores = np.round(scores * 8) / 8  # many equal scores
        dup = rng.choice(n, n // 5, replace=False)
        boxes[dup] = boxes[rng.choice(n, len(dup))]  # duplicated boxes (IoU 1), often with tied scores
        boxes[: n // 10] = np.round(boxes[: n // 10])  # integer boxes, as stage 1 makes
    return boxes, scores.astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 60, 400, 1500])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.6, 0.7])
def test_nms_is_torchvision_nms(n, thr):
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(n * 10 + int(thr * 10))
    for ties in (True, False):
        boxes, scores = _random_boxes(rng, n, ties)
        want = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        got = nms(boxes, scores, thr)
        assert got.dtype == np.int64 and np.array_equal(got, want)


def test_nms_measures_pairs_in_blocks_with_the_same_choices(monkeypatch):
    """Pairs are measured in blocks (a bounded memory); any block size, one pair per block included, gives
    torchvision's choices, with empty and zero-width boxes and boxes that touch at an edge among them."""
    from torchvision.ops import nms as tv_nms

    import groupmood.detect.nms as nms_module

    rng = np.random.default_rng(11)
    boxes, scores = _random_boxes(rng, 500)
    boxes[:20, 2] = boxes[:20, 0]  # zero width
    boxes[20:30] = boxes[30:40]  # duplicated boxes
    boxes[40:50, 0] = boxes[50:60, 2]  # starts where another ends: touching, no intersection
    want = {thr: tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy() for thr in (0.0, 0.5)}
    for block in (1, 7, 1 << 20):
        monkeypatch.setattr(nms_module, "_PAIRS_PER_BLOCK", block)
        for thr, w in want.items():
            assert np.array_equal(nms(boxes, scores, thr), w), (block, thr)


def test_nms_ties_and_threshold_edge():
    from torchvision.ops import nms as tv_nms

    # equal scores: index order; identical boxes: the first one stays
    boxes = np.array([[0, 0, 10, 10]] * 4 + [[100, 100, 110, 110]], np.float32)
    scores = np.array([0.5, 0.9, 0.9, 0.5, 0.9], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 4] == tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                                                0.5).tolist()
    # IoU exactly float32(0.6) (above 0.6 in double precision): torchvision compares in double and suppresses
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 6]], np.float32)
    iou = np.float32(60) / np.float32(100)
    assert iou == np.float32(0.6) and float(iou) > 0.6
    s = np.array([0.9, 0.8], np.float32)
    want = tv_nms(torch.from_numpy(a), torch.from_numpy(s), 0.6).tolist()
    assert nms(a, s, 0.6).tolist() == want == [0]


def _torch_nms_per_group(boxes, scores, groups, thr):
    from torchvision.ops import nms as tv_nms

    b, s, g = (torch.from_numpy(x) for x in (boxes, scores, groups))
    keep = []
    for v in torch.unique(g):
        idx = torch.nonzero(g == v).flatten()
        keep.append(idx[tv_nms(b[idx], s[idx], thr)])
    kept = torch.cat(keep)
    return kept[torch.sort(s[kept], descending=True, stable=True).indices].numpy()


def test_nms_per_group_and_min_nms_match_torch():
    rng = np.random.default_rng(3)
    boxes, scores = _random_boxes(rng, 300)
    groups = rng.integers(0, 7, 300)
    assert np.array_equal(nms_per_group(boxes, scores, groups, 0.5), _torch_nms_per_group(boxes, scores, groups, 0.5))
    assert nms_per_group(boxes[:0], scores[:0], groups[:0], 0.5).shape == (0,)
    # 'Min' NMS: the former PyTorch formula (float32 throughout, the threshold in float32)
    b, s, g = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups)
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    xx1, yy1 = torch.maximum(b[:, None, 0], b[None, :, 0]), torch.maximum(b[:, None, 1], b[None, :, 1])
    xx2, yy2 = torch.minimum(b[:, None, 2], b[None, :, 2]), torch.minimum(b[:, None, 3], b[None, :, 3])
    inter = (xx2 - xx1 + 1).clamp(min=0) * (yy2 - yy1 + 1).clamp(min=0)
    over = ((inter / torch.minimum(area[:, None], area[None, :])) > 0.7) & (g[:, None] == g[None, :])
    suppressed, want = torch.zeros(len(b), dtype=torch.bool), []
    for i in torch.argsort(s, descending=True, stable=True).tolist():
        if not suppressed[i]:
            want.append(i)
            suppressed |= over[i]
    assert nms_min(boxes, scores, groups, 0.7).tolist() == want


def _golden_photos():
    import skimage.data
    from PIL import Image
    from skimage import data

    astronaut = data.astronaut()
    camera = np.asarray(Image.open(pathlib.Path(skimage.data.__file__).parent / "camera.png").convert("RGB"))
    both = np.concatenate([astronaut, camera], axis=1)
    return {"astronaut": astronaut, "camera": camera, "both": both[::2].copy(), "coffee": data.coffee()}


def test_cascade_gives_the_former_torch_cascade_results(detector):
    """Outputs recorded with the PyTorch cascade (before the numpy rewrite, on one CPU): the same faces here, every
    value within the float32 tolerance of ``numerics`` (the recorded run's own error against float64 nets, times
    the kernel factor, at least one ULP), whatever CPU runs this."""
    ref = np.load(GOLDEN)
    exact_nets = float64_runners(detector)
    n = 0
    for name, img in _golden_photos().items():
        for tag, cfg in (("default", CascadeSettings()),
                         ("loose", CascadeSettings(thresholds=(0.5, 0.5, 0.5), min_face_px=16.0))):
            assert_off_threshold_edge(img, detector, cfg, f"{name}/{tag}")
            exact = run_cascade([img], *exact_nets, cfg, "cpu")[0]
            for pack in (False, True):
                got = run_cascade([img], *detector.runners, cfg, "cpu", pack=pack)[0]
                for k, a, e in zip(("boxes", "scores", "landmarks"), got, exact):
                    want = ref[f"{name}/{tag}/{int(pack)}/{k}"]
                    assert a.dtype == np.float32 and a.shape == want.shape == e.shape
                    tol = float32_tolerance(want, max_abs_diff(want, e))
                    assert max_abs_diff(a, want) <= tol, (name, tag, pack, k, max_abs_diff(a, want), tol)
                    n += 1
    assert n == 48


def test_cascade_takes_torch_modules_and_plain_callables(detector, astronaut):
    """PyTorch modules are wrapped in TorchRunner; the runners get C-contiguous float32 NCHW arrays."""
    seen = []

    def spy(runner):
        def call(x):
            seen.append((x.dtype, x.flags.c_contiguous, x.ndim, x.shape[1]))
            return runner(x)
        return call

    a = run_cascade([astronaut], *map(spy, detector.runners), detector.settings)[0]
    b = run_cascade([astronaut], detector.pnet, detector.rnet, detector.onet, detector.settings)[0]
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert seen and all(s == (np.float32, True, 4, 3) for s in seen)


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_importing_detect_and_running_numpy_nets_needs_no_torch():
    code = """
import json, sys
import numpy as np
import groupmood.detect
from groupmood.detect import FaceDetector
from groupmood.detect.cascade import run_cascade, CascadeSettings

def pnet(x):
    n, _, h, w = x.shape
    ho, wo = (h - 12) // 2 + 1, (w - 12) // 2 + 1
    prob = np.zeros((n, ho, wo), np.float32)
    prob[:, ho // 2, wo // 2] = 0.99
    return np.zeros((n, 4, ho, wo), np.float32), prob

def rnet(x):
    return np.zeros((len(x), 4), np.float32), np.full(len(x), 0.99, np.float32)

def onet(x):
    return np.zeros((len(x), 4), np.float32), np.full((len(x), 10), 0.5, np.float32), np.full(len(x), 0.99, np.float32)

det = FaceDetector.from_runners((pnet, rnet, onet), backend="onnxruntime")
faces = det.detect([np.full((120, 160, 3), 100, np.uint8)])
print(json.dumps({"torch": "torch" in sys.modules, "torchvision": "torchvision" in sys.modules,
                  "faces": len(faces[0]), "device": det.device}))
"""
    got = _run(code)
    assert got == {"torch": False, "torchvision": False, "faces": got["faces"], "device": "cpu"} and got["faces"] >= 1


@pytest.fixture(scope="module")
def ort_detector(detector, astronaut):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    return detector.with_backend("onnxruntime", lambda: [astronaut])


def test_onnxruntime_detector_matches_torch(ort_detector, detector, astronaut, coffee, skimage_data_dir):
    """ONNX Runtime finds PyTorch's faces, within the float32 tolerance derived from PyTorch's own error against
    float64 nets on the same photos (photos checked to be off the threshold edge, so the counts are exact)."""
    from PIL import Image

    camera = np.asarray(Image.open(skimage_data_dir / "camera.png").convert("RGB"))
    assert ort_detector.backend == "onnxruntime" and detector.backend == "torch"
    assert all(r.parity <= 1e-4 for r in ort_detector.runners)
    images = [astronaut, coffee, camera]
    for k, img in enumerate(images):
        assert_off_threshold_edge(img, detector, name=f"photo {k}")
    px, sc = cascade_error(images, detector.runners, detector)
    for a, b in zip(ort_detector.detect(images), detector.detect(images)):
        assert len(a) == len(b)
        for fa, fb in zip(a, b):
            tol = float32_tolerance(fb.box, px)
            assert max_abs_diff(fa.box, fb.box) <= tol and max_abs_diff(fa.landmarks, fb.landmarks) <= tol
            assert abs(fa.score - fb.score) <= float32_tolerance(np.float32(1), sc)


@pytest.mark.integration
def test_from_pretrained_onnxruntime_from_the_cache_needs_no_torch(ort_detector, detector, astronaut):
    """With the three ONNX files in the cache (the fixture exported them), from_pretrained(backend="onnxruntime")
    builds the detector without importing torch; its faces are the PyTorch detector's."""
    code = """
import json, sys
from skimage import data
from groupmood.detect import FaceDetector
det = FaceDetector.from_pretrained(backend="onnxruntime", thresholds=(0.6, 0.7, 0.9))
faces = det.detect_one(data.astronaut())
print(json.dumps({"torch": "torch" in sys.modules, "backend": det.backend, "nets": det.pnet is None,
                  "boxes": [f.box.tolist() for f in faces]}))
"""
    got = _run(code)
    assert got["torch"] is False and got["backend"] == "onnxruntime" and got["nets"] is True
    want = [f.box.tolist() for f in detector.detect_one(astronaut)]
    assert len(got["boxes"]) == len(want) == 1
    px, _ = cascade_error([astronaut], detector.runners, detector)
    assert max_abs_diff(got["boxes"], want) <= float32_tolerance(np.asarray(want), px)


def test_onnxruntime_only_detector_loads_torch_nets_when_asked(ort_detector, detector, astronaut):
    det = FaceDetector.from_pretrained(backend="onnxruntime")
    assert det.backend == "onnxruntime" and det.device == "cpu"
    assert det.pnet is None and det.weights_sha256() == detector.weights_sha256()
    loose = det.with_settings(thresholds=(0.5, 0.6, 0.8))
    assert loose.backend == "onnxruntime" and loose.runners == det.runners and loose.settings.thresholds == (0.5, 0.6,
                                                                                                            0.8)
    back = det.with_backend("torch")
    assert back.backend == "torch" and back.pnet is not None
    theirs = detector.onet.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in back.onet.state_dict().items())
    a, b = back.detect_one(astronaut), detector.detect_one(astronaut)
    assert len(a) == len(b) == 1 and np.array_equal(a[0].box, b[0].box)
    assert back.with_backend("onnxruntime").runners[0].path == det.runners[0].path


def test_device_is_a_string(detector):
    assert detector.device == "cpu"
    assert FaceDetector(detector.pnet, detector.rnet, detector.onet, device=torch.device("cpu")).device == "cpu"
    with pytest.raises(ValueError):
        FaceDetector(detector.pnet, None, None)
    with pytest.raises(ValueError):
        detector.with_backend("tensorrt")


def test_chunk_size_does_not_change_the_faces(ort_detector, detector, astronaut):
    """R-/O-Net see each photo's crops in chunks (64 on a CPU, 1024 elsewhere): any chunk size gives the same
    faces, under both backends, the CPU default included."""
    assert CascadeSettings().chunk("cpu") == 64 and CascadeSettings().chunk("cuda:0") == 1024
    assert CascadeSettings(chunk_size=7).chunk("cpu") == 7
    photos = list(_golden_photos().values())
    px, sc = cascade_error(photos, detector.runners, detector)
    for det in (detector, ort_detector):
        want = run_cascade(photos, *det.runners, CascadeSettings(chunk_size=4096), "cpu")
        for size in (None, 3):
            got = run_cascade(photos, *det.runners, CascadeSettings(chunk_size=size), "cpu")
            for g, w in zip(got, want):
                for k, (a, b) in enumerate(zip(g, w)):
                    assert a.shape == b.shape
                    assert max_abs_diff(a, b) <= float32_tolerance(b if k != 1 else np.float32(1), sc if k == 1 else px)


def test_memory_arena_only_for_fixed_size_inputs(ort_detector):
    """P-Net (height and width vary per pyramid level) runs without an arena; R- and O-Net keep their buffers."""
    pnet, rnet, onet = ort_detector.runners
    assert pnet.meta["dynamic_hw"] is True and rnet.meta["dynamic_hw"] is False
    opts = [r.session.get_session_options() for r in (pnet, rnet, onet)]
    assert [o.enable_cpu_mem_arena for o in opts] == [False, True, True]
    assert [o.enable_mem_pattern for o in opts] == [False, True, True]
