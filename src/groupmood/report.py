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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .detect import Face
from .detect.detector import as_rgb_array
from .fusion import ABSTAIN, pooling_name
from .io import atomic_write_text, encode_image
from .labels import GROUP_CLASSES

if TYPE_CHECKING:
    from .pipeline import GroupEmotionRecognizer, GroupResult

__all__ = ["FALLBACK_NOTE", "LABEL_COLOURS", "LANDMARK_MIN_SIDE", "REPORT_CSS", "HtmlReport", "Layout", "Mark", "Text",
           "annotate", "annotation_layout", "decided_alone", "describe_branch", "describe_fusion", "draw_faces",
           "scene_note", "silent_reason"]

#: RGB colour per group class for drawings and pages: Negative red, Neutral amber, Positive green.
LABEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "Negative": (220, 50, 47), "Neutral": (230, 190, 40), "Positive": (40, 180, 70), ABSTAIN: (150, 150, 150),
}

_LANDMARK_COLOURS = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 160, 0), (200, 64, 255))


# --------------------------------------------------------------------------- words

#: What each model family judges, in words.
_FAMILY_WORDS = {"face_aligned": "aligned faces", "face_nonaligned": "non-aligned faces", "global": "whole photo"}

#: What the report, the page and the picture say of a fallback branch that labelled a photo alone.
FALLBACK_NOTE = "fallback: decides alone when the face branches cannot"


def describe_branch(family: str, pooling: str) -> str:
    """What a branch judges, in words: a branch's name is the bundle's choice and says little.

    Args:
        family: the branch's model family (``face_aligned``, ``face_nonaligned``, ``global``).
        pooling: its face pooling (``all``, ``topK``).

    Returns:
        E.g. ``whole photo``, ``aligned faces, all``, ``non-aligned faces, 3 largest``.

    >>> describe_branch("face_nonaligned", "top3"), describe_branch("global", "all")
    ('non-aligned faces, 3 largest', 'whole photo')
    """
    what = _FAMILY_WORDS.get(family, family)
    if family == "global" or pooling == "image":
        return what
    return f"{what}, {pooling[3:]} largest" if pooling.startswith("top") else f"{what}, {pooling}"


def silent_reason(family: str) -> str:
    """Why a branch did not speak on a photo, in words.

    Args:
        family: the branch's model family.

    Returns:
        For a face branch: it saw too few faces; for the whole-image branch: it is the fallback, run
        only where the face branches cannot decide.

    >>> silent_reason("face_aligned")
    "abstained (no face, or fewer than the bundle's min_faces)"
    """
    if family == "global":
        return "not run: the face branches decide (fallback)"
    return "abstained (no face, or fewer than the bundle's min_faces)"


def decided_alone(branch: Mapping[str, Any]) -> bool:
    """Whether a branch is a fallback that gave the label: weight 0, yet a share of the vote.

    Args:
        branch: a branch record (``BranchResult.to_dict()``).

    Returns:
        True for a fallback that decided.

    >>> decided_alone({"spoke": True, "weight": 0.0, "effective_weight": 1.0})
    True
    """
    return bool(branch["spoke"]) and float(branch["weight"]) == 0 and float(branch["effective_weight"]) > 0


def scene_note(record: Mapping[str, Any]) -> str:
    """Why a photo's label is the whole-image branch's guess about the scene, not a group's mood.

    Args:
        record: ``GroupResult.to_dict()``.

    Returns:
        A note where no face branch had a share of the vote (no face found, or too few for the face
        branches), yet the photo has a label; "" when faces decided or the photo has no label.

    >>> scene_note({"abstained": False, "no_face": True,
    ...             "branches": {"scene": {"family": "global", "effective_weight": 1.0}}})
    'scene only, no face found'
    """
    faces_share = any(b["effective_weight"] > 0 for b in record["branches"].values() if b["family"] != "global")
    if record["abstained"] or faces_share:
        return ""
    return "scene only, no face found" if record["no_face"] else "scene only, too few faces for the face branches"


