"""``groupmood predict``: the group label of each photo, with annotated images and an HTML report."""
from __future__ import annotations

import csv
import dataclasses
import io
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, display_path
from ..paths import path_key
from ..fusion import ABSTAIN, parse_weights, pooling_name, preset_weights
from ..io import csv_text_cell, csv_text_value, write_image
from ..labels import GROUP_CLASSES
from ..pipeline import SHIPPED_BUNDLE_HELP, Bundle, GroupEmotionRecognizer, default_bundle_path
from ..report import HtmlReport, annotate, describe_fusion
from ..runtime.session import resolve_backend
from ..shard import PredictShards, shard_option
from ..weights import sha256_file
from .common import (JsonlSink, PartialFileSink, build_detector, collect_paths, complete_lines, detector_options,
                     output_names, output_stems, refuse_outputs_over_inputs, resume_note, run_photos)


def fusion_options(fn: Any) -> Any:
    """``--weights`` / ``--preset`` / ``--pooling`` overrides of a bundle's fusion."""
    opts = [
        click.option("--weights", "weights_text", default=None,
                     help="Fusion weights, e.g. aligned=3,global=0.5,nonaligned=0.5 (branches left out get 0)."),
        click.option("--preset", default=None,
                     help="Weights of a published run: run1 .. run7 (weights only; the runs' models differ)."),
        click.option("--pooling", default=None,
                     help="Face pooling for every face branch: all, or topK (e.g. top3). Default: the bundle's."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def load_recognizer(bundle: str | Bundle | None, device: str, detector: Any, weights_text: str | None,
                    preset: str | None, pooling: str | None, backend: str = "auto",
                    all_branches: bool = False) -> GroupEmotionRecognizer:
    """The recognizer of ``bundle`` (default: the shipped one) with the CLI's fusion overrides, run by
    ``backend`` (``auto``: ONNX Runtime on a CPU, PyTorch on a GPU). Branches that do not vote are loaded only
    for ``all_branches`` or other weights."""
    if weights_text and preset:
        raise click.UsageError("give --weights or --preset, not both")
    try:
        backend = resolve_backend(backend, device)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from None
    load = "all" if all_branches or weights_text or preset else "voting"
    rec = GroupEmotionRecognizer.from_bundle(bundle if isinstance(bundle, Bundle) else Bundle.load(bundle),
                                             device=device, detector=detector, backend=backend, load=load)
    weights = None
    if weights_text:
        weights = parse_weights(weights_text, rec.branches)
    elif preset:
        weights = preset_weights(preset, rec.branches)
    if weights is not None or pooling is not None:
        rec = rec.with_fusion(weights, pooling)
    return rec


class CsvSink(PartialFileSink):
    """CSV output with one row per photo, to stdout or FILE (through FILE.partial, like JSON Lines).

    The text cells (``file``, ``error``) never start a formula when the file is opened in a
    spreadsheet: one that would (a photo named ``=HYPERLINK(...).jpg``) gets a leading ``'``
    (:func:`~groupmood.io.csv_text_cell`), which a resume reads back as the name.
    """

    def __init__(self, path: str | None, branches: Sequence[str], resume: bool = False,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.columns = ["file", "label", *GROUP_CLASSES, "n_faces", "no_face"]
        for b in branches:
            self.columns += [f"{b}_spoke", *(f"{b}_{c}" for c in GROUP_CLASSES)]
        self.columns.append("error")
        super().__init__(path, resume, settings)
        self._writer = csv.writer(self._fh, lineterminator="\n")

    def _rows_text(self, rows: Sequence[Sequence[str]]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    def header(self) -> str:
        return self._rows_text([self.columns])

    def _read_back(self, text: str, src: Path) -> str:
        whole = "".join(ln + "\n" for ln in complete_lines(text))  # a row cut by a kill is done again
        rows = list(csv.reader(io.StringIO(whole)))
        if rows and rows[0] != self.columns:
            raise ConfigError(f"{display_path(src)} has other columns than this run writes; resume with the same "
                              "bundle or write to a new file")
        kept = []
        for r in rows[1:]:
            if len(r) != len(self.columns):
                continue
            if r[-1]:
                self.retried += 1  # failed before: tried again
                continue
            kept.append(r)
            self.done.add(path_key(csv_text_value(r[0])))
        return self._rows_text([self.columns, *kept])

    def write(self, record: Mapping[str, Any]) -> None:
        row: dict[str, Any] = {"file": csv_text_cell(record["file"]), "error": csv_text_cell(record.get("error", ""))}
        if "label" in record:
            row.update(label=record["label"], n_faces=record["n_faces"], no_face=int(record["no_face"]))
            row.update(record["probs"])
            for b, br in record["branches"].items():
                row[f"{b}_spoke"] = int(br["spoke"])
                row.update({f"{b}_{c}": v for c, v in br["probs"].items()})
        self._writer.writerow([row.get(c, "") for c in self.columns])
        self._fh.flush()


def run_settings(rec: GroupEmotionRecognizer, bundle: Bundle, all_branches: bool) -> dict[str, Any]:
    """What makes a run's records, kept beside its output so that a resume with other settings is refused:
    the bundle (path and sha256 of its YAML), fusion weights, pooling, fallback and detector settings."""
    path = bundle.path or default_bundle_path()
    try:
        digest = sha256_file(path)
    except OSError:
        digest = None
    return {"bundle": display_path(path.resolve()), "bundle_sha256": digest,
            "weights": {n: float(w) for n, w in rec.weights.items()},
            "pooling": {n: pooling_name(b.top_k) for n, b in rec.branches.items() if b.is_face},
            "fallback": list(rec.fallback), "min_faces": int(rec.min_faces),
            "detector": {k: v for k, v in dataclasses.asdict(rec.detector.settings).items() if k != "chunk_size"},
            "all_branches": bool(all_branches)}


def build_recognizer(bundle: str | Path | None, device: str, backend: str = "auto",
                     all_branches: bool = False) -> GroupEmotionRecognizer:
    """The recognizer ``groupmood predict --bundle BUNDLE --device DEVICE`` uses, detector settings included.

    The detector settings are predict's: its option defaults, then the bundle's ``detector:``
    section. ``groupmood serve`` and ``benchmarks/predict.py`` build theirs here, so that they run
    what predict runs.
    """
    d = {p.name: p.default for p in predict_cmd.params}
    spec = Bundle.load(bundle)
    detector = build_detector(device, d["min_face_frac"], d["min_face_px"], d["thresholds"], d["factor"],
                              d["mtcnn_weights"], spec, backend=backend)
    return load_recognizer(spec, device, detector, None, None, None, backend, all_branches)


# --------------------------------------------------------------------------- command

@click.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--bundle", default=None, type=click.Path(dir_okay=False),
              help="Bundle YAML (models + fusion weights), or a shipped bundle by name: "
                   + "; ".join(f"{k} ({v})" for k, v in SHIPPED_BUNDLE_HELP.items()) + ".")
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file (written atomically when complete), or - for stdout.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--resume", is_flag=True, help="Skip photos already in --output (or its .partial file).")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False),
              help="Write each photo with faces coloured by label and the group decision into this folder.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write one self-contained HTML page with every photo of this run and its evidence.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto", show_default=True,
              help="What runs the models: onnxruntime (CPU; models exported once into the cache and checked "
                   "against PyTorch), torch; auto: onnxruntime on a CPU where it is installed, torch on a GPU.")
@click.option("--all-branches", is_flag=True,
              help="Also run and report the branches with weight 0 (skipped by default: they change no label), "
                   "and the fallback branch on every photo (by default only where no weighted branch speaks).")
@fusion_options
@detector_options
@shard_option
def predict_cmd(inputs: tuple[str, ...], bundle: str | None, output: str, fmt: str, resume: bool,
                annotate_dir: str | None, report_path: str | None, backend: str, all_branches: bool,
                weights_text: str | None,
                preset: str | None,
                pooling: str | None, device: str, batch_size: int, min_face_frac: float | None,
                min_face_px: float | None,
                thresholds: tuple[float, float, float] | None, factor: float | None, mtcnn_weights: str | None,
                max_pixels: int, progress: bool) -> int:
    """Label the group emotion (Negative / Neutral / Positive) of each photo in INPUTS.

    INPUTS are files, folders (searched recursively) and globs. One record per photo: label, fused
    probabilities, each branch's probabilities, weight and whether it spoke, and each face's box,
    landmarks and probabilities. Unreadable files are reported and skipped; the exit status is
    then 1.
    """
    paths = collect_paths(inputs)
    names = output_names(paths)
    stems = output_stems(paths)
    shards = PredictShards.from_context(paths, output, fmt)  # --shard I/N or torchrun: this job's photos
    paths, output, device = shards.paths, shards.output, shards.device(device)
    report_path = shards.suffixed(report_path)
    refuse_outputs_over_inputs(paths, {"-o": output, "--report": report_path}, {"--annotate": {
        p: Path(annotate_dir) / s.with_name(s.name + ".jpg") for p, s in stems.items()} if annotate_dir else {}})
    spec = Bundle.load(bundle)
    detector = build_detector(device, min_face_frac, min_face_px, thresholds, factor, mtcnn_weights, spec,
                              backend=backend)
    rec = load_recognizer(spec, device, detector, weights_text, preset, pooling, backend, all_branches)
    settings = run_settings(rec, spec, all_branches)
    sink: JsonlSink | CsvSink = (CsvSink(output, list(rec.active_branches(all_branches)), resume, settings)
                                 if fmt == "csv" else JsonlSink(output, resume=resume, settings=settings))
    todo = [p for p in paths if not sink.is_done(p)]
    counts: Counter[str] = Counter()
    n_faces = 0
    report = HtmlReport() if report_path else None

    order = {p: i for i, p in enumerate(todo)}
    lock = threading.Lock()

    def handle(good: list[tuple[Path, Any]]) -> list[dict]:  # thread-safe: photos may come on several threads
        nonlocal n_faces
        records = []
        for (path, img), res in zip(good, rec.predict([img for _, img in good], all_branches=all_branches)):
            with lock:
                n_faces += len(res.faces)
                counts[res.label] += 1
            records.append({"file": display_path(path), **res.to_dict()})
            if annotate_dir:
                stem = stems[path]
                write_image(Path(annotate_dir) / stem.with_name(stem.name + ".jpg"), annotate(img, res))
            if report is not None:
                report.add(display_path(names[path]), img, res, order[path])
        return records

    # pictures for people are drawn on the full photo; otherwise decode only the pixels the models need
    draft = None if annotate_dir or report is not None else rec.decode_short_side(all_branches)
    # on a CPU under ONNX Runtime photos flow through one per core (GroupEmotionRecognizer.photo_workers)
    run = run_photos(todo, batch_size, max_pixels, sink, progress, handle, draft, rec.photo_workers())
    labels = ", ".join(f"{c} {counts[c]}" for c in (*GROUP_CLASSES, ABSTAIN) if counts[c])
    summary = run.summary(n_faces, (f"; {labels}" if labels else "")
                          + (resume_note(sink, len(paths), len(todo)) if resume else ""))
    if report is not None:
        report.write(report_path, summary, describe_fusion(rec, spec.path or default_bundle_path()), run.failed)
    click.echo(summary, err=True)
    shards.finish()
    return 1 if run.failed else 0
