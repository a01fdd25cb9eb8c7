"""``groupmood predict``: the group label of each photo, with annotated images and an HTML report."""
from __future__ import annotations

import base64
import csv
import html
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from ..errors import ConfigError
from ..fusion import ABSTAIN, parse_weights, pooling_name, preset_weights
from ..io import atomic_write_text, write_image
from ..labels import GROUP_CLASSES
from ..pipeline import LABEL_COLOURS, GroupEmotionRecognizer, GroupResult, annotate, default_bundle_path
from .common import (JsonlSink, PartialFileSink, build_detector, collect_paths, detector_options, output_names,
                     run_photos)


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


def load_recognizer(bundle: str | None, device: str, detector: Any, weights_text: str | None,
                    preset: str | None, pooling: str | None) -> GroupEmotionRecognizer:
    """The recognizer of ``bundle`` (default: the shipped one) with the CLI's fusion overrides."""
    if weights_text and preset:
        raise click.UsageError("give --weights or --preset, not both")
    rec = (GroupEmotionRecognizer.from_bundle(bundle, device=device, detector=detector) if bundle
           else GroupEmotionRecognizer.default(device=device, detector=detector))
    weights = None
    if weights_text:
        weights = parse_weights(weights_text, rec.branches)
    elif preset:
        weights = preset_weights(preset, rec.branches)
    if weights is not None or pooling is not None:
        rec = rec.with_fusion(weights, pooling)
    return rec


