"""Decoding only what the models need: JPEG draft decoding (libjpeg 1/2, 1/4, 1/8), box reduction for other
formats, boxes back in the photo's own coordinates, the size guard on decoded pixels; on real photos made
large by upscaling (scikit-image's astronaut; ../shared photos where present)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from groupmood.errors import ImageLoadError
from groupmood.images import Photo, load_image, load_photo, reduction
from conftest import shared_path


def _bound(detector, pixels: np.ndarray, box: np.ndarray, step: float) -> float:
    """How far a drafted box may be from the full decode's: twice MTCNN's own jitter on this photo, at least 2 px.

    A photo drafted at 1/``step`` samples the full photo on a grid ``step`` pixels wide, so its faces are the
    full photo's seen up to one draft pixel off. The bound is measured, not fitted: the full photo is shifted by
    ``step`` pixels across and down, and the largest move of the face's box (shift taken out) is MTCNN's own
    sensitivity to that misregistration; twice it leaves room for the draft's smoothing.
    """
    k = max(1, int(round(step)))
    moves = [0.0]
    for dy, dx in ((0, k), (k, 0)):
        shifted = detector.detect_one(np.ascontiguousarray(pixels[dy:, dx:]))
        for f in shifted:
            moved = f.box + np.array([dx, dy, dx, dy], np.float32)
            if _iou(moved, box) >= 0.5:
                moves.append(float(np.abs(moved - box).max()))
    return max(2.0, 2.0 * max(moves))


def _upscaled(img: np.ndarray, path, factor: int, **save) -> np.ndarray:
    big = Image.fromarray(img).resize((img.shape[1] * factor, img.shape[0] * factor), Image.Resampling.BICUBIC)
    big.save(path, **save)
    return np.asarray(big)


def test_reduction_rule():
    assert reduction(6000, 4000, 960) == 4  # 24 MP: 1500 x 1000 keeps 960 on the shorter side
    assert reduction(4000, 6000, 960) == 4
    assert reduction(2048, 2048, 960) == 2
    assert reduction(1024, 768, 960) == 1  # the benchmark photos (<= 1024 px) are decoded in full
    assert reduction(12000, 8000, 960) == 8
    assert reduction(6000, 4000, None) == 1


def test_jpeg_draft_decodes_fewer_pixels(tmp_path, astronaut):
    p = tmp_path / "big.jpg"
    _upscaled(astronaut, p, 4, quality=92)  # 2048 x 2048
    full = load_photo(p)
    small = load_photo(p, min_short_side=480)
    assert full.pixels.shape == (2048, 2048, 3) and full.scale == (1.0, 1.0)
    assert small.pixels.shape == (512, 512, 3) and (small.width, small.height) == (2048, 2048)
    assert small.scale == (4.0, 4.0)
    assert np.array_equal(load_image(p), full.pixels)
    odd = tmp_path / "odd.jpg"
    Image.fromarray(astronaut).resize((2047, 2049)).save(odd, quality=90)  # not a multiple of 2: still 1/2
    assert load_photo(odd, min_short_side=960).pixels.shape == (1025, 1024, 3)


def test_draft_keeps_boxes_within_2px(tmp_path, astronaut, detector):
    p = tmp_path / "big.jpg"
    _upscaled(astronaut, p, 4, quality=92)
    full = load_photo(p)
    small = load_photo(p, min_short_side=960)
    assert small.pixels.shape[0] == 1024
    a = detector.detect_one(full.pixels)
    b = [f.scaled(*small.scale) for f in detector.detect_one(small.pixels)]
    assert len(a) == len(b) == 1
    bound = _bound(detector, full.pixels, a[0].box, small.scale[0])
    assert np.abs(a[0].box - b[0].box).max() <= bound
    assert np.abs(a[0].landmarks - b[0].landmarks).max() <= bound


def test_png_box_reduction_and_exif(tmp_path, astronaut):
    p = tmp_path / "big.png"
    big = _upscaled(astronaut[:, :400], p, 3)  # 1200 x 1536 (w x h)
    photo = load_photo(p, min_short_side=500)
    assert photo.pixels.shape == (768, 600, 3) and (photo.width, photo.height) == (1200, 1536)
    assert np.abs(photo.pixels.astype(int) - big[::2, ::2].astype(int)).mean() < 3
    # EXIF orientation 6 (rotate 90 degrees clockwise): the photo's own size is the rotated one
    q = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(big).save(q, quality=92, exif=exif)
    rot = load_photo(q, min_short_side=500)
    assert (rot.width, rot.height) == (1536, 1200) and rot.pixels.shape == (600, 768, 3)


def test_size_guard_counts_decoded_pixels(tmp_path, astronaut):
    p = tmp_path / "big.jpg"
    _upscaled(astronaut, p, 4, quality=90)  # 2048 x 2048 = 4.2 MP in the header
    with pytest.raises(ImageLoadError, match="image too large"):
        load_photo(p, max_pixels=1_000_000)
    assert load_photo(p, max_pixels=1_000_000, min_short_side=400).pixels.shape == (512, 512, 3)
    png = tmp_path / "big.png"
    _upscaled(astronaut, png, 4)
    with pytest.raises(ImageLoadError, match="image too large"):  # no draft for PNG: all its pixels decode
        load_photo(png, max_pixels=1_000_000, min_short_side=400)


def test_predict_reports_the_photos_own_coordinates(tmp_path, astronaut, detector):
    import copy

    import torch
    import yaml

    from groupmood.config import DEFAULTS
    from groupmood.labels import GROUP_CLASSES
    from groupmood.models import create_model
    from groupmood.pipeline import GroupEmotionRecognizer

    torch.manual_seed(0)
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"]["name"] = "resnet_tiny_48"
    model = create_model("resnet_tiny_48", num_classes=3, head="softmax", drop_rate=0.0)
    torch.save({"model": model.state_dict(), "config": cfg, "classes": list(GROUP_CLASSES)}, tmp_path / "na.pt")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"branches": [{"name": "nonaligned", "model": "na.pt"}],
                                                     "weights": {"nonaligned": 1.0}}))
    rec = GroupEmotionRecognizer.from_bundle(tmp_path / "b.yaml", detector=detector)
    assert rec.decode_short_side() == 960  # 48-pixel crops of a face 5 % of the shorter side
    p = tmp_path / "big.jpg"
    _upscaled(astronaut, p, 4, quality=92)
    drafted = rec.predict([load_photo(p, min_short_side=rec.decode_short_side())])[0]
    full = rec.predict([load_image(p)])[0]
    by_path = rec.predict(str(p))[0]  # a path is decoded with the recognizer's own rule
    assert (drafted.width, drafted.height) == (full.width, full.height) == (2048, 2048)
    assert drafted.label == full.label == by_path.label and len(drafted.faces) == len(full.faces) == 1
    bound = _bound(detector, load_image(p), full.faces[0].box, 2048 / load_photo(p, min_short_side=960).pixels.shape[0])
    assert np.abs(drafted.faces[0].box - full.faces[0].box).max() <= bound
    assert np.array_equal(by_path.faces[0].box, drafted.faces[0].box)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.shared
def test_draft_on_real_photos_upscaled(tmp_path, detector):
    """Real group photos upscaled to a shorter side of 1920 px or more (faces of 300-500 px), drafted: the same faces.

    On such large faces MTCNN's boxes move by up to 58 px when the full photo is shifted by one pixel,
    and the drafted boxes are as far (up to 12 % of a face's width, median 4 %); so the test asks for
    the same faces, each overlapping its full-decode box by IoU >= 0.7, not a pixel bound.
    """
    folder = shared_path("multiemova-dev")
    photos = sorted(p for p in folder.rglob("*.jpg"))[:3]
    if not photos:
        pytest.skip("no JPEG in multiemova-dev")
    for i, src in enumerate(photos):
        p = tmp_path / f"{i}.jpg"
        img = load_image(src)
        _upscaled(img, p, -(-1920 // min(img.shape[:2])), quality=92)  # at least 1920 px: drafted at 1/2
        full = load_photo(p)
        small = load_photo(p, min_short_side=960)
        assert small.scale[0] > 1.9  # drafted at 1/2 (or less)
        a = detector.detect_one(full.pixels)
        b = [f.scaled(*small.scale) for f in detector.detect_one(small.pixels)]
        assert len(a) == len(b), (src, len(a), len(b))
        for fa in a:
            assert max(_iou(fa.box, fb.box) for fb in b) >= 0.7, (src, fa.box)


def test_photo_of():
    px = np.zeros((3, 4, 3), np.uint8)
    assert Photo.of(px).scale == (1.0, 1.0) and (Photo.of(px).width, Photo.of(px).height) == (4, 3)


@pytest.mark.shared
def test_benchmark_photos_are_decoded_in_full():
    """The 228 benchmark photos (and multiemova-dev) are at most 1024 px: the rule (960 px on the shorter side
    for the shipped bundle) decodes every one in full, so their labels cannot change."""
    from groupmood.paths import iter_image_paths

    folders = [shared_path(f) for f in ("voc-faces", "gaf-samples", "wider-val-200", "misc-group", "multiemova-dev")]
    n = 0
    for p in iter_image_paths(folders):
        with Image.open(p) as im:
            assert reduction(*im.size, 960) == 1, p
        n += 1
    assert n >= 228
