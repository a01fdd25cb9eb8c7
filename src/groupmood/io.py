"""Atomic file writes: a reader never sees a half-written output file.

The target is what the path leads to: a symlink is followed and the real file replaced (the link
stays), and a target that is not a regular file (``/dev/null``, a FIFO, a device) is written
directly, never replaced by a regular file.
"""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np


def output_target(path: str | Path) -> tuple[Path, bool]:
    """The file a write to ``path`` reaches (symlinks followed) and whether it may be replaced by a
    rename: True for a regular file or a new name, False for a FIFO, a device, a socket or a folder."""
    real = Path(os.path.realpath(os.fspath(path)))
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        return real, True
    return real, stat.S_ISREG(st.st_mode)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", durable: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` (os.replace).

    Readers never see a half-written file, and a crash leaves the old file in place. ``durable``
    also flushes the new file to disk before the rename. A symlink is followed (the real file is
    replaced); a non-regular target (``/dev/null``, a FIFO) is opened and written directly.
    """
    kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8"}
    p, regular = output_target(path)
    if not regular:
        with open(p, mode, **kwargs) as fh:
            yield fh
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def encode_image(rgb: np.ndarray, suffix: str = ".png", quality: int = 92) -> bytes:
    """An RGB (or grey) uint8 array encoded in the format of ``suffix`` (``.jpg`` at ``quality``)."""
    arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise OSError(f"OpenCV could not encode the image as {suffix}")
    return buf.tobytes()


def write_image(path: str | Path, rgb: np.ndarray, quality: int = 92) -> None:
    """Encode an RGB (or grey) uint8 array by the file's extension and write it atomically."""
    p = Path(path)
    try:
        data = encode_image(rgb, p.suffix or ".png", quality)
    except OSError as exc:
        raise OSError(f"{p}: {exc}") from None
    atomic_write_bytes(p, data)