class CsvSink(PartialFileSink):
    """CSV output with one row per photo, to stdout or FILE (through FILE.partial, like JSON Lines)."""

    def __init__(self, path: str | None, branches: Sequence[str], resume: bool = False) -> None:
        super().__init__(path)
        self.columns = ["file", "label", *GROUP_CLASSES, "n_faces", "no_face"]
        for b in branches:
            self.columns += [f"{b}_spoke", *(f"{b}_{c}" for c in GROUP_CLASSES)]
        self.columns.append("error")
        kept: list[list[str]] = []
        src = self.previous() if resume else None
        if src is not None:
            rows = list(csv.reader(io.StringIO(src.read_text(encoding="utf-8"))))
            if rows and rows[0] != self.columns:
                raise ConfigError(f"{src} has other columns than this run writes; resume with the same "
                                  "bundle or write to a new file")
            kept = [r for r in rows[1:] if len(r) == len(self.columns)]
            self.done = {r[0] for r in kept}
        if self.path is not None:
            self._fh = open(self.partial, "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(self.columns)
        self._writer.writerows(kept)
        self._fh.flush()

    def write(self, record: Mapping[str, Any]) -> None:
        row: dict[str, Any] = {"file": record["file"], "error": record.get("error", "")}
        if "label" in record:
            row.update(label=record["label"], n_faces=record["n_faces"], no_face=int(record["no_face"]))
            row.update(record["probs"])
            for b, br in record["branches"].items():
                row[f"{b}_spoke"] = int(br["spoke"])
                row.update({f"{b}_{c}": v for c, v in br["probs"].items()})
        self._writer.writerow([row.get(c, "") for c in self.columns])
        self._fh.flush()


# --------------------------------------------------------------------------- HTML report

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
.photo{display:flex;gap:1.2em;align-items:flex-start;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:1em;margin-bottom:1.2em;flex-wrap:wrap}
.photo img{max-width:480px;height:auto;border-radius:4px}
.info{flex:1;min-width:320px}
h2{font-size:1em;margin:0 0 .4em;word-break:break-all}
.label{font-size:1.3em;font-weight:600;padding:.1em .5em;border-radius:4px;color:#fff;display:inline-block}
.bar{display:flex;align-items:center;gap:.4em;font-size:.85em;margin:.1em 0}
.bar .name{width:5.5em}.bar .track{width:180px;height:.8em;background:#eee;border-radius:3px;overflow:hidden}
.bar .fill{display:block;height:100%}
table{border-collapse:collapse;font-size:.82em;margin-top:.6em}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
.muted{color:#888}.error{color:#b00}
"""


def _hex(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


def _bars(probs: Mapping[str, float]) -> str:
    out = []
    for c, p in probs.items():
        out.append(f'<div class="bar"><span class="name">{html.escape(c)}</span><span class="track">'
                   f'<span class="fill" style="width:{100 * float(p):.1f}%;background:{_hex(LABEL_COLOURS[c])}">'
                   f'</span></span><span>{float(p):.3f}</span></div>')
    return "".join(out)


def _thumbnail(rgb: np.ndarray, max_side: int = 640, quality: int = 80) -> str:
    """A base64 JPEG of the image scaled to at most ``max_side`` pixels."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("OpenCV could not encode a JPEG thumbnail")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def report_entry(name: str, image: np.ndarray, result: GroupResult) -> str:
    """The HTML block of one photo: thumbnail with faces drawn, label, fused and branch bars, faces."""
    rec = result.to_dict()
    colour = _hex(LABEL_COLOURS[result.label])
    parts = [f'<div class="photo"><img alt="{html.escape(name)}" src="data:image/jpeg;base64,'
             f'{_thumbnail(annotate(image, result))}"><div class="info"><h2>{html.escape(name)}</h2>',
             f'<span class="label" style="background:{colour}">{html.escape(result.label)}</span>',
             f' <span class="muted">{len(result.faces)} face(s)'
             f'{" - no face found: face branches abstained" if result.no_face else ""}</span>',
             _bars(rec["probs"]), "<table><tr><th>branch</th><th>weight</th><th>share</th><th>scores</th></tr>"]
    for b, br in rec["branches"].items():
        scores = _bars(br["probs"]) if br["spoke"] else '<span class="muted">abstained (no face)</span>'
        parts.append(f"<tr><td>{html.escape(b)}<br><span class=muted>{html.escape(br['pooling'])}</span></td>"
                     f"<td>{br['weight']:g}</td><td>{br['effective_weight']:.2f}</td><td>{scores}</td></tr>")
    parts.append("</table>")
    if rec["faces"]:
        branches = list(rec["faces"][0]["branches"])
        head = "".join(f"<th>{html.escape(b)}</th>" for b in branches)
        parts.append(f"<table><tr><th>#</th><th>box</th><th>det.</th><th>label</th>{head}<th>pooled in</th></tr>")
        for k, f in enumerate(rec["faces"]):
            cells = "".join("<td>" + " ".join(f"{c[:3]}&nbsp;{v:.2f}" for c, v in f["branches"][b].items())
                            + "</td>" for b in branches)
            box = ", ".join(f"{v:.0f}" for v in f["box"])
            parts.append(f"<tr><td>{k}</td><td>{box}</td><td>{f['score']:.3f}</td>"
                         f"<td style=\"color:{_hex(LABEL_COLOURS[f['label']])}\">{html.escape(f['label'])} "
                         f"{max(f['probs'].values()):.2f}</td>{cells}"
                         f"<td>{html.escape(', '.join(f['pooled_in']))}</td></tr>")
        parts.append("</table>")
    parts.append("</div></div>")
    return "".join(parts)


def write_report(path: str | Path, entries: Sequence[str], errors: Sequence[tuple[str, str]],
                 summary: str, settings: str) -> Path:
    """One self-contained HTML page (images embedded), written atomically."""
    err = ""
    if errors:
        items = "".join(f"<li><b>{html.escape(f)}</b>: {html.escape(r)}</li>" for f, r in errors)
        err = f'<h2 class="error">Skipped files</h2><ul class="error">{items}</ul>'
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>groupmood report</title>'
            f'<style>{_CSS}</style></head><body><h1>groupmood report</h1><p>{html.escape(summary)}</p>'
            f'<p class="muted">{html.escape(settings)}</p>{err}{"".join(entries)}</body></html>\n')
    atomic_write_text(path, page)
    return Path(path)


# --------------------------------------------------------------------------- command

@click.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--bundle", default=None, type=click.Path(dir_okay=False),
              help="Bundle YAML (models + fusion weights). Default: the shipped groupmood/assets/bundle.yaml.")
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file (written atomically when complete), or - for stdout.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--resume", is_flag=True, help="Skip photos already in --output (or its .partial file).")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False),
              help="Write each photo with faces coloured by label and the group decision into this folder.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write one self-contained HTML page with every photo of this run and its evidence.")
@fusion_options
@detector_options
def predict_cmd(inputs: tuple[str, ...], bundle: str | None, output: str, fmt: str, resume: bool,
                annotate_dir: str | None, report_path: str | None, weights_text: str | None, preset: str | None,
                pooling: str | None, device: str, batch_size: int, min_face_frac: float, min_face_px: float | None,
                thresholds: tuple[float, float, float], factor: float, mtcnn_weights: str | None,
                max_pixels: int, progress: bool) -> int:
    """Label the group emotion (Negative / Neutral / Positive) of each photo in INPUTS.

    INPUTS are files, folders (searched recursively) and globs. One record per photo: label, fused
    probabilities, each branch's probabilities, weight and whether it spoke, and each face's box,
    landmarks and probabilities. Unreadable files are reported and skipped; the exit status is
    then 1.
    """
    paths = collect_paths(inputs)
    names = output_names(paths)
    detector = build_detector(device, min_face_frac, min_face_px, thresholds, factor, mtcnn_weights)
    rec = load_recognizer(bundle, device, detector, weights_text, preset, pooling)
    sink: JsonlSink | CsvSink = (CsvSink(output, list(rec.branches), resume) if fmt == "csv"
                                 else JsonlSink(output, resume=resume))
    todo = [p for p in paths if str(p) not in sink.done]
    counts: Counter[str] = Counter()
    n_faces = 0
    entries: list[str] = []

    def handle(good: list[tuple[Path, np.ndarray]]) -> None:
        nonlocal n_faces
        for (path, img), res in zip(good, rec.predict([img for _, img in good])):
            n_faces += len(res.faces)
            counts[res.label] += 1
            sink.write({"file": str(path), **res.to_dict()})
            if annotate_dir:
                write_image(Path(annotate_dir) / names[path].with_suffix(".jpg"), annotate(img, res))
            if report_path:
                entries.append(report_entry(str(names[path]), img, res))

    run = run_photos(todo, batch_size, max_pixels, sink, progress, handle)
    labels = ", ".join(f"{c} {counts[c]}" for c in (*GROUP_CLASSES, ABSTAIN) if counts[c])
    summary = run.summary(n_faces, (f"; {labels}" if labels else "")
                          + (f"; already done: {len(paths) - len(todo)}" if resume else ""))
    if report_path:
        pools = ", ".join(f"{n} {pooling_name(b.top_k)}" for n, b in rec.branches.items() if b.is_face)
        settings = (f"weights: {', '.join(f'{n}={w:g}' for n, w in rec.weights.items())}; pooling: {pools or '-'}; "
                    f"bundle: {bundle or default_bundle_path()}")
        write_report(report_path, entries, run.failed, summary, settings)
    click.echo(summary, err=True)
    return 1 if run.failed else 0
