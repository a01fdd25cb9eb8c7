"""Robust image loading for every entry point.

Content is sniffed (PIL reads the header, not the extension: GAF has PNGs named .jpg), EXIF
orientation is applied, every mode (grey, RGBA, palette, CMYK, 16-bit, float) becomes 8-bit RGB,
and every failure becomes one :class:`ImageLoadError` that names the file and the reason.
"""
from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError
from .paths import UNSUPPORTED_FORMATS, check_image_file

#: Modes PIL's box reduction (:meth:`PIL.Image.Image.reduce`) takes.
_REDUCIBLE = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "I", "F", "CMYK"})

#: Default pixel limit, PIL's own (about 89 megapixels); above it a file is refused as a possible bomb.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


#: A 32-bit integer or float image is scaled to 0..255 between these percentiles of its values, the
#: values beyond them clipped: one extreme pixel (a float TIFF with a 3e38 among values 0..1) would
#: otherwise take the whole scale and turn the photo black.
_SCALE_PERCENTILES = (0.1, 99.9)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white.

    16-bit images are scaled from their full range (0..65535); 32-bit integer and float images from
    the 0.1th to the 99.9th percentile of their values, outliers clipped (:data:`_SCALE_PERCENTILES`).
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = (float(v) for v in np.percentile(arr, _SCALE_PERCENTILES))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _check_size(p: Path, img: Image.Image, max_pixels: int | None) -> None:
    """Refuse an image that would decode to more than ``max_pixels``, before anything is decoded.

    What counts is what the decoder will make: the header's size, or after a JPEG draft reduction
    the reduced size (``img.size`` once :meth:`PIL.Image.Image.draft` ran).
    """
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageLoadError(p, f"image too large: {w} x {h} = {w * h} pixels, above the limit of {max_pixels} "
                                "(a guard against decompression bombs); raise the limit with --max-pixels "
                                "if the file is trusted")


@dataclass(frozen=True)
class Photo:
    """A photo's pixels, perhaps decoded at a reduced size, and the size of the photo itself.

    :func:`load_photo` gives fewer pixels than the file holds when the models need fewer
    (JPEG draft decoding, or a box reduction for other formats); ``width`` and ``height`` are the
    photo's own (EXIF orientation applied), so that boxes can be reported in its coordinates.
    """

    pixels: np.ndarray
    width: int
    height: int

    @classmethod
    def of(cls, pixels: np.ndarray) -> Photo:
        """A photo decoded at full size.

        Args:
            pixels: (H, W, 3) uint8 RGB pixels.

        Returns:
            The photo, its size that of ``pixels``.

        >>> Photo.of(np.zeros((4, 6, 3), np.uint8)).scale
        (1.0, 1.0)
        """
        return cls(pixels, int(pixels.shape[1]), int(pixels.shape[0]))

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from pixel coordinates to the photo's own coordinates (1.0 at full size)."""
        return self.width / self.pixels.shape[1], self.height / self.pixels.shape[0]


