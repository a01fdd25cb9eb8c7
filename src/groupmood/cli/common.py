"""Options and helpers shared by the subcommands that read photos."""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from tqdm import tqdm

from ..detect import FaceDetector
from ..detect.cascade import CascadeSettings
from ..errors import ConfigError, DiskFullError, ImageLoadError, OutputError, display_path
from ..images import DEFAULT_MAX_PIXELS, load_in_order, load_photo
from ..paths import file_kind, iter_image_paths, path_key
from ..io import RunLock, atomic_write, atomic_write_text, is_disk_full, output_target

if TYPE_CHECKING:
    from ..pipeline import Bundle


def detector_options(fn: Callable) -> Callable:
    """Add the MTCNN settings (authors' defaults) and the input-reading options to a command."""
    authors = CascadeSettings()
    opts = [
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1),
                     help="Photos per detector call."),
        click.option("--min-face-frac", default=None, type=click.FloatRange(0, 1),
                     help="Smallest face searched, as a fraction of the photo's shorter side "
                          f"[default: the bundle's, else {authors.min_face_frac:g}]."),
        click.option("--min-face-px", default=None, type=click.FloatRange(1), help="Smallest face in pixels "
                     "(overrides --min-face-frac)."),
        click.option("--thresholds", default=None, nargs=3, type=float,
                     help="P-Net, R-Net, O-Net score thresholds [default: the bundle's, else "
                          f"{' '.join(f'{t:g}' for t in authors.thresholds)}]."),
        click.option("--factor", default=None, type=click.FloatRange(0.1, 0.95),
                     help=f"Image pyramid scale factor [default: the bundle's, else {authors.factor:g}]."),
        click.option("--mtcnn-weights", "mtcnn_weights", default=None, type=click.Path(file_okay=False),
                     help="Folder with pnet.pt, rnet.pt, onet.pt (default: the weight cache)."),
        click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1),
                     help="Refuse images larger than this (decompression-bomb guard)."),
        click.option("--progress/--no-progress", default=True, help="Show a progress bar."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def check_device(device: str) -> str:
    """``device`` if torch can run on it here; a usage error that says what to use otherwise."""
    if device == "cpu":  # always there; and the ONNX Runtime path never imports torch
        return device
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"{device!r} is not a torch device; use cpu, cuda or cuda:N",
                                 param_hint="--device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r} asked for, but torch sees no CUDA device here; use --device cpu",
                                 param_hint="--device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise click.BadParameter(f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                                 param_hint="--device")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise click.BadParameter(f"{device!r} asked for, but torch sees no MPS device here; use --device cpu",
                                 param_hint="--device")
    return device


def detector_settings(min_face_frac: float | None, min_face_px: float | None, thresholds: Sequence[float] | None,
                      factor: float | None, bundle: str | Path | Bundle | None = None,
                      use_bundle: bool = True) -> dict[str, Any]:
    """MTCNN settings: the authors', then the bundle's ``detector:`` section, then what the command line sets.

    ``bundle`` None means the shipped bundle (where it exists); ``use_bundle=False`` (``detect``, which
    has no bundle) skips that layer.
    """
    from ..pipeline import Bundle, bundle_path

    out: dict[str, Any] = {}
    if use_bundle:
        if isinstance(bundle, Bundle):
            out.update(bundle.detector_overrides())
        elif bundle_path(bundle).is_file():
            out.update(Bundle.load(bundle).detector_overrides())
    given = {"min_face_frac": min_face_frac, "min_face_px": min_face_px,
             "thresholds": None if thresholds is None else tuple(thresholds), "factor": factor}
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def build_detector(device: str, min_face_frac: float | None, min_face_px: float | None,
                   thresholds: Sequence[float] | None, factor: float | None, mtcnn_weights: str | None,
                   bundle: str | Path | Bundle | None = None, use_bundle: bool = True,
                   backend: str = "torch") -> FaceDetector:
    """The MTCNN detector from the weight cache (fetched on first use); settings as :func:`detector_settings`.

    ``backend`` ``onnxruntime`` (``auto`` on a CPU) runs P-, R- and O-Net from the ONNX cache (exported on first use).
    """
    from ..runtime.session import resolve_backend

    device = check_device(device)
    try:
        backend = resolve_backend(backend, device)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from None
    return FaceDetector.from_pretrained(
        device=device, weights_dir=mtcnn_weights, auto_fetch=mtcnn_weights is None, backend=backend,
        **detector_settings(min_face_frac, min_face_px, thresholds, factor, bundle, use_bundle))


