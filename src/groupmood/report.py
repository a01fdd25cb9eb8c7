"""Pictures for people: detections and labels drawn on photos, and the HTML report of a run.

Everything that turns results into something a person looks at lives here, apart from the code
that computes them: :func:`draw_faces` (``groupmood detect --annotate``), :func:`annotate` (a
:class:`~groupmood.pipeline.GroupResult` on its photo, ``groupmood predict --annotate``) and
:class:`HtmlReport` (``groupmood predict --report``). The recognizer is imported for type
checking only, so importing this module does not load the models' code.
"""
from __future__ import annotations

import base64
import html
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .detect import Face
from .detect.detector import as_rgb_array
from .fusion import ABSTAIN, pooling_name
from .io import atomic_write_text, encode_image
from .labels import GROUP_CLASSES

if TYPE_CHECKING:
    from .pipeline import GroupEmotionRecognizer, GroupResult

__all__ = ["LABEL_COLOURS", "REPORT_CSS", "HtmlReport", "annotate", "describe_fusion", "draw_faces"]

#: RGB colour per group class for drawings and pages: Negative red, Neutral amber, Positive green.
LABEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "Negative": (220, 50, 47), "Neutral": (230, 190, 40), "Positive": (40, 180, 70), ABSTAIN: (150, 150, 150),
}

_LANDMARK_COLOURS = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 160, 0), (200, 64, 255))


# --------------------------------------------------------------------------- pictures

