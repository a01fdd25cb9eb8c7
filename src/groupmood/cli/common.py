"""Options and helpers shared by the subcommands that read photos."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import click
import numpy as np
from tqdm import tqdm

from ..detect import FaceDetector
from ..images import DEFAULT_MAX_PIXELS, iter_image_paths, load_batches


def detector_options(fn: Callable) -> Callable:
    """Add the MTCNN settings (authors' defaults) and the input-reading options to a command."""
    opts = [
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1),
                     help="Photos per detector call."),
        click.option("--min-face-frac", default=0.05, show_default=True, type=click.FloatRange(0, 1),
                     help="Smallest face searched, as a fraction of the photo's shorter side."),
        click.option("--min-face-px", default=None, type=click.FloatRange(1), help="Smallest face in pixels "
                     "(overrides --min-face-frac)."),
        click.option("--thresholds", default=(0.6, 0.7, 0.9), show_default=True, nargs=3, type=float,
                     help="P-Net, R-Net, O-Net score thresholds."),
        click.option("--factor", default=0.709, show_default=True, type=click.FloatRange(0.1, 0.95),
                     help="Image pyramid scale factor."),
        click.option("--mtcnn-weights", "mtcnn_weights", default=None, type=click.Path(file_okay=False),
                     help="Folder with pnet.pt, rnet.pt, onet.pt (default: the weight cache)."),
        click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1),
                     help="Refuse images larger than this (decompression-bomb guard)."),
        click.option("--progress/--no-progress", default=True, help="Show a progress bar."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def build_detector(device: str, min_face_frac: float, min_face_px: float | None,
                   thresholds: Sequence[float], factor: float, mtcnn_weights: str | None) -> FaceDetector:
    """The MTCNN detector from the weight cache (fetched on first use) with the CLI's settings."""
    return FaceDetector.from_pretrained(
        device=device, weights_dir=mtcnn_weights, auto_fetch=mtcnn_weights is None,
        thresholds=tuple(thresholds), factor=factor, min_face_frac=min_face_frac, min_face_px=min_face_px)


def collect_paths(inputs: Sequence[str]) -> list[Path]:
    """Expand the PATH arguments; an empty result is a usage error."""
    paths = list(iter_image_paths(inputs))
    if not paths:
        raise click.UsageError("no input images found in the given paths")
    return paths


def output_names(paths: Sequence[Path]) -> dict[Path, Path]:
    """Relative output names that mirror the inputs below their common folder (unique per input)."""
    absolute = [p.resolve() for p in paths]
    parents = [str(p.parent) for p in absolute]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    return {p: a.relative_to(root) for p, a in zip(paths, absolute)}


class PartialFileSink:
    """An output file written through FILE.partial and renamed to FILE when the run completes.

    Subclasses read back what a stopped run wrote (``resume``) into :attr:`done` and write records.
    ``path`` ``None`` or ``-`` means stdout.
    """

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path and path != "-" else None
        self.done: set[str] = set()
        self._fh: IO[str] = sys.stdout
        if self.path is not None:
            self.partial = self.path.with_name(self.path.name + ".partial")
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def previous(self) -> Path | None:
        """The file a resumed run continues: the partial one, else a finished one, else None."""
        if self.path is None:
            return None
        src = self.partial if self.partial.exists() else self.path
        return src if src.exists() else None

    def write(self, record: dict) -> None:
        raise NotImplementedError

    def close(self, complete: bool = True) -> None:
        """Close; when the run completed, move the partial file into place."""
        if self.path is None:
            return
        self._fh.close()
        if complete:
            os.replace(self.partial, self.path)


class JsonlSink(PartialFileSink):
    """JSON Lines output; with ``resume``, records already written are kept and their files skipped."""

    def __init__(self, path: str | None, resume: bool = False) -> None:
        super().__init__(path)
        if self.path is None:
            return
        kept = []
        src = self.previous() if resume else None
        if src is not None:
            for ln in src.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: its file is done again
                kept.append(ln)
                self.done.add(rec.get("file", ""))
        self._fh = open(self.partial, "w", encoding="utf-8")
        self._fh.write("".join(k + "\n" for k in kept))
        self._fh.flush()

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()


@dataclass
class PhotoRun:
    """What a pass over photos did: photos handled, unreadable files (path, reason), seconds."""

    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, faces: int, extra: str = "") -> str:
        n = self.ok + len(self.failed)
        return (f"{self.ok} photos, {faces} faces, {len(self.failed)} failed, {self.seconds:.1f} s "
                f"({self.seconds / max(1, n):.3f} s/photo)" + extra)


def run_photos(paths: Sequence[Path], batch_size: int, max_pixels: int, sink: PartialFileSink, progress: bool,
               handle: Callable[[list[tuple[Path, np.ndarray]]], None]) -> PhotoRun:
    """Load photos in batches and pass the readable ones to ``handle``; report, record and skip the rest.

    The sink is completed when every photo was seen and left partial (resumable) on any exception.
    """
    run = PhotoRun()
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="photo", disable=not progress, file=sys.stderr)
    try:
        for good, bad in load_batches(paths, batch_size, max_pixels):
            for err in bad:
                tqdm.write(f"skipped {err}", file=sys.stderr)
                sink.write({"file": err.path, "error": err.reason})
                run.failed.append((err.path, err.reason))
            if good:
                handle(good)
            run.ok += len(good)
            bar.update(len(good) + len(bad))
    except BaseException:
        sink.close(complete=False)
        raise
    finally:
        bar.close()
    sink.close()
    run.seconds = time.perf_counter() - start
    return run