def collect_paths(inputs: Sequence[str]) -> list[Path]:
    """Expand the PATH arguments (notes such as an empty folder go to stderr); none is a usage error."""
    notes: list[str] = []
    paths = list(iter_image_paths(inputs, notes))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if not paths:
        raise click.UsageError("no input images found in the given paths")
    return paths


def output_names(paths: Sequence[Path]) -> dict[Path, Path]:
    """Relative output names that mirror the inputs below their common folder (unique per input)."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    parents = [str(p.parent) for p in absolute]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    return {p: a.relative_to(root) for p, a in zip(paths, absolute)}


def output_stems(paths: Sequence[Path]) -> dict[Path, Path]:
    """Relative names without extension for files made per input (``--annotate``, ``--crops``), unique.

    ``a.jpg`` gives ``a``; when two inputs of one folder share a stem (``a.jpg`` and ``a.png``) both
    keep their extension (``a.jpg``, ``a.png``), and a clash left after that gets ``-2``, ``-3``.
    Names are compared without case, so that they are unique on any file system.
    """
    rel = output_names(paths)
    stems = {p: r.with_name(r.stem) if r.suffix else r for p, r in rel.items()}
    counts = Counter(str(s).lower() for s in stems.values())
    stems = {p: (rel[p] if counts[str(s).lower()] > 1 else s) for p, s in stems.items()}
    taken: set[str] = set()
    out = {}
    for p, s in stems.items():
        name, k = s, 1
        while str(name).lower() in taken:
            k += 1
            name = s.with_name(f"{s.name}-{k}")
        taken.add(str(name).lower())
        out[p] = name
    return out


def refuse_outputs_over_inputs(paths: Sequence[Path], files: Mapping[str, str | Path | None],
                               per_photo: Mapping[str, Mapping[Path, Path]] | None = None) -> None:
    """An :class:`OutputError` when an output file would replace an input photo.

    ``files`` are single outputs by option (``{"-o": "preds.jsonl", "--report": ...}``, None or ``-``
    for none); ``per_photo`` the files an option writes for each photo (``--annotate``). Paths are
    compared after symlinks are resolved (:func:`~groupmood.paths.path_key`).
    """
    inputs = {path_key(p): p for p in paths}
    for option, target in files.items():
        if target is None or str(target) == "-":
            continue
        hit = inputs.get(path_key(output_target(target)[0]))
        if hit is not None:
            raise OutputError(f"{option} {display_path(target)} is one of the input photos ({display_path(hit)}); "
                              "writing it would replace the photo: choose another output file")
    for option, made in (per_photo or {}).items():
        for photo, out in made.items():
            hit = inputs.get(path_key(out))
            if hit is not None:
                raise OutputError(f"{option} would write {display_path(out)} (for {display_path(photo)}) over the "
                                  f"input photo {display_path(hit)}; choose a folder that holds no input photos")


class PartialFileSink:
    """An output file written through FILE.partial and renamed to FILE when the run completes.

    ``path`` ``None`` or ``-`` means stdout. A symlink is followed (the real file is written, the link
    stays); a FIFO or device (``/dev/null``) is written directly, never replaced. With ``resume``
    the records of a stopped run (FILE.partial, else FILE) are read back: photos done are in
    :attr:`done` (keyed by :func:`~groupmood.paths.path_key`), and records of photos that failed
    are dropped so those photos are tried again. The kept records go into a new FILE.partial that
    replaces the old one only once it is on disk, so a kill at any moment loses nothing.
    Subclasses give the header, read records back and write them.

    One run at a time writes FILE: a second run on the same file (with or without ``resume``) is
    refused, naming the process that writes it (a lock beside FILE, :class:`~groupmood.io.RunLock`).
    ``settings`` (what makes the records, e.g. the bundle and the fusion weights) are kept beside
    FILE in ``FILE.settings.json``; a resume with other settings is refused.
    """

    def __init__(self, path: str | None, resume: bool = False, settings: Mapping[str, Any] | None = None) -> None:
        self.done: set[str] = set()
        self.retried = 0
        self.path: Path | None = None
        self.partial: Path | None = None
        self._lock: RunLock | None = None
        self._fh: IO[str] = sys.stdout
        if path is None or path == "-":
            if resume:
                raise click.UsageError("--resume reads back what a stopped run wrote to -o FILE; it cannot "
                                       "resume output to stdout: give -o FILE")
            self._write_header()
            return
        real, regular = output_target(path)
        try:
            if real.is_dir():
                raise OutputError(f"-o {display_path(path)} is a folder; give a file name")
            if not regular:
                if resume:
                    raise click.UsageError(f"--resume needs -o to name a regular file; {display_path(path)} is "
                                           f"{file_kind(real.stat().st_mode)}")
                self._fh = open(real, "w", encoding="utf-8", newline="")
                self._write_header()
                return
            real.parent.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(real.with_name(f".{real.name}.lock"))
            if not self._lock.acquire():
                holder, self._lock = self._lock.holder(), None
                raise OutputError(f"-o {display_path(path)} is being written by another run ({holder}); wait for "
                                  "it to finish (--resume then continues it) or write to another file")
            self.path = real
            self.partial = real.with_name(real.name + ".partial")
            src = self.previous() if resume else None
            if settings is not None:
                self._check_settings(real, dict(settings), src)
            text = src.read_bytes().decode("utf-8", "replace") if src is not None else ""
            kept = self._read_back(text, src) if src is not None else self.header()
            with atomic_write(self.partial, "w", durable=True) as fh:
                fh.write(kept)
            self._fh = open(self.partial, "a", encoding="utf-8", newline="")
        except OSError as exc:
            self._release()
            if is_disk_full(exc):
                raise DiskFullError(f"cannot write -o {display_path(path)}: {exc.strerror}; free some space and "
                                    "run the command again") from None
            raise OutputError(f"cannot write -o {display_path(path)}: {exc.strerror or exc}; choose another "
                              "output file or folder") from None
        except BaseException:
            self._release()
            raise

    @staticmethod
    def _check_settings(real: Path, settings: dict[str, Any], src: Path | None) -> None:
        """Refuse to resume ``src`` when it was written with other settings; record this run's beside ``real``."""
        sidecar = real.with_name(real.name + ".settings.json")
        now = json.loads(json.dumps(settings))  # tuples as lists, as they come back from the file
        if src is not None:
            try:
                before = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                before = None  # an output of an older version, or one whose settings file was removed
            if isinstance(before, dict) and before != now:
                keys = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
                shown = "; ".join(f"{k}: {json.dumps(before.get(k))} then, {json.dumps(now.get(k))} now"
                                  for k in keys)
                raise ConfigError(f"{display_path(src)} was written with other settings ({shown}); resume with the "
                                  "options of that run (--bundle, --weights, --preset, --pooling, detector "
                                  "options) or write to a new file")
        atomic_write_text(sidecar, json.dumps(now, indent=1, sort_keys=True) + "\n")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _write_header(self) -> None:
        self._fh.write(self.header())
        self._fh.flush()

    def header(self) -> str:
        """The text a new output file starts with."""
        return ""

    def _read_back(self, text: str, src: Path) -> str:
        """Parse a stopped run's output; fill :attr:`done`; return the text to keep (header included)."""
        raise NotImplementedError

    def is_done(self, path: Path) -> bool:
        """Whether a resumed run already has a record of ``path`` (under any spelling of it)."""
        return path_key(path) in self.done

    def previous(self) -> Path | None:
        """The file a resumed run continues: the partial one, else a finished one, else None."""
        if self.path is None or self.partial is None:
            return None
        src = self.partial if self.partial.exists() else self.path
        return src if src.exists() else None

    def write(self, record: dict) -> None:
        raise NotImplementedError

    def close(self, complete: bool = True) -> None:
        """Close; when the run completed, move the partial file into place. The lock goes in any case.

        A run that did not complete closes quietly: a full disk that made it stop cannot also make
        the close fail (the records already flushed are in the partial file).
        """
        try:
            if self._fh is sys.stdout:
                self._fh.flush()
                return
            try:
                self._fh.close()
            except OSError:
                if complete:
                    raise
            if complete and self.partial is not None and self.path is not None:
                os.replace(self.partial, self.path)
        finally:
            self._release()


