"""Atomic file writes: a reader never sees a half-written output file.

The target is what the path leads to: a symlink is followed and the real file replaced (the link
stays), and a target that is not a regular file (``/dev/null``, a FIFO, a device) is written
directly, never replaced by a regular file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np


def output_target(path: str | Path) -> tuple[Path, bool]:
    """The file a write to ``path`` reaches, and whether it may be replaced by a rename.

    Args:
        path: the output path (symlinks followed).

    Returns:
        (real path, replaceable): True for a regular file or a new name, False for a FIFO, a device,
        a socket or a folder.

    >>> output_target("/dev/null")
    (PosixPath('/dev/null'), False)
    """
    real = Path(os.path.realpath(os.fspath(path)))
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        return real, True
    return real, stat.S_ISREG(st.st_mode)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", durable: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` (os.replace).

    Readers never see a half-written file, and a crash leaves the old file in place. A symlink is
    followed (the real file is replaced); a non-regular target (``/dev/null``, a FIFO) is opened and
    written directly.

    Args:
        path: the output file.
        mode: ``w`` (UTF-8 text) or ``wb``.
        durable: also flush the new file to disk before the rename.

    Yields:
        The open file.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with atomic_write(Path(d) / "out.txt") as fh:
    ...         _ = fh.write("done")
    ...     text = (Path(d) / "out.txt").read_text()
    >>> text
    'done'
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


class RunLock:
    """An exclusive lock held through a lock file (``flock``), so that two runs never write one output.

    :meth:`acquire` writes this process's id into the file, so that a refused run can name the
    holder. The lock is the kernel's: a killed holder releases it at once, and a lock file left by
    a killed run takes nothing. With ``remove`` the file is deleted on :meth:`release`; a run that
    opened the old file before the deletion sees that the path no longer leads to its file and
    opens it again, so two runs never both hold the lock.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     first, second = RunLock(Path(d) / "run.lock"), RunLock(Path(d) / "run.lock")
    ...     taken = first.acquire(), second.acquire()
    ...     first.release()
    >>> taken
    (True, False)
    """

    def __init__(self, path: str | Path, remove: bool = True) -> None:
        self.path = Path(path)
        self.remove = remove
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; False when another process holds it (only without ``wait``)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """The process that holds the lock, in words (its id, as it wrote it)."""
        try:
            pid = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            pid = ""
        return f"process {pid}" if pid.isdigit() else "another process"

    def release(self) -> None:
        """Let the lock go (and delete the lock file with ``remove``); nothing when not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.remove:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception is a write that failed because the disk or the user's quota is full.

    Args:
        exc: the exception.

    Returns:
        True for ``ENOSPC`` and ``EDQUOT``.

    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device")), is_disk_full(ValueError())
    (True, False)
    """
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


#: A text cell a spreadsheet would read as a formula: it starts with = + - @ (or a tab or CR before one).
_FORMULA = re.compile(r"'*[=+\-@\t\r]")


def csv_text_cell(text: str) -> str:
    """Text made safe for a CSV cell opened in a spreadsheet (no formula injection).

    Args:
        text: the cell's text.

    Returns:
        ``text``, with a leading ``'`` where it would read as a formula (``=HYPERLINK(...)``), as
        spreadsheets expect; :func:`csv_text_value` undoes it.

    >>> csv_text_cell("=HYPERLINK(1)"), csv_text_cell("party.jpg")
    ("'=HYPERLINK(1)", 'party.jpg')
    """
    return "'" + text if _FORMULA.match(text) else text


def csv_text_value(cell: str) -> str:
    """The text :func:`csv_text_cell` was given.

    Args:
        cell: a cell :func:`csv_text_cell` wrote.

    Returns:
        The text, one leading ``'`` removed where :func:`csv_text_cell` added one.

    >>> csv_text_value(csv_text_cell("=1+1"))
    '=1+1'
    """
    return cell[1:] if cell.startswith("'") and _FORMULA.match(cell[1:]) else cell


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically (:func:`atomic_write`).

    Args:
        path: the output file.
        data: its content.
    """
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (:func:`atomic_write`).

    Args:
        path: the output file.
        text: its content.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     atomic_write_text(Path(d) / "a.txt", "hello")
    ...     text = (Path(d) / "a.txt").read_text()
    >>> text
    'hello'
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def encode_image(rgb: np.ndarray, suffix: str = ".png", quality: int = 92) -> bytes:
    """Encode an image in memory.

    Args:
        rgb: (H, W, 3) RGB or (H, W) grey uint8 pixels.
        suffix: the format, as a file extension (``.png``, ``.jpg``, ...).
        quality: JPEG quality.

    Returns:
        The encoded bytes.

    >>> encode_image(np.zeros((4, 4, 3), np.uint8))[:4]
    b'\\x89PNG'
    """
    arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise OSError(f"OpenCV could not encode the image as {suffix}")
    return buf.tobytes()


def write_image(path: str | Path, rgb: np.ndarray, quality: int = 92) -> None:
    """Encode an image by the file's extension and write it atomically.

    Args:
        path: the output file (no extension: PNG).
        rgb: (H, W, 3) RGB or (H, W) grey uint8 pixels.
        quality: JPEG quality.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_image(Path(d) / "black.jpg", np.zeros((8, 8, 3), np.uint8))
    ...     size = (Path(d) / "black.jpg").stat().st_size
    >>> size > 0
    True
    """
    p = Path(path)
    try:
        data = encode_image(rgb, p.suffix or ".png", quality)
    except OSError as exc:
        raise OSError(f"{p}: {exc}") from None
    atomic_write_bytes(p, data)
