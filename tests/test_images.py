"""Every bad-input case gives one clear error naming the file; odd but valid images load as RGB."""
import io

import numpy as np
import pytest
from PIL import Image

from groupmood.errors import ImageLoadError
from groupmood.images import load_batches, load_image
from groupmood.paths import iter_image_paths


@pytest.fixture
def photo(astronaut):
    return Image.fromarray(astronaut).resize((128, 128))


def _save(img: Image.Image, path, fmt=None, **kw):
    img.save(path, format=fmt, **kw)
    return path


def test_modes_become_rgb(tmp_path, photo):
    cases = {
        "grey.png": photo.convert("L"),
        "rgba.png": photo.convert("RGBA"),
        "palette.png": photo.convert("P"),
        "cmyk.jpg": photo.convert("CMYK"),
        "la.png": photo.convert("LA"),
    }
    for name, img in cases.items():
        arr = load_image(_save(img, tmp_path / name))
        assert arr.shape == (128, 128, 3) and arr.dtype == np.uint8, name
    grey = load_image(tmp_path / "grey.png")
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_16bit_scaled_to_8bit(tmp_path):
    data = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    p = tmp_path / "deep.png"
    Image.fromarray(data).save(p)
    arr = load_image(p)
    assert arr.shape == (64, 64, 3) and arr.max() > 200 and arr.min() < 5


def test_exif_orientation_applied(tmp_path, photo):
    wide = photo.resize((160, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    p = tmp_path / "rotated.jpg"
    wide.save(p, exif=exif.tobytes())
    assert load_image(p).shape == (160, 80, 3)


def test_content_sniffed_not_extension(tmp_path, photo):
    p = _save(photo, tmp_path / "really_png.jpg", fmt="PNG")
    assert load_image(p).shape == (128, 128, 3)


def test_names_with_spaces_and_non_ascii(tmp_path, photo):
    p = _save(photo, tmp_path / "fête de l'été 2017 — ü.jpg")
    assert load_image(p).shape == (128, 128, 3)
    assert p in list(iter_image_paths([tmp_path]))


@pytest.mark.parametrize("case,reason", [
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "truncated"),
    ("missing", "no such file"),
    ("folder", "is a folder"),
])
def test_bad_files_named_with_reason(tmp_path, photo, case, reason):
    p = tmp_path / f"bad_{case}.jpg"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("hello, not a photo")
    elif case == "truncated":
        buf = io.BytesIO()
        photo.save(buf, format="JPEG", quality=95)
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif case == "folder":
        p.mkdir()
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    assert str(p) in str(info.value) and reason in str(info.value)


def test_decompression_bomb_guard(tmp_path, photo):
    p = _save(photo, tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="too large.*--max-pixels"):
        load_image(p, max_pixels=1000)
    assert load_image(p, max_pixels=128 * 128).shape == (128, 128, 3)


def test_batches_keep_going_past_bad_files(tmp_path, photo):
    good = [_save(photo, tmp_path / f"g{i}.png") for i in range(3)]
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\x00\x01garbage")
    paths = [good[0], bad, good[1], good[2]]
    batches = list(load_batches(paths, batch_size=2))
    loaded = [p for g, _ in batches for p, _ in g]
    errors = [e for _, b in batches for e in b]
    assert loaded == good and [e.path for e in errors] == [str(bad)]


def test_iter_paths_files_folders_globs(tmp_path, photo):
    (tmp_path / "a" / "b").mkdir(parents=True)
    p1 = _save(photo, tmp_path / "a" / "one.JPG", fmt="JPEG")
    p2 = _save(photo, tmp_path / "a" / "b" / "two.png")
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert list(iter_image_paths([tmp_path / "a"])) == [p1, p2]
    assert list(iter_image_paths([str(tmp_path / "**" / "*.png")])) == [p2]
    missing = tmp_path / "nope.jpg"
    assert list(iter_image_paths([missing, p1, p1])) == [missing, p1]