def complete_lines(text: str) -> list[str]:
    """The lines of ``text`` that end with a newline: a last line cut by a kill is left out."""
    lines = text.split("\n")
    return lines[:-1]


class JsonlSink(PartialFileSink):
    """JSON Lines output; with ``resume``, records already written are kept and their files skipped.

    A resume refuses a file that holds CSV (or nothing that reads as JSON Lines), and a record whose
    ``file`` is not a name: it never drops another run's rows.
    """

    def _read_back(self, text: str, src: Path) -> str:
        kept = []
        lines = complete_lines(text)
        if lines and lines[0].startswith("file,"):
            raise ConfigError(f"{display_path(src)} holds CSV (its first line is the CSV header); resume it with "
                              "--format csv, or write JSON Lines to a new file")
        parsed = 0
        for n, ln in enumerate(lines, 1):
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                continue  # a line damaged by a crash: its file is done again
            parsed += 1
            if not isinstance(rec, dict) or "file" not in rec:
                continue
            if not isinstance(rec["file"], str):
                raise ConfigError(f"{display_path(src)} line {n}: \"file\" is {json.dumps(rec['file'])}, not a "
                                  "file name; this is not an output of this command: fix or remove the line, "
                                  "or write to a new file")
            if "error" in rec:
                self.retried += 1  # failed before: tried again
                continue
            kept.append(ln + "\n")
            self.done.add(path_key(rec["file"]))
        if lines and not parsed:
            raise ConfigError(f"{display_path(src)} holds no JSON Lines (its first line: {lines[0][:60]!r}); resume "
                              "only an output of this command (with its --format), or write to a new file")
        return "".join(kept)

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


