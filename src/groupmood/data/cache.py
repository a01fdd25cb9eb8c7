"""Face cache: detection, landmarks and both crops computed once per image, stored in shards.

Training and evaluation read the same crops as inference makes, without running MTCNN each epoch.
An image is keyed by the sha256 of its bytes, so renamed or copied files hit the cache and an
edited file misses it. The cache folder is named after the detector and crop settings, so other
settings never read stale crops. Each shard (``shard-XXXXX.npz``) is written atomically and only
then listed in ``index.jsonl``; an interrupted build resumes from the last finished shard.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..align import align_faces, square_crops
from ..detect import CascadeSettings, Face, FaceDetector
from ..errors import ImageLoadError
from ..images import DEFAULT_MAX_PIXELS, check_image_file, load_image
from ..io import atomic_write_bytes
from ..weights import sha256_file

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

    def _load_index(self) -> None:
        self._index.clear()
        if not self.index_path.exists():
            return
        text = self.index_path.read_text(encoding="utf-8")
        good = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash; its image is computed again
            if (self.dir / row["shard"]).exists():
                self._index[row["key"]] = row
                good.append(line)
        if text and not text.endswith("\n"):
            atomic_write_bytes(self.index_path, "".join(g + "\n" for g in good).encode())

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _next_shard(self) -> int:
        nums = [int(p.stem.split("-")[1]) for p in self.dir.glob("shard-*.npz")]
        return max(nums, default=-1) + 1

    def _remove_stale_temp_files(self) -> None:
        """Delete the half-written shard files a killed build left (old enough not to be another build's)."""
        now = time.time()
        for tmp in self.dir.glob(".shard-*.tmp"):
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()
            except FileNotFoundError:
                continue

    def build(self, paths: Sequence[str | Path], detector: FaceDetector | None = None,
              shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 1, weights_dir: str | None = None,
              progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> BuildReport:
        """Make sure every readable image in ``paths`` is cached; resumable, optionally in parallel.

        A path that is not a non-empty regular file (a FIFO, a device, a folder) is reported, never
        opened: hashing a FIFO would wait for ever.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
        meta = self.dir / "settings.json"
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps({"settings": asdict(self.settings), "margin": self.margin,
                                                 "version": CACHE_VERSION}, indent=2).encode())
        report = BuildReport()
        todo: dict[str, str] = {}
        for p in paths:
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
        items = list(todo.items())
        first = self._next_shard()
        chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
        outs = [str(self.dir / f"shard-{first + k:05d}.npz") for k in range(len(chunks))]
        bar = tqdm(total=len(items), unit="img", desc="face cache", disable=not progress)
        for chunk, (rows, errors) in zip(chunks, self._run(chunks, outs, detector, workers, weights_dir,
                                                           max_pixels)):
            with open(self.index_path, "a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                    self._index[row["key"]] = row
                f.flush()
                os.fsync(f.fileno())
            report.computed += len(rows)
            report.faces += sum(r["n"] for r in rows)
            report.errors.extend(ImageLoadError(p, reason) for p, reason in errors)
            bar.update(len(chunk))
        bar.close()
        return report

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
