import numpy as np
import pytest
import torch

from groupmood.detect import CascadeSettings, FaceDetector
from groupmood.detect.cascade import (
    _pack,
    _Tile,
    area_resize,
    integral_image,
    pyramid_scales,
)


def _inside(face) -> bool:
    x1, y1, x2, y2 = face.box
    return all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)


def test_astronaut_one_face_landmarks_inside(detector, astronaut):
    faces = detector.detect_one(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.score > 0.99
    assert f.landmarks.shape == (5, 2)
    assert _inside(f)
    # the face is in the upper middle of the 512x512 photo
    assert 150 < f.box[0] < 220 and 230 < f.box[2] < 300 and f.box[1] < 120
    # left eye left of right eye, mouth below nose below eyes
    le, re, nose, ml, mr = f.landmarks
    assert le[0] < re[0] and ml[0] < mr[0]
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])


def test_batch_equals_one_at_a_time(detector, astronaut, coffee, skimage_data_dir):
    from PIL import Image

    camera = np.asarray(Image.open(skimage_data_dir / "camera.png"))  # grey, one face
    small = np.asarray(Image.fromarray(astronaut).resize((300, 300)))
    tiny = np.full((10, 10, 3), 128, np.uint8)
    images = [astronaut, coffee, tiny, camera, small]
    batch = detector.detect(images)
    single = [detector.detect_one(im) for im in images]
    assert [len(b) for b in batch] == [len(s) for s in single]
    assert len(batch[0]) == 1 and batch[1] == [] and batch[2] == [] and len(batch[4]) == 1
    assert len(batch[3]) >= 1
    for b, s in zip(batch, single):
        for fb, fs in zip(b, s):
            np.testing.assert_allclose(fb.box, fs.box, atol=1e-2)
            np.testing.assert_allclose(fb.landmarks, fs.landmarks, atol=1e-2)
            assert abs(fb.score - fs.score) < 1e-4


def test_packed_canvas_equals_one_level_per_call(detector, astronaut, coffee, skimage_data_dir):
    """The GPU path (pyramid levels packed into canvases) gives the CPU path's faces, on a CPU."""
    from PIL import Image

    from groupmood.detect.cascade import run_cascade

    camera = np.asarray(Image.open(skimage_data_dir / "camera.png").convert("RGB"))
    small = np.asarray(Image.fromarray(astronaut).resize((300, 260)))
    images = [astronaut, coffee, camera, small]
    packed = run_cascade(images, *detector.runners, detector.settings, detector.device, pack=True)
    levels = run_cascade(images, *detector.runners, detector.settings, detector.device, pack=False)
    assert sum(len(p[0]) for p in packed) >= 3
    for (bp, sp, lp), (bl, sl, ll) in zip(packed, levels):
        assert len(bp) == len(bl)
        np.testing.assert_allclose(bp, bl, atol=1e-2)
        np.testing.assert_allclose(lp, ll, atol=1e-2)
        np.testing.assert_allclose(sp, sl, atol=1e-4)


def test_no_face_is_empty_list_not_none(detector, coffee):
    assert detector.detect([coffee]) == [[]]
    assert detector.detect([]) == []


def test_min_face_px_changes_search(detector, astronaut):
    big_only = detector.with_settings(min_face_px=400.0)  # face is ~100 px
    assert big_only.detect_one(astronaut) == []
    assert len(detector.with_settings(min_face_px=40.0).detect_one(astronaut)) == 1


def test_pyramid_and_packing_invariants():
    scales = pyramid_scales(416, 416, 20.8, 0.709)
    assert scales[0] == pytest.approx(12 / 20.8)
    assert 416 * scales[-1] >= 12 > 416 * scales[-1] * 0.709
    tiles = [_Tile(0, s, int(300 * s + 1), int(500 * s + 1)) for s in scales] + [_Tile(1, 1.0, 37, 91)]
    sizes = _pack(tiles, max_pixels=60_000)
    for t in tiles:
        assert t.y % 2 == 0 and t.x % 2 == 0
        h, w = sizes[t.canvas]
        assert t.y + t.h <= h and t.x + t.w <= w
    for a in tiles:
        for b in tiles:
            if a is not b and a.canvas == b.canvas:
                assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y


