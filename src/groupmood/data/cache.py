"""Face cache: detection, landmarks and both crops computed once per image, stored in shards.

Training and evaluation read the same crops as inference makes, without running MTCNN each epoch.
An image is keyed by the sha256 of its bytes, so renamed or copied files hit the cache and an
edited file misses it. The cache folder is named after the detector and crop settings, so other
settings never read stale crops. Each shard (``shard-XXXXX.npz``) is written atomically and only
then listed in ``index.jsonl``; an interrupted build resumes from the last finished shard.

A sharded build (``cache build --shard I/N`` on many machines sharing the folder, or under
torchrun) takes images I, I + N, ... of the input list and writes its own files
(``part-I-of-N-XXXXX.npz``, ``index.part-I-of-N.jsonl``), so jobs never write the same file;
readers read every index. The job that completes last (each leaves ``part-I-of-N.done``) merges
the part indexes into ``index.jsonl`` in input order, under a lock, and removes them.

Two builds that would write the same files (two unsharded builds of one folder: two trainings at
once on the shared default cache; or two jobs of one shard) never run together: the second waits
for the first (a lock per writer, ``.build-shard.lock`` or ``.build-part-I-of-N.lock``), then reads
the index again and computes only what is still missing.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..align import align_faces, square_crops
from ..detect import CascadeSettings, Face, FaceDetector
from ..errors import ImageLoadError
from ..images import DEFAULT_MAX_PIXELS, load_image
from ..paths import check_image_file
from ..io import RunLock, atomic_write_bytes
from ..weights import sha256_file

if TYPE_CHECKING:
    from ..shard import Shard

CACHE_VERSION = 1

#: Images per shard file by default: the unit of resume, so a killed build redoes at most this many.
DEFAULT_SHARD_SIZE = 32

#: A shard's temporary file older than this (seconds) belongs to a build that was killed.
_STALE_TMP_S = 60.0


def file_key(path: str | Path) -> str:
    """sha256 of the file's bytes (the cache key of an image)."""
    return sha256_file(path)


@dataclass(frozen=True)
class CachedImage:
    """One image's entry: its size, faces (sorted by score) and the faces' two crops."""

    key: str
    width: int
    height: int
    faces: list[Face]
    aligned: np.ndarray  # (N, 112, 96, 3) uint8
    grey48: np.ndarray  # (N, 48, 48) uint8

    def largest(self) -> int:
        """Index of the face with the largest box (raises IndexError when there is none)."""
        if not self.faces:
            raise IndexError("no face in this image")
        return int(np.argmax([f.area for f in self.faces]))


@dataclass
class BuildReport:
    """What a build did: images computed now, found already cached, and unreadable files."""

    computed: int = 0
    cached: int = 0
    faces: int = 0
    errors: list[ImageLoadError] = field(default_factory=list)
    merged: bool = False  # a sharded build that completed last merged the part indexes


def _settings_id(settings: CascadeSettings, margin: float) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "settings": asdict(settings), "margin": margin}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


_WORKER_DETECTOR: FaceDetector | None = None


def _worker_init(settings: CascadeSettings, weights_dir: str | None) -> None:
    import torch

    global _WORKER_DETECTOR
    torch.set_num_threads(1)
    _WORKER_DETECTOR = FaceDetector.from_pretrained(weights_dir=weights_dir, **asdict(settings))


