"""The photos a command is given: files, folders walked for image files, globs; each file once.

Every entry point that takes paths (``predict``, ``detect``, ``cache``, the dataset readers) finds
its files here, and checks each one (:func:`check_image_file`) before it is opened, so a FIFO, a
device, a broken link or an unreadable folder is reported by name instead of hanging or vanishing.
"""
from __future__ import annotations

import errno
import glob
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ImageLoadError, PatternError, display_path

__all__ = ["IMAGE_EXTENSIONS", "UNSUPPORTED_FORMATS", "check_image_file", "file_kind", "iter_image_paths",
           "path_key"]

#: Extensions picked up when a folder is given (explicit files are read whatever their name).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".jfif",
    ".ico", ".avif", ".jp2", ".tga", ".qoi", ".apng", ".mpo",
})

#: Photo formats Pillow cannot read without a plugin. Folder walks of the command line pick them up
#: too, so that a folder of phone photos reports them instead of skipping them silently.
UNSUPPORTED_FORMATS = {".heic": "HEIC", ".heif": "HEIF"}
_WALKED_EXTENSIONS = IMAGE_EXTENSIONS | frozenset(UNSUPPORTED_FORMATS)

_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def path_key(path: str | Path) -> str:
    """The identity of a file for de-duplication and resume.

    Args:
        path: a file path.

    Returns:
        Its absolute path with symlinks resolved (loops left as they are), as :func:`display_path` text.

    >>> path_key("/tmp/../tmp/x.jpg") == path_key("/tmp/x.jpg")
    True
    """
    return display_path(os.path.realpath(os.fspath(path)))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for messages).

    Args:
        mode: an ``st_mode`` from :func:`os.stat`.

    Returns:
        A phrase such as ``"a FIFO (named pipe)"``.

    >>> file_kind(stat.S_IFIFO)
    'a FIFO (named pipe)'
    """
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def check_image_file(path: str | Path) -> int:
    """Check that ``path`` is a non-empty regular file (symlinks followed) before it is opened or hashed.

    Args:
        path: the file.

    Returns:
        Its size in bytes.

    Raises:
        ImageLoadError: with the reason: missing, a glob that matched nothing, a broken or looping
            symlink, a folder, a FIFO / device / socket (reading one could block forever), empty.

    >>> check_image_file("no-such-photo.jpg")
    Traceback (most recent call last):
    ...
    groupmood.errors.ImageLoadError: no-such-photo.jpg: no such file
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
    FIFO or device named like an image, and a folder that cannot be listed (:func:`check_image_file`
    says why).

    Args:
        inputs: files, folders and glob patterns (``**`` recurses).
        notes: where a folder without an image file is noted; None: not noted.

    Yields:
        One path per file, in input order, each folder's files sorted.

    Raises:
        PatternError: for a glob that cannot be read.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for name in ("b.jpg", "a.png", "notes.txt"):
    ...         _ = (Path(d) / name).write_bytes(b"x")
    ...     names = [p.name for p in iter_image_paths([d, Path(d) / "a.png"])]
    >>> names
    ['a.png', 'b.jpg']
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
