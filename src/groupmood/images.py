"""Robust image loading for every entry point.

Content is sniffed (PIL reads the header, not the extension: GAF has PNGs named .jpg), EXIF
orientation is applied, every mode (grey, RGBA, palette, CMYK, 16-bit, float) becomes 8-bit RGB,
and every failure becomes one :class:`ImageLoadError` that names the file and the reason.
"""
from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

#: Extensions picked up when a folder is given (explicit files are read whatever their name).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif",
})

#: Default pixel limit, PIL's own (about 89 megapixels); above it a file is refused as a possible bomb.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as an (H, W, 3) uint8 RGB array with EXIF orientation applied.

    Raises :class:`ImageLoadError` naming the file for a missing, empty, truncated, non-image or
    oversized (decompression-bomb) file.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(p, "no such file")
    if p.is_dir():
        raise ImageLoadError(p, "is a folder, not an image file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageLoadError(p, f"cannot stat file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    old_limit = Image.MAX_IMAGE_PIXELS
    old_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
                return np.asarray(rgb, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            p, f"image too large ({exc}); raise the limit with --max-pixels if the file is trusted"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(p, "not an image file (format not recognised from its content)") from exc
    except PermissionError as exc:
        raise ImageLoadError(p, "permission denied") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, SyntaxError):
            raise ImageLoadError(p, f"truncated or corrupt image data ({msg})") from exc
        raise ImageLoadError(p, f"cannot decode image ({msg})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
        ImageFile.LOAD_TRUNCATED_IMAGES = old_truncated


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def iter_image_paths(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files, folders (recursive, image extensions only, sorted) and globs into paths.

    A path that neither exists nor matches a glob is yielded as-is so that the caller reports it
    as a missing file instead of silently dropping it.
    """
    seen: set[Path] = set()

    def emit(p: Path) -> Iterator[Path]:
        if p not in seen:
            seen.add(p)
            yield p

    for item in inputs:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        yield from emit(Path(root) / name)
        elif p.exists() or not _has_glob(s):
            yield from emit(p)
        else:
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                yield from emit(p)
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    yield from iter_image_paths([mp])
                else:
                    yield from emit(mp)


def load_batches(paths: Iterable[Path], batch_size: int,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[tuple[list[tuple[Path, np.ndarray]], list[ImageLoadError]]]:
    """Load images in batches; yield (loaded (path, array) pairs, load errors) per batch.

    A bad file never stops the run: its :class:`ImageLoadError` comes back beside the good ones.
    """
    good: list[tuple[Path, np.ndarray]] = []
    bad: list[ImageLoadError] = []
    for p in paths:
        try:
            good.append((p, load_image(p, max_pixels=max_pixels)))
        except ImageLoadError as exc:
            bad.append(exc)
        if len(good) + len(bad) >= batch_size:
            yield good, bad
            good, bad = [], []
    if good or bad:
        yield good, bad