def _branch_words(branch: Mapping[str, Any]) -> str:
    """One branch's part in the decision, for the picture: its top class and share, or why it is silent."""
    if not branch["spoke"]:
        return silent_reason(branch["family"])
    probs = branch["probs"]
    top = max(probs, key=probs.__getitem__)
    if decided_alone(branch):
        return f"{top} {probs[top]:.2f}, {FALLBACK_NOTE}"
    share = branch["effective_weight"]
    return f"{top} {probs[top]:.2f}, " + (f"share {share:.2f} of the vote" if share > 0 else "no share of the vote")


# --------------------------------------------------------------------------- pictures

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BANNER_GREY = 24
_TEXT_WHITE = (240, 240, 240)
#: Smallest face box side (pixels) with its 5 landmarks drawn: on smaller faces the dots would hide the face.
LANDMARK_MIN_SIDE = 48


@dataclass(frozen=True)
class Mark:
    """A rectangle drawn on a picture: ``rect`` (x1, y1, x2, y2), corners included, in whole pixels.

    Filled (``thick`` -1) or outlined with a ``thick``-pixel line centred on its edges; never
    anti-aliased, so its pixels are exactly ``colour`` wherever nothing is drawn over them.
    """

    rect: tuple[int, int, int, int]
    colour: tuple[int, int, int]
    thick: int = -1


@dataclass(frozen=True)
class Text:
    """A line of text: its baseline's left end ``org``, Hershey-simplex ``font`` scale and stroke ``thick``."""

    org: tuple[int, int]
    text: str
    font: float
    thick: int
    colour: tuple[int, int, int]


@dataclass
class Layout:
    """Where a picture's marks go, in the output's coordinates (the photo starts at row ``banner``).

    ``swatches``: one per banner line (the group label, then each branch), filled, or outlined where
    the label is the scene's alone; ``boxes`` and ``tags``: one per face, face k being number k + 1;
    ``numbers``: the faces are too small or close for full labels, so each tag has its number only;
    ``dots``: landmark circles (centre, radius, colour).
    """

    banner: int = 0
    swatches: list[Mark] = field(default_factory=list)
    boxes: list[Mark] = field(default_factory=list)
    tags: list[Mark] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    dots: list[tuple[tuple[int, int], int, tuple[int, int, int]]] = field(default_factory=list)
    numbers: bool = False


def _overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _tag(box: tuple[int, int, int, int], text: str, font: float, thick: int, width: int
         ) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """A label tag's rectangle on top of a face box (inside it at the photo's top edge), and its text origin."""
    (tw, th), base = cv2.getTextSize(text, _FONT, font, thick)
    pad = 3  # the text's anti-aliasing stays off the tag's outermost pixels
    w, h = tw + 2 * pad, th + base + 2 * pad
    x = max(0, min(box[0], width - w))
    y = box[1] - h if box[1] - h >= 0 else max(0, box[1])
    return (x, y, x + w - 1, y + h - 1), (x + pad, y + pad + th)


def _down(rect: Sequence[int], top: int) -> tuple[int, int, int, int]:
    return rect[0], rect[1] + top, rect[2], rect[3] + top