def draw_faces(image: np.ndarray, faces: Sequence[Face], colours: Sequence[tuple[int, int, int]] | None = None,
               labels: Sequence[str] | None = None) -> np.ndarray:
    """A copy of an RGB image with each face's box, 5 landmarks and optional label drawn on it."""
    out = image.copy()
    scale = max(out.shape[:2]) / 800.0
    thick = max(1, int(round(2 * scale)))
    for k, face in enumerate(faces):
        colour = tuple(int(c) for c in (colours[k] if colours else (0, 255, 0)))
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        for (x, y), c in zip(face.landmarks, _LANDMARK_COLOURS):
            cv2.circle(out, (int(round(x)), int(round(y))), max(2, thick + 1), c, -1, cv2.LINE_AA)
        text = labels[k] if labels else f"{face.score:.2f}"
        font = 0.5 * max(scale, 0.6)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, max(1, thick // 2))
        ty = max(th + base, y1)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), colour, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0),
                    max(1, thick // 2), cv2.LINE_AA)
    return out


def annotate(image: np.ndarray, result: GroupResult) -> np.ndarray:
    """The photo with the evidence of its group label drawn on it, as a new RGB uint8 array.

    Each face is boxed in its face-level label's colour with that label and its probability; a
    dark banner above the photo (the output is taller than the photo, same width) gives the group
    label with the fused probabilities, then one line per branch: its effective weight and top
    class, or that it abstained. The photo itself is left uncovered apart from the face boxes, so
    a person can check the faces against the decision.
    """
    img = as_rgb_array(image)
    faces = [Face(f.box, f.score, f.landmarks) for f in result.faces]
    colours = [LABEL_COLOURS[f.label] for f in result.faces]
    labels = [f"{f.label} {f.probs.max():.2f}" for f in result.faces]
    drawn = draw_faces(img, faces, colours, labels) if faces else img.copy()
    probs = " ".join(f"{c[:3]} {p:.2f}" for c, p in zip(GROUP_CLASSES, result.probs))
    lines = [(f"Group: {result.label}  ({probs})", LABEL_COLOURS[result.label])]
    for name, br in result.branches.items():
        if br.spoke:
            top = int(np.argmax(br.probs))
            text = f"{name} x{br.effective_weight:.2f}: {GROUP_CLASSES[top]} {br.probs[top]:.2f}"
            colour = LABEL_COLOURS[GROUP_CLASSES[top]]
        else:
            text, colour = f"{name}: abstained (no face)", LABEL_COLOURS[ABSTAIN]
        lines.append((text, colour))
    w = drawn.shape[1]
    font = max(0.4, min(1.2, w / 900))
    thick = max(1, int(round(font * 1.5)))
    line_h = int(cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font, thick)[0][1] * 1.9) + 2
    banner = np.full((line_h * len(lines) + 6, w, 3), 24, np.uint8)
    for k, (text, colour) in enumerate(lines):
        y = line_h * (k + 1) - line_h // 4
        cv2.rectangle(banner, (4, y - line_h // 2), (4 + line_h // 2, y), colour, -1)
        cv2.putText(banner, text, (10 + line_h // 2, y), cv2.FONT_HERSHEY_SIMPLEX, font, (240, 240, 240), thick,
                    cv2.LINE_AA)
    return np.concatenate([banner, drawn], axis=0)


# --------------------------------------------------------------------------- HTML report

#: The style sheet of the report page, shared with the serve page.
REPORT_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
.photo{display:flex;gap:1.2em;align-items:flex-start;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:1em;margin-bottom:1.2em;flex-wrap:wrap}
.photo img{max-width:min(480px,100%);height:auto;border-radius:4px}
.info{flex:1;min-width:min(320px,100%);max-width:100%;overflow-x:auto}
h2{font-size:1em;margin:0 0 .4em;word-break:break-all}
.label{font-size:1.3em;font-weight:600;padding:.1em .5em;border-radius:4px;color:#fff;display:inline-block}
.bar{display:flex;align-items:center;gap:.4em;font-size:.85em;margin:.1em 0}
.bar .name{width:5.5em}.bar .track{width:min(180px,30vw);height:.8em;background:#eee;border-radius:3px;overflow:hidden}
td .bar .track{width:min(120px,15vw)}
.bar .fill{display:block;height:100%}
table{border-collapse:collapse;font-size:.82em;margin-top:.6em}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
.muted{color:#888}.error{color:#b00}
"""


def _hex(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


def silent_reason(family: str) -> str:
    """Why a branch did not speak on a photo: a face branch saw too few faces; the whole-image branch is
    the fallback, run only where the face branches cannot decide."""
    if family == "global":
        return "not run: the face branches decide (fallback)"
    return "abstained (no face, or fewer than the bundle's min_faces)"


def _bars(probs: Mapping[str, float]) -> str:
    """One coloured bar per class, with its probability."""
    out = []
    for c, p in probs.items():
        out.append(f'<div class="bar"><span class="name">{html.escape(c)}</span><span class="track">'
                   f'<span class="fill" style="width:{100 * float(p):.1f}%;background:{_hex(LABEL_COLOURS[c])}">'
                   f'</span></span><span>{float(p):.3f}</span></div>')
    return "".join(out)


def _jpeg_base64(rgb: np.ndarray, max_side: int, quality: int) -> str:
    """A base64 JPEG of an RGB image scaled down to at most ``max_side`` pixels (never up)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return base64.b64encode(encode_image(rgb, ".jpg", quality)).decode("ascii")


def _photo_block(name: str, thumbnail: str, result: GroupResult) -> str:
    """The HTML of one photo: annotated thumbnail, label, fused bars, a branch table and a face table."""
    rec = result.to_dict()
    colour = _hex(LABEL_COLOURS[result.label])
    parts = [f'<div class="photo"><img alt="{html.escape(name)}" src="data:image/jpeg;base64,{thumbnail}">'
             f'<div class="info"><h2>{html.escape(name)}</h2>',
             f'<span class="label" style="background:{colour}">{html.escape(result.label)}</span>',
             f' <span class="muted">{len(result.faces)} face(s)'
             f'{" - no face found: face branches abstained" if result.no_face else ""}</span>',
             _bars(rec["probs"]), "<table><tr><th>branch</th><th>weight</th><th>share</th><th>scores</th></tr>"]
    for b, br in rec["branches"].items():
        scores = _bars(br["probs"]) if br["spoke"] else f'<span class="muted">{silent_reason(br["family"])}</span>'
        parts.append(f'<tr><td>{html.escape(b)}<br><span class="muted">{html.escape(br["pooling"])}</span></td>'
                     f"<td>{br['weight']:g}</td><td>{br['effective_weight']:.2f}</td><td>{scores}</td></tr>")
    parts.append("</table>")
    if rec["faces"]:
        branches = list(rec["faces"][0]["branches"])
        head = "".join(f"<th>{html.escape(b)}</th>" for b in branches)
        parts.append(f"<table><tr><th>#</th><th>box</th><th>det.</th><th>label</th>{head}<th>pooled in</th></tr>")
        for k, f in enumerate(rec["faces"]):
            cells = "".join("<td>" + " ".join(f"{html.escape(c[:3])}&nbsp;{v:.2f}"
                                              for c, v in f["branches"][b].items()) + "</td>" for b in branches)
            box = ", ".join(f"{v:.0f}" for v in f["box"])
            parts.append(f"<tr><td>{k}</td><td>{box}</td><td>{f['score']:.3f}</td>"
                         f"<td style=\"color:{_hex(LABEL_COLOURS[f['label']])}\">{html.escape(f['label'])} "
                         f"{max(f['probs'].values()):.2f}</td>{cells}"
                         f"<td>{html.escape(', '.join(f['pooled_in']))}</td></tr>")
        parts.append("</table>")
    parts.append("</div></div>")
    return "".join(parts)


def describe_fusion(recognizer: GroupEmotionRecognizer, bundle: str | Path) -> str:
    """One line naming what decided: fusion weights, each face branch's pooling, and the bundle file.

    A report is read long after the run, so it records the settings its labels depend on.
    """
    weights = ", ".join(f"{n}={w:g}" for n, w in recognizer.weights.items())
    pools = ", ".join(f"{n} {pooling_name(b.top_k)}" for n, b in recognizer.branches.items() if b.is_face)
    return f"weights: {weights}; pooling: {pools or '-'}; bundle: {bundle}"


class HtmlReport:
    """One self-contained HTML page of a run: every photo with its label and evidence.

    Photos are added one at a time as they are labelled (:meth:`add`); each is rendered at once
    into its block (the :func:`annotate` picture as a JPEG thumbnail of at most ``max_side``
    pixels, embedded as a ``data:`` URI), so a long run keeps a few tens of kB per photo rather
    than the decoded photos. The page has inline styles and no scripts, links or external
    resources, so it opens offline and can be mailed or archived as one file. Every name taken
    from a file or result is HTML-escaped.
    """

    def __init__(self, title: str = "groupmood report", max_side: int = 640, quality: int = 80) -> None:
        if max_side < 1 or not 1 <= quality <= 100:
            raise ValueError(f"max_side must be >= 1 and quality in 1..100, got {max_side}, {quality}")
        self.title = title
        self.max_side = int(max_side)
        self.quality = int(quality)
        self._blocks: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of photos added so far."""
        return len(self._blocks)

    def add(self, name: str, image: np.ndarray, result: GroupResult, order: int | None = None) -> None:
        """Add one photo under ``name`` (shown as given, e.g. its path relative to the inputs).

        Thread-safe; photos appear sorted by ``order`` (default: the order they were added in).
        """
        block = _photo_block(name, _jpeg_base64(annotate(image, result), self.max_side, self.quality), result)
        with self._lock:
            self._blocks.append((len(self._blocks) if order is None else order, block))

    def render(self, summary: str = "", settings: str = "", errors: Sequence[tuple[str | Path, str]] = ()) -> str:
        """The whole page: title, ``summary`` and ``settings`` lines, skipped files with the reason, photos."""
        err = ""
        if errors:
            items = "".join(f"<li><b>{html.escape(str(f))}</b>: {html.escape(r)}</li>" for f, r in errors)
            err = f'<h2 class="error">Skipped files</h2><ul class="error">{items}</ul>'
        title = html.escape(self.title)
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f'<style>{REPORT_CSS}</style></head><body><h1>{title}</h1><p>{html.escape(summary)}</p>'
                f'<p class="muted">{html.escape(settings)}</p>{err}{"".join(b for _, b in sorted(self._blocks, key=lambda kb: kb[0]))}'
                '</body></html>\n')

    def write(self, path: str | Path, summary: str = "", settings: str = "",
              errors: Sequence[tuple[str | Path, str]] = ()) -> Path:
        """Write :meth:`render` to ``path`` atomically (a reader never sees half a page); return the path."""
        atomic_write_text(path, self.render(summary, settings, errors))
        return Path(path)
