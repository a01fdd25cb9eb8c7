"""The decoded-source cache: a face source read once into arrays, kept as an ``.npz`` file.

The arrays a source decodes to are written to ``groupmood.weights.home()/datasets/<tag>-<hash>.npz``,
the hash of a key that holds the source files' paths, sizes and modification times (:func:`file_key`),
so a later run skips the decoding and an edited file misses the cache.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_write
from ..weights import home

__all__ = ["CACHE_VERSION", "cache_dir", "cached_arrays", "file_key"]

#: Part of every key: raising it makes every cached source be read again.
CACHE_VERSION = "1"


def cache_dir() -> Path:
    """Where the cached sources live: ``<home>/datasets``."""
    return home() / "datasets"


def cached_arrays(tag: str, key: str, build: Callable[[], dict[str, np.ndarray]], enabled: bool) -> dict[str, np.ndarray]:
    """Arrays from ``<home>/datasets/<tag>-<key>.npz``, built (and written atomically) when absent."""
    if not enabled:
        return build()
    path = cache_dir() / f"{tag}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    arrays = build()
    try:
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        tqdm.write(f"note: could not write the dataset cache {path} ({exc}); continuing without it")
    return arrays


def file_key(paths: Sequence[Path]) -> str:
    """A key of the files as they are now: resolved path, size and modification time of each."""
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)