def _compute_shard(items: Sequence[tuple[str, str]], out: str, margin: float,
                   detector: FaceDetector | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
                   ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Detect and crop (key, path) items; write one shard file; return index rows and errors."""
    det = detector or _WORKER_DETECTOR
    if det is None:
        raise RuntimeError("face cache worker started without a detector")
    images, keys, errors = [], [], []
    for key, path in items:
        try:
            images.append(load_image(path, max_pixels=max_pixels))
            keys.append(key)
        except ImageLoadError as exc:
            errors.append((path, exc.reason))
    faces = det.detect(images) if images else []
    rows, arrays = [], {"boxes": [], "scores": [], "landmarks": [], "aligned": [], "grey48": []}
    start = 0
    for key, img, fs in zip(keys, images, faces):
        n = len(fs)
        rows.append({"key": key, "shard": Path(out).name, "start": start, "n": n,
                     "width": int(img.shape[1]), "height": int(img.shape[0])})
        start += n
        if n:
            lm = np.stack([f.landmarks for f in fs])
            boxes = np.stack([f.box for f in fs])
            arrays["boxes"].append(boxes)
            arrays["scores"].append(np.array([f.score for f in fs], np.float32))
            arrays["landmarks"].append(lm)
            arrays["aligned"].append(align_faces(img, lm))
            arrays["grey48"].append(square_crops(img, boxes, margin=margin))
    empty = {"boxes": (0, 4), "scores": (0,), "landmarks": (0, 5, 2), "aligned": (0, 112, 96, 3), "grey48": (0, 48, 48)}
    packed = {k: np.concatenate(v) if v else np.zeros(empty[k], np.uint8 if k in ("aligned", "grey48") else np.float32)
              for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **packed)
    atomic_write_bytes(out, buf.getvalue())
    return rows, errors


class FaceCache:
    """A folder of face-cache shards for one set of detector and crop settings."""

    def __init__(self, root: str | Path, settings: CascadeSettings | None = None, margin: float = 0.0) -> None:
        self.settings = settings or CascadeSettings()
        self.margin = margin
        self.dir = Path(root) / _settings_id(self.settings, margin)
        self.index_path = self.dir / "index.jsonl"
        self._index: dict[str, dict] = {}
        self._shards: dict[str, dict[str, np.ndarray]] = {}
        self._load_index()

    @classmethod
    def from_dir(cls, folder: str | Path) -> FaceCache:
        """The cache of an existing settings folder (``<root>/<settings id>``, which holds ``settings.json``)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
            cache = cls(folder.parent, CascadeSettings(**meta["settings"]), float(meta["margin"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{folder} is not a face cache folder (its settings.json: {exc}); give the folder "
                             "that holds settings.json and index.jsonl") from None
        if cache.dir.resolve() != folder.resolve():
            raise ValueError(f"{folder}: its settings.json belongs to the folder {cache.dir.name}; was it renamed?")
        return cache

    def _index_files(self) -> list[Path]:
        """``index.jsonl``, then the part indexes of sharded builds not merged yet."""
        return [self.index_path, *sorted(self.dir.glob("index.part-*.jsonl"))]

    def _load_index(self) -> None:
        self._index.clear()
        for path in self._index_files():
            for row in self._read_rows(path):
                self._index.setdefault(row["key"], row)

    def _read_rows(self, path: Path) -> list[dict]:
        """The rows of one index file whose shard exists; a last line cut by a crash is dropped (and the file fixed)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        rows, good = [], []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash; its image is computed again
            if (self.dir / row["shard"]).exists():
                rows.append(row)
                good.append(line)
        if text and not text.endswith("\n"):
            atomic_write_bytes(path, "".join(g + "\n" for g in good).encode())
        return rows

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _next_shard(self, prefix: str = "shard") -> int:
        nums = [int(p.stem.rsplit("-", 1)[1]) for p in self.dir.glob(f"{prefix}-*.npz")
                if p.stem.rsplit("-", 1)[1].isdigit() and (prefix != "shard" or p.stem.count("-") == 1)]
        return max(nums, default=-1) + 1

    def _remove_stale_temp_files(self) -> None:
        """Delete the half-written shard files a killed build left (old enough not to be another build's)."""
        now = time.time()
        for tmp in [*self.dir.glob(".shard-*.tmp"), *self.dir.glob(".part-*.tmp")]:
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()
            except FileNotFoundError:
                continue

    def build(self, paths: Sequence[str | Path], detector: FaceDetector | None = None,
              shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 1, weights_dir: str | None = None,
              progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS,
              shard: Shard | None = None) -> BuildReport:
        """Make sure every readable image in ``paths`` is cached; resumable, optionally in parallel.

        A path that is not a non-empty regular file (a FIFO, a device, a folder) is reported, never
        opened: hashing a FIFO would wait for ever. With ``shard`` (I of N) only images I, I + N, ...
        of ``paths`` are built, into this shard's own files; the last shard to complete merges. Another
        build writing the same files makes this one wait for it (see the module's notes).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        prefix = "shard" if shard is None else f"part-{shard.index}-of-{shard.count}"
        lock = RunLock(self.dir / f".build-{prefix}.lock")
        if not lock.acquire():
            print(f"note: another cache build ({lock.holder()}) is writing {self.dir}; waiting for it to finish",
                  file=sys.stderr, flush=True)
            lock.acquire(wait=True)
        try:
            self._load_index()  # what the other build added
            return self._build(paths, prefix, detector, shard_size, workers, weights_dir, progress, max_pixels, shard)
        finally:
            lock.release()

    def _build(self, paths: Sequence[str | Path], prefix: str, detector: FaceDetector | None, shard_size: int,
               workers: int, weights_dir: str | None, progress: bool, max_pixels: int | None,
               shard: Shard | None) -> BuildReport:
        """:meth:`build` under the writer's lock."""
        self._remove_stale_temp_files()
        meta = self.dir / "settings.json"
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps({"settings": asdict(self.settings), "margin": self.margin,
                                                 "version": CACHE_VERSION}, indent=2).encode())
        report = BuildReport()
        todo: dict[str, str] = {}
        position: dict[str, int] = {}
        positions = range(len(paths)) if shard is None else range(shard.index, len(paths), shard.count)
        for pos in positions:
            p = paths[pos]
            try:
                check_image_file(p)
                key = file_key(p)
            except ImageLoadError as exc:
                report.errors.append(exc)
                continue
            except OSError as exc:
                report.errors.append(ImageLoadError(p, f"cannot read file ({exc.strerror or exc})"))
                continue
            if key in self._index:
                report.cached += 1
            else:
                todo.setdefault(key, str(p))
                position.setdefault(key, pos)
        items = list(todo.items())
        index_path = self.index_path if shard is None else self.dir / f"index.{prefix}.jsonl"
        first = self._next_shard(prefix)
        chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
        outs = [str(self.dir / f"{prefix}-{first + k:05d}.npz") for k in range(len(chunks))]
        bar = tqdm(total=len(items), unit="img", desc="face cache", disable=not progress)
        for chunk, (rows, errors) in zip(chunks, self._run(chunks, outs, detector, workers, weights_dir,
                                                           max_pixels)):
            with self._index_lock(), open(index_path, "a", encoding="utf-8") as f:  # a merge may rewrite it
                for row in rows:
                    if shard is not None:
                        row = {**row, "pos": position[row["key"]]}  # input position, for the merge's order
                    f.write(json.dumps(row) + "\n")
                    self._index[row["key"]] = row
                f.flush()
                os.fsync(f.fileno())
            report.computed += len(rows)
            report.faces += sum(r["n"] for r in rows)
            report.errors.extend(ImageLoadError(p, reason) for p, reason in errors)
            bar.update(len(chunk))
        bar.close()
        if shard is not None:
            atomic_write_bytes(self.dir / f"{prefix}.done", json.dumps({"inputs": len(paths)}).encode())
            report.merged = self.merge_parts(shard.count)
        return report

    def merge_parts(self, count: int | None = None) -> bool:
        """Merge the part indexes into ``index.jsonl`` when all ``count`` parts are done (None: whatever is there).

        New rows follow the input order (their ``pos``), after the rows already there; the part
        indexes and done markers are then removed. Runs under a lock, so that two jobs completing
        together merge once. Returns whether it merged.
        """
        with self._index_lock():
            parts = sorted(self.dir.glob("index.part-*.jsonl"))
            done = sorted(self.dir.glob("part-*-of-*.done"))
            counts = {int(d.stem.rsplit("-", 1)[1]) for d in done}
            complete = {n for n in counts if sum(d.stem.endswith(f"-of-{n}") for d in done) >= n}
            if count is not None and count not in complete:
                return False
            if not parts and not complete:
                return False
            # a by-hand merge of unfinished shards keeps their markers: the last shard still merges
            done = [d for d in done if int(d.stem.rsplit("-", 1)[1]) in complete]
            kept = self._read_rows(self.index_path)
            seen = {r["key"] for r in kept}
            new = sorted((r for path in parts for r in self._read_rows(path)), key=lambda r: r.get("pos", 0))
            for row in new:
                if row["key"] not in seen:
                    seen.add(row["key"])
                    kept.append({k: v for k, v in row.items() if k != "pos"})
            atomic_write_bytes(self.index_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
            for path in (*parts, *done):
                path.unlink(missing_ok=True)
            self._load_index()
            return True

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        """The lock under which index files are appended to or rewritten (by a merge); its file goes with it."""
        with RunLock(self.dir / ".merge.lock", remove=True):
            yield

    def _run(self, chunks: list, outs: list[str], detector: FaceDetector | None, workers: int,
             weights_dir: str | None, max_pixels: int | None = DEFAULT_MAX_PIXELS
             ) -> Iterator[tuple[list[dict], list[tuple[str, str]]]]:
        if workers <= 1:
            det = detector or FaceDetector.from_pretrained(weights_dir=weights_dir, auto_fetch=weights_dir is None,
                                                           **asdict(self.settings))
            for chunk, out in zip(chunks, outs):
                yield _compute_shard(chunk, out, self.margin, det, max_pixels)
            return
        with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(self.settings, weights_dir)) as pool:
            n = len(chunks)
            yield from pool.map(_compute_shard, chunks, outs, [self.margin] * n, [None] * n, [max_pixels] * n)

    def _shard(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._shards:
            with np.load(self.dir / name) as z:
                self._shards[name] = {k: z[k] for k in z.files}
        return self._shards[name]

    def get(self, path: str | Path) -> CachedImage:
        """The cached entry of an image file; KeyError when it was never built."""
        return self.get_key(file_key(path), str(path))

    def get_key(self, key: str, name: str | None = None) -> CachedImage:
        """The cached entry of an image key (sha256 of its bytes)."""
        row = self._index.get(key)
        if row is None:
            raise KeyError(f"{name or key} is not in the face cache {self.dir}; run `groupmood cache build`")
        sh = self._shard(row["shard"])
        sl = slice(row["start"], row["start"] + row["n"])
        faces = [Face(b, float(s_), lm) for b, s_, lm in zip(sh["boxes"][sl], sh["scores"][sl], sh["landmarks"][sl])]
        return CachedImage(key, row["width"], row["height"], faces, sh["aligned"][sl], sh["grey48"][sl])


def default_cache_root() -> Path:
    """``$GROUPMOOD_HOME/face_cache``."""
    from ..weights import home

    return home() / "face_cache"


def detected_crops(paths: Sequence[str | Path], aligned: bool, root: str | Path | None = None,
                   workers: int = 1, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The largest detected face of each image, as our pipeline crops it at inference.

    Returns (crops of the images with a face: (M, 112, 96, 3) aligned or (M, 48, 48) grey,
    boolean mask (N,) of the images where MTCNN found a face). Builds the cache as needed.
    """
    cache = FaceCache(root or default_cache_root())
    report = cache.build(paths, workers=workers, progress=progress)
    if report.errors:
        raise ImageLoadError(report.errors[0].path, f"{report.errors[0].reason} "
                             f"({len(report.errors)} unreadable file(s) in the dataset)")
    found = np.zeros(len(paths), bool)
    crops = []
    for i, p in enumerate(paths):
        entry = cache.get(p)
        if entry.faces:
            k = entry.largest()
            crops.append(entry.aligned[k] if aligned else entry.grey48[k])
            found[i] = True
    shape = (0, 112, 96, 3) if aligned else (0, 48, 48)
    return (np.stack(crops) if crops else np.zeros(shape, np.uint8)), found
