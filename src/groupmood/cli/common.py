"""Options and helpers shared by the subcommands that read photos."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import click

from ..detect import FaceDetector
from ..images import DEFAULT_MAX_PIXELS, iter_image_paths


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


class JsonlSink:
    """JSON Lines output: to stdout, or to FILE through FILE.partial, renamed when complete.

    With ``resume``, records already in the partial (or finished) file are kept and their files
    are reported by :attr:`done` so the caller skips them.
    """

    def __init__(self, path: str | None, resume: bool = False) -> None:
        self.path = Path(path) if path and path != "-" else None
        self.done: set[str] = set()
        self._fh: IO[str]
        if self.path is None:
            self._fh = sys.stdout
            return
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            src = self.partial if self.partial.exists() else self.path
            if src.exists():
                lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
                kept = []
                for ln in lines:
                    try:
                        rec = json.loads(ln)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash: its file is done again
                    kept.append(ln)
                    self.done.add(rec.get("file", ""))
                self.partial.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        elif self.partial.exists():
            self.partial.unlink()
        self._fh = open(self.partial, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self, complete: bool = True) -> None:
        if self.path is None:
            return
        self._fh.close()
        if complete:
            os.replace(self.partial, self.path)