def reduction(width: int, height: int, min_short_side: int | None, steps: tuple[int, ...] = (8, 4, 2)) -> int:
    """The decoding rule: how much a photo may be shrunk while decoding it.

    A photo is decoded (JPEG: libjpeg's 1/2, 1/4, 1/8 scaling; other formats: a box reduction after
    decoding) at the smallest size whose shorter side still has ``min_short_side`` pixels, the most
    any model needs (:meth:`groupmood.pipeline.GroupEmotionRecognizer.decode_short_side`).

    Args:
        width: the photo's width in pixels.
        height: the photo's height in pixels.
        min_short_side: pixels the shorter side must keep; None or 0: no reduction.
        steps: the factors allowed, largest first.

    Returns:
        The largest factor of ``steps`` that keeps the shorter side at ``min_short_side`` pixels or
        more; 1 if none does.

    >>> reduction(4000, 3000, 960), reduction(4000, 3000, 256), reduction(640, 480, 960)
    (2, 8, 1)
    """
    if not min_short_side:
        return 1
    short = min(width, height)
    return next((k for k in steps if short // k >= min_short_side), 1)


def _check_finite(p: Path, img: Image.Image) -> None:
    """Refuse a float image with NaN or infinite pixels: scaling would turn the whole image black."""
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ImageLoadError(p, f"{bad} of {arr.size} pixels are NaN or infinite (a float image with missing "
                                    "values); replace them in the file (e.g. with 0) and read it again")


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB pixels, whatever its format and mode, EXIF orientation applied.

    Args:
        path: the file; its content decides the format, not its extension.
        max_pixels: refuse images with more pixels (a decompression-bomb guard); None: no limit.

    Returns:
        An (H, W, 3) uint8 RGB array.

    Raises:
        ImageLoadError: naming the file, for a missing, empty, non-regular (FIFO, device), truncated,
            non-image or oversized file, and for a float image with NaN or infinite pixels.

    >>> from groupmood import sample_path
    >>> load_image(sample_path("group")).shape
    (667, 1000, 3)
    """
    return load_photo(path, max_pixels).pixels


_PIL_LOCK = threading.Lock()
_PIL_USERS = 0
_PIL_SAVED: tuple[Any, bool] = (None, False)


@contextlib.contextmanager
def _pil_settings() -> Iterator[None]:
    """PIL's own pixel limit off (:func:`_check_size` applies ``max_pixels``) and truncated files refused,
    for as long as any thread decodes; PIL's globals are restored when the last decoding thread is done."""
    global _PIL_USERS, _PIL_SAVED
    with _PIL_LOCK:
        if _PIL_USERS == 0:
            _PIL_SAVED = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            Image.MAX_IMAGE_PIXELS = None
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _PIL_USERS += 1
    try:
        yield
    finally:
        with _PIL_LOCK:
            _PIL_USERS -= 1
            if _PIL_USERS == 0:
                Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _PIL_SAVED


def _decode(p: Path, img: Image.Image, max_pixels: int | None, min_short_side: int | None) -> Photo:
    """An opened image as a :class:`Photo` (see :func:`load_photo`); ``p`` names it in errors.

    ``img`` is changed (drafted, loaded, transposed): callers pass an image they opened, or a copy.
    """
    full = img.size
    if full[0] < 1 or full[1] < 1:
        raise ImageLoadError(p, f"image has no pixels ({full[0]} x {full[1]})")
    k = reduction(*full, min_short_side)
    if k > 1 and img.format == "JPEG":
        # libjpeg scales by 1/k while decoding (to ceil(size / k)); PIL picks k from size // request
        img.draft(img.mode, (full[0] // k, full[1] // k))
    _check_size(p, img, max_pixels)
    img.load()
    _check_finite(p, img)
    drafted = img.size != full
    orient = img.getexif().get(ExifTags.Base.Orientation, 1)
    ImageOps.exif_transpose(img, in_place=True)
    if k > 1 and not drafted and img.mode in _REDUCIBLE:
        img = img.reduce(k)
        k = 1
    rgb = _to_rgb(img)
    if k > 1 and not drafted:
        rgb = rgb.reduce(k)
    w, h = (full[1], full[0]) if orient in (5, 6, 7, 8) else full
    return Photo(np.asarray(rgb, dtype=np.uint8).copy(), w, h)


def load_photo(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_short_side: int | None = None) -> Photo:
    """Read an image file as a :class:`Photo`: RGB pixels, perhaps reduced, and the photo's own size.

    A JPEG is reduced by libjpeg's draft mode (the full size is never decoded), another format by
    box averaging right after decoding, so large photos cost only the pixels the models need.

    Args:
        path: the file.
        max_pixels: refuse images that decode to more pixels; None: no limit.
        min_short_side: decode at the smallest size whose shorter side keeps this many pixels
            (:func:`reduction`); None: full size.

    Returns:
        The :class:`Photo` (EXIF orientation applied). Errors as :func:`load_image`.

    >>> from groupmood import sample_path
    >>> photo = load_photo(sample_path("group"), min_short_side=256)
    >>> photo.pixels.shape, (photo.width, photo.height)
    ((334, 500, 3), (1000, 667))
    """
    p = Path(path)
    check_image_file(p)
    return _load(p, p, max_pixels, min_short_side)


def load_photo_bytes(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     min_short_side: int | None = None) -> Photo:
    """A file's bytes (e.g. an upload) decoded as :func:`load_photo` decodes a file; nothing touches disk.

    Args:
        data: the encoded image.
        name: names the photo in an :class:`ImageLoadError`.
        max_pixels: refuse images that decode to more pixels; None: no limit.
        min_short_side: as in :func:`load_photo`.

    Returns:
        The :class:`Photo`.

    >>> from groupmood import sample_path
    >>> load_photo_bytes(sample_path("group").read_bytes(), "upload.jpg").pixels.shape
    (667, 1000, 3)
    """
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    return _load(Path(name), io.BytesIO(data), max_pixels, min_short_side)


def photo_from_pil(img: Image.Image, min_short_side: int | None = None, name: str = "image") -> Photo:
    """A PIL image as a :class:`Photo`, decoded as files are: EXIF orientation, 16-bit and float scaling,
    NaN refusal, the reduction to ``min_short_side``.

    Args:
        img: the PIL image (not changed).
        min_short_side: as in :func:`load_photo`.
        name: names the image in an :class:`ImageLoadError`.

    Returns:
        The :class:`Photo`, its pixels 8-bit RGB.

    >>> photo_from_pil(Image.new("I;16", (8, 6), 65535)).pixels[0, 0].tolist()
    [255, 255, 255]
    """
    try:
        img.load()
        return _decode(Path(name), img.copy(), None, min_short_side)  # a copy has no format: no draft mode
    except (OSError, ValueError) as exc:
        raise ImageLoadError(name, f"cannot read the PIL image ({exc})") from exc


def _load(p: Path, source: Path | io.BytesIO, max_pixels: int | None, min_short_side: int | None) -> Photo:
    """Open ``source`` with PIL and decode it (:func:`_decode`); every failure an :class:`ImageLoadError` naming ``p``."""
    try:
        with _pil_settings(), Image.open(source) as img:
            return _decode(p, img, max_pixels, min_short_side)
    except UnidentifiedImageError as exc:
        fmt = UNSUPPORTED_FORMATS.get(p.suffix.lower())
        if fmt:
            raise ImageLoadError(p, f"{fmt} images cannot be read here (Pillow needs the pillow-heif plugin); "
                                    "convert the file to JPEG or PNG") from exc
        raise ImageLoadError(p, "not an image file (format not recognised from its content)") from exc
    except PermissionError as exc:
        raise ImageLoadError(p, "permission denied") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, SyntaxError):
            raise ImageLoadError(p, f"truncated or corrupt image data ({msg})") from exc
        raise ImageLoadError(p, f"cannot decode image ({msg})") from exc


#: Default decoded pixels per batch (:func:`load_in_order`): the detector's summed-area tables and pyramid
#: take working memory in proportion to the pixels, so a pixel budget bounds a batch's memory whatever its
#: photos (docs/performance.md).
DEFAULT_PIXEL_BUDGET = 8_000_000


def load_in_order(paths: Iterable[Path], batch_size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  min_short_side: int | None = None, pixel_budget: int | None = DEFAULT_PIXEL_BUDGET
                  ) -> Iterator[list[tuple[Path, Any]]]:
    """Load images in batches, in input order; a bad file never stops the run.

    A batch ends at ``batch_size`` photos or once its decoded pixels reach ``pixel_budget``, so that
    memory is bounded by pixels, not photo count: a 24-megapixel photo makes a batch of its own.

    Args:
        paths: the image files.
        batch_size: most photos per batch.
        max_pixels: refuse images that decode to more pixels; None: no limit.
        min_short_side: decode reduced (:func:`load_photo`) and yield :class:`Photo` objects.
        pixel_budget: most decoded pixels per batch; None: no budget.

    Yields:
        Lists of (path, item): item is an (H, W, 3) array (a :class:`Photo` with ``min_short_side``),
        or the :class:`ImageLoadError` of a file that could not be read.

    >>> from groupmood import sample_path
    >>> [batch] = load_in_order([sample_path("group"), Path("missing.jpg")], batch_size=8)
    >>> [type(item).__name__ for _, item in batch]
    ['ndarray', 'ImageLoadError']
    """
    batch: list[tuple[Path, Any]] = []
    pixels = 0
    for p in paths:
        try:
            photo = load_photo(p, max_pixels, min_short_side)
            batch.append((p, photo if min_short_side else photo.pixels))
            pixels += photo.pixels.shape[0] * photo.pixels.shape[1]
        except ImageLoadError as exc:
            batch.append((p, exc))
        if len(batch) >= batch_size or (pixel_budget is not None and pixels >= pixel_budget):
            yield batch
            batch, pixels = [], 0
    if batch:
        yield batch


def load_batches(paths: Iterable[Path], batch_size: int,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[tuple[list[tuple[Path, np.ndarray]], list[ImageLoadError]]]:
    """Load images in batches, the good ones apart from the load errors.

    Args:
        paths: the image files.
        batch_size: most photos per batch.
        max_pixels: refuse images that decode to more pixels; None: no limit.

    Yields:
        (loaded (path, (H, W, 3) array) pairs, :class:`ImageLoadError` list) per batch.

    >>> from groupmood import sample_path
    >>> loaded, errors = next(load_batches([sample_path("group"), Path("missing.jpg")], batch_size=8))
    >>> len(loaded), [e.reason for e in errors]
    (1, ['no such file'])
    """
    for batch in load_in_order(paths, batch_size, max_pixels):
        yield ([(p, x) for p, x in batch if isinstance(x, np.ndarray)],
               [x for _, x in batch if isinstance(x, ImageLoadError)])
