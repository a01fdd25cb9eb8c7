"""Robust image loading for every entry point.

Content is sniffed (PIL reads the header, not the extension: GAF has PNGs named .jpg), EXIF
orientation is applied, every mode (grey, RGBA, palette, CMYK, 16-bit, float) becomes 8-bit RGB,
and every failure becomes one :class:`ImageLoadError` that names the file and the reason.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError, PatternError, display_path

#: Extensions picked up when a folder is given (explicit files are read whatever their name).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".jfif",
    ".ico", ".avif", ".jp2", ".tga", ".qoi", ".apng", ".mpo",
})

#: Photo formats Pillow cannot read without a plugin. Folder walks of the command line pick them up
#: too, so that a folder of phone photos reports them instead of skipping them silently.
_UNSUPPORTED = {".heic": "HEIC", ".heif": "HEIF"}
_WALKED_EXTENSIONS = IMAGE_EXTENSIONS | frozenset(_UNSUPPORTED)

_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def path_key(path: str | Path) -> str:
    """The identity of a file for de-duplication and resume: its absolute path with symlinks
    resolved (loops left as they are), as :func:`display_path` text."""
    return display_path(os.path.realpath(os.fspath(path)))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for messages)."""
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def check_image_file(path: str | Path) -> int:
    """The size in bytes of ``path`` if it is a non-empty regular file (symlinks followed).

    Raises :class:`ImageLoadError` with the reason otherwise: missing, a glob that matched nothing, a
    broken or looping symlink, a folder, a FIFO / device / socket (reading one could block forever),
    an empty file. Callers check before they open or hash a file.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(p, "symbolic link loop (the link leads back to itself); fix or remove "
                                    "the link") from None
        if os.path.islink(p):
            raise ImageLoadError(p, f"broken symbolic link (it points to {display_path(os.readlink(p))}, "
                                    "which does not exist)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            reason = "no file matches this pattern" if _has_glob(p) else "no such file"
            raise ImageLoadError(p, reason) from None
        if exc.errno == errno.EACCES:
            raise ImageLoadError(p, "permission denied") from None
        raise ImageLoadError(p, f"cannot stat file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(p):
                pass
        except OSError as exc:  # a folder walk met it and could not list it: its photos were not read
            raise ImageLoadError(p, f"folder cannot be read ({exc.strerror or exc}); its photos were not read: "
                                    "give yourself read access (chmod u+rx) and run again") from None
        raise ImageLoadError(p, "is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(p, f"not a regular file ({file_kind(st.st_mode)}); only image files are read")
    if st.st_size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    return st.st_size

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
        """A photo decoded at full size."""
        return cls(pixels, int(pixels.shape[1]), int(pixels.shape[0]))

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from pixel coordinates to the photo's own coordinates (1.0 at full size)."""
        return self.width / self.pixels.shape[1], self.height / self.pixels.shape[0]


def reduction(width: int, height: int, min_short_side: int | None, steps: tuple[int, ...] = (8, 4, 2)) -> int:
    """The largest factor of ``steps`` that keeps the shorter side at ``min_short_side`` pixels or more; 1 if none.

    The decoding rule: a photo is decoded (JPEG: libjpeg's 1/2, 1/4, 1/8 scaling; other formats: a
    box reduction after decoding) at the smallest size whose shorter side still has
    ``min_short_side`` pixels, the most any model needs (:meth:`groupmood.pipeline.GroupEmotionRecognizer.decode_short_side`).
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
    """Read ``path`` as an (H, W, 3) uint8 RGB array with EXIF orientation applied.

    Raises :class:`ImageLoadError` naming the file for a missing, empty, non-regular (FIFO, device),
    truncated, non-image or oversized (decompression-bomb) file, and for a float image with NaN or
    infinite pixels.
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
    """Read ``path`` as a :class:`Photo`: RGB pixels, EXIF orientation applied, and the photo's own size.

    With ``min_short_side`` the pixels are decoded at a reduced size whose shorter side keeps at
    least that many pixels (:func:`reduction`): a JPEG through libjpeg's draft mode (the full
    size is never decoded), another format reduced by box averaging right after decoding. The
    pixel guard ``max_pixels`` counts the pixels the decoder makes. Errors as :func:`load_image`.
    """
    p = Path(path)
    check_image_file(p)
    return _load(p, p, max_pixels, min_short_side)


def load_photo_bytes(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     min_short_side: int | None = None) -> Photo:
    """The photo in ``data`` (a file's bytes, e.g. an upload) decoded as :func:`load_photo` decodes a file.

    Nothing is written to disk; ``name`` names the photo in an :class:`ImageLoadError`.
    """
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    return _load(Path(name), io.BytesIO(data), max_pixels, min_short_side)