def _face_layout(height: int, width: int, faces: Sequence[Face], colours: Sequence[tuple[int, int, int]],
                 labels: Sequence[str], landmarks: bool, top: int = 0) -> Layout:
    """Boxes, number tags and (on faces large enough) landmarks of faces on a ``height`` x ``width`` photo.

    Each tag reads ``k: label`` (k from 1) where every such tag fits over its face's width and covers
    no other tag or face; otherwise every tag reads ``k`` alone, scaled down on small faces, so a crowd
    stays readable and the full labels are left to the report's table. ``top`` shifts it all down.
    """
    scale = max(height, width) / 800.0
    thick = max(1, int(round(2 * scale)))
    font = 0.5 * max(scale, 0.6)
    text_thick = max(1, thick // 2)
    boxes = [tuple(int(round(v)) for v in f.box) for f in faces]
    texts = [f"{k + 1}: {lab}" for k, lab in enumerate(labels)]
    full = [_tag(b, t, font, text_thick, width) for b, t in zip(boxes, texts)]
    rects = [r for r, _ in full]

    def clear(k: int) -> bool:
        fits = rects[k][2] - rects[k][0] <= boxes[k][2] - boxes[k][0] + 2 * thick
        others = [r for j, r in enumerate(rects + boxes) if j not in (k, len(rects) + k)]
        return fits and not any(_overlap(rects[k], o) for o in others)

    out = Layout(numbers=not all(clear(k) for k in range(len(faces))))
    for k, (face, box, colour) in enumerate(zip(faces, boxes, colours)):
        colour = tuple(int(c) for c in colour)
        side = min(box[2] - box[0], box[3] - box[1])
        if out.numbers:
            text = str(k + 1)
            th = cv2.getTextSize(text, _FONT, font, text_thick)[0][1]
            f = float(np.clip(font * 0.4 * side / max(th, 1), 0.3, font))
            rect, org = _tag(box, text, f, text_thick, width)
        else:
            (rect, org), text, f = full[k], texts[k], font
        out.boxes.append(Mark(_down(box, top), colour, thick))
        out.tags.append(Mark(_down(rect, top), colour))
        out.texts.append(Text((org[0], org[1] + top), text, f, text_thick, (0, 0, 0)))
        if landmarks and side >= LANDMARK_MIN_SIDE:
            radius = max(1, min(thick + 1, side // 32))
            for (x, y), c in zip(face.landmarks, _LANDMARK_COLOURS):
                out.dots.append(((int(round(x)), int(round(y)) + top), radius, c))
    return out


def _wrap(text: str, font: float, thick: int, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken between words (a longer word keeps a line)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and cv2.getTextSize(f"{lines[-1]} {word}", _FONT, font, thick)[0][0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _paint(photo: np.ndarray, layout: Layout) -> np.ndarray:
    """The photo under a banner of ``layout.banner`` rows, with the layout's marks drawn: a new array."""
    out = np.concatenate([np.full((layout.banner, photo.shape[1], 3), _BANNER_GREY, np.uint8), photo], axis=0)
    for mark in (*layout.swatches, *layout.boxes, *layout.tags):
        x1, y1, x2, y2 = mark.rect
        cv2.rectangle(out, (x1, y1), (x2, y2), mark.colour, mark.thick, cv2.LINE_8)
    for centre, radius, colour in layout.dots:
        cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
    for t in layout.texts:
        cv2.putText(out, t.text, t.org, _FONT, t.font, t.colour, t.thick, cv2.LINE_AA)
    return out


def draw_faces(image: np.ndarray, faces: Sequence[Face], colours: Sequence[tuple[int, int, int]] | None = None,
               labels: Sequence[str] | None = None) -> np.ndarray:
    """A copy of an RGB image with each face's box, number and label drawn on it (``groupmood detect --annotate``).

    The 5 landmarks are drawn on faces at least :data:`LANDMARK_MIN_SIDE` pixels wide and tall;
    crowded or small faces get their number only (see :func:`_face_layout`).

    Args:
        image: (H, W, 3) uint8 RGB image (not changed).
        faces: the faces to draw.
        colours: an RGB colour per face; green by default.
        labels: a text per face; the detection score by default.

    Returns:
        The drawn (H, W, 3) uint8 copy.

    >>> face = Face(np.array([8, 8, 56, 56], np.float32), 0.99, np.full((5, 2), 32, np.float32))
    >>> drawn = draw_faces(np.zeros((64, 64, 3), np.uint8), [face])
    >>> drawn.shape, bool(drawn.any())
    ((64, 64, 3), True)
    """
    img = as_rgb_array(image)
    colours = colours or [(0, 255, 0)] * len(faces)
    labels = labels or [f"{f.score:.2f}" for f in faces]
    return _paint(img, _face_layout(img.shape[0], img.shape[1], faces, colours, labels, landmarks=True))


def annotation_layout(result: GroupResult, size: tuple[int, int] | None = None) -> Layout:
    """Where :func:`annotate` draws what on the photo of a result.

    A dark banner above the photo: the group label with the fused probabilities (a filled swatch
    in its colour; outlined, and said to be the scene only, where no face branch had a share),
    then one line per branch: what it judges, its top class and share of the vote, or why it is
    silent. Lines too long for the photo's width wrap. Below, each face is boxed in its face-level
    label's colour and numbered from 1, as in the report's and the page's face tables.

    Args:
        result: the photo's :class:`~groupmood.pipeline.GroupResult`.
        size: (height, width) of the pixels drawn on; the result's photo size by default.

    Returns:
        The :class:`Layout`.
    """
    rec = result.to_dict()
    h, w = size or (result.height, result.width)
    probs = " ".join(f"{c[:3]} {p:.2f}" for c, p in zip(GROUP_CLASSES, result.probs))
    note = scene_note(rec)
    head = f"Scene only: {result.label}  ({probs}) - {note.removeprefix('scene only, ')}" if note else \
        f"Group: {result.label}  ({probs})"
    lines = [(head, LABEL_COLOURS[result.label], not note)]
    for name, br in rec["branches"].items():
        top = max(br["probs"], key=br["probs"].__getitem__)
        colour = LABEL_COLOURS[top] if br["spoke"] else LABEL_COLOURS[ABSTAIN]
        lines.append((f"{name} ({describe_branch(br['family'], br['pooling'])}): {_branch_words(br)}", colour, True))
    font = max(0.4, min(1.2, w / 900))
    thick = max(1, int(round(font * 1.5)))
    line_h = int(cv2.getTextSize("Ag", _FONT, font, thick)[0][1] * 1.9) + 2
    sw = line_h // 2
    swatches, texts, row = [], [], 0
    for text, colour, filled in lines:
        y = line_h * (row + 1) - line_h // 4
        swatches.append(Mark((4, y - sw, 4 + sw, y), colour, -1 if filled else max(2, sw // 5)))
        for part in _wrap(text, font, thick, w - 14 - sw):
            texts.append(Text((10 + sw, y), part, font, thick, _TEXT_WHITE))
            y += line_h
            row += 1
    banner = line_h * row + 6
    faces = [Face(f.box, f.score, f.landmarks) for f in result.faces]
    out = _face_layout(h, w, faces, [LABEL_COLOURS[f.label] for f in result.faces],
                       [f"{f.label} {f.probs.max():.2f}" for f in result.faces], landmarks=False, top=banner)
    out.banner, out.swatches, out.texts = banner, swatches, texts + out.texts
    return out


def annotate(image: np.ndarray, result: GroupResult) -> np.ndarray:
    """The photo with the evidence of its group label drawn on it (``groupmood predict --annotate``).

    The photo itself is left uncovered apart from the face boxes and their number tags (no
    landmarks: on a crowd they would hide the faces being judged), so a person can check the faces
    against the decision.

    Args:
        image: the photo's (H, W, 3) uint8 RGB pixels (not changed).
        result: its :class:`~groupmood.pipeline.GroupResult`.

    Returns:
        A new RGB uint8 array: the photo under a banner (same width, taller), laid out by
        :func:`annotation_layout`.
    """
    img = as_rgb_array(image)
    return _paint(img, annotation_layout(result, img.shape[:2]))


# --------------------------------------------------------------------------- HTML report

#: The style sheet of the report page, shared with the serve page. Nothing in it is wider than a 400 px
#: window: long names break, pictures shrink, tables too wide for their column scroll in their own box.
REPORT_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1,h2,p,li{overflow-wrap:anywhere}
.photo{display:flex;gap:1.2em;align-items:flex-start;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:1em;margin-bottom:1.2em;flex-wrap:wrap}
.photo img{max-width:min(480px,100%);height:auto;border-radius:4px}
.info{flex:1;min-width:min(320px,100%);max-width:100%}
h2{font-size:1em;margin:0 0 .4em}
.label{font-size:1.3em;font-weight:600;padding:.1em .5em;border-radius:4px;color:#fff;display:inline-block;
border:2px solid transparent}
.label.scene{background:#fff;color:#444;font-weight:500;border-style:dashed}
.label small{font-size:.6em;font-weight:400;color:#666}
.bar{display:flex;align-items:center;gap:.4em;font-size:.85em;margin:.1em 0}
.bar .name{width:5.5em;flex:none}.bar .track{width:min(180px,30vw);height:.8em;background:#eee;border-radius:3px;
overflow:hidden;flex:none}
td .bar .track{width:min(120px,15vw)}
.bar .fill{display:block;height:100%}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:.82em;margin-top:.6em}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
.nowrap{white-space:nowrap}
.dot{display:inline-block;width:.75em;height:.75em;border-radius:2px;margin-right:.3em;vertical-align:-.05em}
.muted{color:#888}.error{color:#b00}
@media (max-width:560px){body{margin:.5em}.photo{padding:.6em;gap:.6em}table{font-size:.75em}
td,th{padding:.2em .3em}td .bar .name{width:4.6em}td .bar .track{width:12vw}}
"""


def _hex(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


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


def _badge(label: str, note: str) -> str:
    """The group label: solid in its colour, or outlined with ``note`` where it is the scene's alone."""
    colour = _hex(LABEL_COLOURS[label])
    if note:
        return (f'<span class="label scene" style="border-color:{colour}">{html.escape(label)} '
                f'<small>({html.escape(note)})</small></span>')
    return f'<span class="label" style="background:{colour};border-color:{colour}">{html.escape(label)}</span>'


def _photo_block(name: str, thumbnail: str, result: GroupResult) -> str:
    """The HTML of one photo: annotated thumbnail, label, fused bars, a branch table and a face table.

    Faces are numbered from 1, as on the picture and the serve page.
    """
    rec = result.to_dict()
    parts = [f'<div class="photo"><img alt="{html.escape(name)}" src="data:image/jpeg;base64,{thumbnail}">'
             f'<div class="info"><h2>{html.escape(name)}</h2>', _badge(result.label, scene_note(rec)),
             f' <span class="muted">{len(result.faces)} face(s)</span>', _bars(rec["probs"]),
             '<div class="scroll"><table class="branches"><tr><th>branch</th><th>weight</th><th>share</th>'
             '<th>scores</th></tr>']
    for b, br in rec["branches"].items():
        if not br["spoke"]:
            scores = f'<span class="muted">{silent_reason(br["family"])}</span>'
        elif decided_alone(br):
            scores = f'<span class="muted">{FALLBACK_NOTE}</span>{_bars(br["probs"])}'
        else:
            scores = _bars(br["probs"])
        weight = "fallback" if decided_alone(br) else f"{br['weight']:g}"
        parts.append(f'<tr><td>{html.escape(b)}<br><span class="muted">'
                     f'{html.escape(describe_branch(br["family"], br["pooling"]))}</span></td>'
                     f"<td>{weight}</td><td>{br['effective_weight']:.2f}</td><td>{scores}</td></tr>")
    parts.append("</table></div>")
    if rec["faces"]:
        branches = list(rec["faces"][0]["branches"])
        head = "".join(f"<th>{html.escape(b)}</th>" for b in branches)
        parts.append(f'<div class="scroll"><table class="faces"><tr><th>#</th><th>label</th>{head}<th>det.</th>'
                     f"<th>box</th><th>pooled in</th></tr>")
        for k, f in enumerate(rec["faces"], start=1):
            colour = _hex(LABEL_COLOURS[f["label"]])
            cells = "".join("<td>" + " ".join(f"{html.escape(c[:3])}&nbsp;{v:.2f}"
                                              for c, v in f["branches"][b].items()) + "</td>" for b in branches)
            box = ", ".join(f"{v:.0f}" for v in f["box"])
            parts.append(f'<tr><td>{k}</td><td class="nowrap" style="color:{colour}"><span class="dot" style="background:{colour}">'
                         f'</span>{html.escape(f["label"])}&nbsp;{max(f["probs"].values()):.2f}</td>{cells}'
                         f"<td>{f['score']:.3f}</td><td>{box}</td><td>{html.escape(', '.join(f['pooled_in']))}</td></tr>")
        parts.append("</table></div>")
    parts.append("</div></div>")
    return "".join(parts)


def describe_fusion(recognizer: GroupEmotionRecognizer, bundle: str | Path) -> str:
    """One line naming what decided: a report is read long after the run, so it records its settings.

    Args:
        recognizer: the recognizer that labelled the photos.
        bundle: its bundle file.

    Returns:
        The fusion weights, each face branch's pooling and the bundle file, in one line.
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
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<style>{REPORT_CSS}</style></head><body><h1>{title}</h1><p>{html.escape(summary)}</p>'
                f'<p class="muted">{html.escape(settings)}</p>{err}{"".join(b for _, b in sorted(self._blocks, key=lambda kb: kb[0]))}'
                '</body></html>\n')

    def write(self, path: str | Path, summary: str = "", settings: str = "",
              errors: Sequence[tuple[str | Path, str]] = ()) -> Path:
        """Write :meth:`render` to ``path`` atomically (a reader never sees half a page); return the path."""
        atomic_write_text(path, self.render(summary, settings, errors))
        return Path(path)