def _assert_correctly_rounded(got: np.ndarray, exact: np.ndarray) -> None:
    """``got`` (float32) is the exact mean rounded to the nearest float32: within half a float32 ULP of ``exact``.

    ``exact`` is PyTorch's area resize in float64: sums of integers (exact below 2**53) divided once, so it is
    within one float64 rounding (2**-53 relative) of the true mean, on any CPU; that rounding is the only slack.
    """
    half_ulp = 0.5 * np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    slack = np.abs(exact) * 2.0 ** -52
    assert np.all(np.abs(got.astype(np.float64) - exact) <= half_ulp + slack)


def test_area_resize_matches_torch_area():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (57, 83, 3)).astype(np.uint8)
    table = integral_image(img)
    assert table.dtype == np.int32 and table[-1, -1].tolist() == img.reshape(-1, 3).sum(0).tolist()
    boxes = np.array([[0, 0, 83, 57], [5, 7, 40, 30], [10, 10, 20, 19]])
    for out in (24, 48, 13):
        got = area_resize(table, boxes, out, out)
        for b, g in zip(boxes, got):
            x, y, ex, ey = b
            t = torch.from_numpy(img[y:ey, x:ex]).permute(2, 0, 1)[None].double()
            ref = F.interpolate(t, size=(out, out), mode="area")[0].permute(1, 2, 0).numpy()
            assert g.dtype == np.float32
            _assert_correctly_rounded(g, ref)


def test_area_resize_of_a_whole_large_image_is_exact():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    img = rng.integers(200, 256, (1800, 2600, 3)).astype(np.uint8)
    table = integral_image(img)
    whole = np.array([[0, 0, 2600, 1800]])
    for h, w in ((2, 3), (601, 867)):  # bins of 900x867 pixels (sums beyond float32) and of 3x3 to 4x4
        got = area_resize(table, whole, h, w)[0]
        ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].double(), size=(h, w), mode="area")
        _assert_correctly_rounded(got, ref[0].permute(1, 2, 0).numpy())


def test_settings_min_face():
    s = CascadeSettings()
    assert s.min_face(400, 1000) == pytest.approx(20.0)
    assert s.min_face(100, 100) == 12.0
    assert CascadeSettings(min_face_px=33).min_face(400, 1000) == 33


def test_weights_dir_option(tmp_path, detector, astronaut):
    """``weights_dir`` is where the nets are read from: same nets, same faces; a bad copy there is refused."""
    from groupmood import weights as W
    from groupmood.errors import WeightsError

    for name in ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"):
        src = W.fetch(name)
        (tmp_path / src.name).write_bytes(src.read_bytes())
    det = FaceDetector.from_pretrained(weights_dir=tmp_path, thresholds=(0.5, 0.6, 0.8))
    assert det.settings.thresholds == (0.5, 0.6, 0.8)
    for mine, ref in ((det.pnet, detector.pnet), (det.rnet, detector.rnet), (det.onet, detector.onet)):
        theirs = ref.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in mine.state_dict().items())
    got = det.with_settings(thresholds=detector.settings.thresholds).detect_one(astronaut)
    want = detector.detect_one(astronaut)
    assert len(got) == len(want) == 1
    np.testing.assert_allclose(got[0].box, want[0].box, atol=1e-3)
    onet = tmp_path / W.spec("mtcnn_onet").filename
    onet.write_bytes(b"not the O-Net")
    with pytest.raises(WeightsError):
        FaceDetector.from_pretrained(weights_dir=tmp_path)
    onet.unlink()
    with pytest.raises(WeightsError):
        FaceDetector.from_pretrained(weights_dir=tmp_path)