def photo_from_pil(img: Image.Image, min_short_side: int | None = None, name: str = "image") -> Photo:
    """A PIL image as a :class:`Photo`, through the decoding of files: EXIF orientation, 16-bit and float
    scaling, NaN refusal, the reduction to ``min_short_side`` (``img`` itself is not changed)."""
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
        fmt = _UNSUPPORTED.get(p.suffix.lower())
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


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _translate_part(part: str) -> str:
    """A regular expression for one path component of a glob (``*`` and ``?`` never match ``/``)."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        j = part.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif j > 0:
            body = part[i + 1:j].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _recursive_glob(pattern: str) -> list[Path]:
    """Paths matching a glob with ``**``, found by a walk that never enters a folder symlink.

    Python's glob follows folder symlinks under ``**``: a link to a parent folder makes it run for
    ever, a link to ``.`` yields every file 40 times. Hidden names are skipped, as glob does.
    """
    parts = pattern.split("/")
    k = next(i for i, part in enumerate(parts) if _has_glob(part))
    root = "/".join(parts[:k]) or ("/" if pattern.startswith("/") else ".")
    prefix = "" if k == 0 else root.rstrip("/") + "/"
    rx = ""
    for i, part in enumerate(parts[k:]):
        last = i == len(parts) - k - 1
        if part == "**":
            rx += ".*" if last else "(?:[^/]*/)*"
        else:
            rx += _translate_part(part) + ("" if last else "/")
    try:
        matcher = re.compile(rx, re.DOTALL)
    except re.error as exc:
        raise PatternError(f"{display_path(pattern)}: not a valid glob pattern ({exc}); fix the pattern "
                           "(a range such as [a-z] goes from low to high) or quote a literal [ as [[]") from None
    out = []
    unreadable: list[str] = []
    for dirpath, dirs, files in os.walk(root, onerror=lambda exc: unreadable.append(exc.filename)):
        # followlinks=False: folder symlinks are listed, not entered
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in [*dirs, *sorted(f for f in files if not f.startswith("."))]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if matcher.fullmatch(rel):
                out.append(Path(prefix + rel))
    # a folder that could not be listed is yielded itself, so that it is reported (check_image_file)
    return out + [Path(f) for f in unreadable]


def _expand_glob(pattern: str) -> list[Path]:
    if "**" in pattern:
        return _recursive_glob(pattern)
    return [Path(m) for m in sorted(glob.glob(pattern))]


def iter_image_paths(inputs: Iterable[str | Path], notes: list[str] | None = None) -> Iterator[Path]:
    """Expand files, folders (recursive, image extensions and HEIC / HEIF only, sorted) and globs into paths.

    Each file comes once, however many inputs name it (keyed on the resolved path, :func:`path_key`);
    walks never enter folder symlinks, so a link to a parent folder cannot make them run for ever.
    A path that neither exists nor matches a glob is yielded as-is so that the caller reports it
    (missing file, pattern without a match, symlink loop) instead of silently dropping it; so is a
    FIFO or device named like an image. A folder that cannot be listed (permission denied) is yielded
    itself, so that it is reported as a failed input (:func:`check_image_file` says why); a folder
    without an image file is noted in ``notes``. A glob that cannot be read raises :class:`PatternError`.
    """
    seen: set[str] = set()

    def emit(p: Path) -> Iterator[Path]:
        key = path_key(p)
        if key not in seen:
            seen.add(key)
            yield p

    def walk(folder: Path) -> Iterator[Path]:
        found = 0
        unreadable: list[str] = []
        for root, dirs, files in os.walk(folder, onerror=lambda exc: unreadable.append(exc.filename)):
            dirs.sort()
            for name in sorted(files):
                if Path(name).suffix.lower() in _WALKED_EXTENSIONS:
                    found += 1
                    yield from emit(Path(root) / name)
        for f in unreadable:  # a folder that could not be listed is reported as a failed input
            found += 1
            yield from emit(Path(f))
        if not found and notes is not None:
            notes.append(f"{display_path(folder)}: no image files in this folder")

    for item in inputs:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            yield from walk(p)
        elif os.path.lexists(s) or not _has_glob(s):
            yield from emit(p)
        else:
            matches = _expand_glob(s)
            if not matches:
                yield from emit(p)
            for mp in matches:
                if mp.is_dir():
                    yield from walk(mp)
                else:
                    yield from emit(mp)


#: Default decoded pixels per batch (:func:`load_in_order`): with the detector's summed-area tables and
#: pyramid, about 30 bytes of working memory per pixel, so a batch stays near 250 MB whatever its photos.
DEFAULT_PIXEL_BUDGET = 8_000_000


def load_in_order(paths: Iterable[Path], batch_size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  min_short_side: int | None = None, pixel_budget: int | None = DEFAULT_PIXEL_BUDGET
                  ) -> Iterator[list[tuple[Path, Any]]]:
    """Load images in batches; per batch, (path, pixels or its load error) in input order.

    A batch ends at ``batch_size`` photos or once its decoded pixels reach ``pixel_budget`` (None: no
    budget), so that memory is bounded by pixels, not photo count: a 24-megapixel photo makes a
    batch of its own. Items are (H, W, 3) arrays, or :class:`Photo` objects decoded at a reduced
    size when ``min_short_side`` is given (:func:`load_photo`). A bad file never stops the run: its
    :class:`ImageLoadError` takes its place in the batch.
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
    """Load images in batches; yield (loaded (path, array) pairs, load errors) per batch.

    A bad file never stops the run: its :class:`ImageLoadError` comes back beside the good ones.
    """
    for batch in load_in_order(paths, batch_size, max_pixels):
        yield ([(p, x) for p, x in batch if isinstance(x, np.ndarray)],
               [x for _, x in batch if isinstance(x, ImageLoadError)])