def resume_note(sink: PartialFileSink, n_paths: int, n_todo: int) -> str:
    """The summary's words on what a resumed run found done and tried again."""
    note = f"; already done: {n_paths - n_todo}"
    if sink.retried:
        note += f" (failed before and tried again: {sink.retried})"
    return note


#: What labelling one photo may fail with that concerns that photo alone (``MemoryError``: an image
#: too large for this machine's memory); :func:`run_photos` reports the photo and goes on.
PHOTO_FAILURES: tuple[type[BaseException], ...] = (MemoryError, ValueError)


def _failed(path: Path, exc: BaseException) -> ImageLoadError:
    """The error record of a photo that could not be labelled."""
    what = "not enough memory" if isinstance(exc, MemoryError) else f"{type(exc).__name__}: {exc}"
    return ImageLoadError(path, f"could not be labelled ({what}); the other photos went on")


def run_photos(paths: Sequence[Path], batch_size: int, max_pixels: int, sink: PartialFileSink, progress: bool,
               handle: Callable[[list[tuple[Path, Any]]], list[dict]], min_short_side: int | None = None,
               workers: int = 1) -> PhotoRun:
    """Load photos and pass the readable ones to ``handle``; report, record and skip the rest.

    With one worker, photos go to ``handle`` in batches that end at ``batch_size`` photos or at the
    loader's pixel budget (:func:`~groupmood.images.load_in_order`). With ``workers`` > 1, each
    photo is decoded and handled on its own in one of ``workers`` threads (so ``handle`` must be
    thread-safe), photos flowing through without waiting for a batch to finish; at most
    ``max(batch_size, workers)`` photos are queued, and only the ``workers`` being worked on are
    decoded at any time. With ``min_short_side`` photos come as :class:`~groupmood.images.Photo`
    objects decoded at a reduced size that keeps that many pixels.

    ``handle`` returns one record per photo it was given; records are written in input order, each
    unreadable file's error record in its place. A photo that ``handle`` fails on with one of
    :data:`PHOTO_FAILURES` (a batch that fails is handled again photo by photo to find it) gets an
    error record too: one photo never stops the run. The sink is completed when every photo was
    seen and left partial (resumable) on any exception; a full disk is a :class:`DiskFullError`
    that says where the finished records are.
    """
    run = PhotoRun()
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="photo", disable=not progress, file=sys.stderr)

    def write(batch: list[tuple[Path, Any]], records: list[dict]) -> None:
        done = iter(records)
        for _, x in batch:
            if isinstance(x, ImageLoadError):
                tqdm.write(f"skipped {x}", file=sys.stderr)
                sink.write({"file": x.path, "error": x.reason})
                run.failed.append((x.path, x.reason))
            else:
                sink.write(next(done))
                run.ok += 1
        bar.update(len(batch))

    def one(path: Path) -> tuple[list[tuple[Path, Any]], list[dict]]:
        try:
            photo = load_photo(path, max_pixels, min_short_side)
        except ImageLoadError as exc:
            return [(path, exc)], []
        item = (path, photo if min_short_side else photo.pixels)
        try:
            return [item], handle([item])
        except PHOTO_FAILURES as exc:
            return [(path, _failed(path, exc))], []

    def handled(batch: list[tuple[Path, Any]]) -> tuple[list[tuple[Path, Any]], list[dict]]:
        good = [(p, x) for p, x in batch if not isinstance(x, ImageLoadError)]
        if not good:
            return batch, []
        try:
            return batch, handle(good)
        except PHOTO_FAILURES as exc:
            if len(good) == 1:
                return [(p, _failed(p, exc) if x is good[0][1] else x) for p, x in batch], []
        out, records = [], []  # find the photo: each on its own
        for p, x in batch:
            if not isinstance(x, ImageLoadError):
                try:
                    records.extend(handle([(p, x)]))
                except PHOTO_FAILURES as exc:
                    x = _failed(p, exc)
            out.append((p, x))
        return out, records

    try:
        if workers <= 1:
            for batch in load_in_order(paths, batch_size, max_pixels, min_short_side):
                write(*handled(batch))
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="groupmood-photo")
            try:
                queued: deque[Future] = deque()
                for path in paths:
                    queued.append(pool.submit(one, path))
                    while len(queued) >= max(batch_size, workers):
                        write(*queued.popleft().result())
                while queued:
                    write(*queued.popleft().result())
            finally:  # on an error or Ctrl-C: photos not started are dropped, the ones in work finish
                pool.shutdown(wait=True, cancel_futures=True)
    except BaseException as exc:
        sink.close(complete=False)
        if is_disk_full(exc):
            name = getattr(exc, "filename", None) or sink.path
            where = display_path(name) if name else "the output"
            if sink.partial is None:
                raise DiskFullError(f"no space left on device writing {where}; free some space and run the command "
                                    "again") from None
            raise DiskFullError(f"no space left on device writing {where}; the records finished so far ("
                                f"{run.ok + len(run.failed)} in this run) are kept in {display_path(sink.partial)}: "
                                "free some space and run the same command with --resume to continue") from None
        raise
    finally:
        bar.close()
    sink.close()
    run.seconds = time.perf_counter() - start
    return run
