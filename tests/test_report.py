"""groupmood.report on hand-made results: the annotated picture and the self-contained HTML report."""
from __future__ import annotations

import base64
import html
import subprocess
import sys
from html.parser import HTMLParser
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from groupmood.fusion import ABSTAIN
from groupmood.labels import GROUP_CLASSES
from groupmood.pipeline import BranchResult, FaceResult, GroupResult
from groupmood.detect import Face
from groupmood.report import (FALLBACK_NOTE, LABEL_COLOURS, LANDMARK_MIN_SIDE, HtmlReport, Layout, Mark,
                               annotate, annotation_layout, describe_fusion, draw_faces, silent_reason)

H, W = 600, 800
BOX = (300.0, 150.0, 460.0, 350.0)


def _photo() -> np.ndarray:
    """A flat grey photo: every pixel that differs from it was drawn."""
    return np.full((H, W, 3), 128, np.uint8)


def _face_result() -> GroupResult:
    """One Positive face in BOX; the aligned branch spoke, the global branch too."""
    probs = np.array([0.1, 0.2, 0.7])
    landmarks = np.array([[340, 220], [420, 220], [380, 260], [350, 300], [410, 300]], float)
    face = FaceResult(Face(np.array(BOX), 0.998, landmarks), "Positive", probs, {"aligned": probs}, ("aligned",))
    branches = {"aligned": BranchResult(probs, 3.0, 0.75, True, (0,), "all", "face_aligned"),
                "global": BranchResult(np.array([0.5, 0.3, 0.2]), 1.0, 0.25, True, (), "image", "global")}
    return GroupResult("Positive", np.array([0.2, 0.225, 0.575]), branches, [face], False, False, W, H)


def _no_face_result(fallback: bool = False) -> GroupResult:
    """No face: the aligned branch abstained, the global branch decided alone (``fallback``: with weight 0)."""
    g = np.array([0.6, 0.3, 0.1])
    branches = {"aligned": BranchResult(np.full(3, 1 / 3), 3.0, 0.0, False, (), "all", "face_aligned"),
                "global": BranchResult(g, 0.0 if fallback else 1.0, 1.0, True, (), "image", "global")}
    return GroupResult("Negative", g, branches, [], True, False, W, H)


def _has_colour(region: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((region == np.array(rgb, np.uint8)).all(axis=-1).any())


def _inside(out: np.ndarray, mark: Mark, inset: int = 0) -> np.ndarray:
    """The pixels of a mark's rectangle (``inset`` pixels in from each side)."""
    x1, y1, x2, y2 = mark.rect
    return out[y1 + inset:y2 + 1 - inset, x1 + inset:x2 + 1 - inset]


def _edge(out: np.ndarray, mark: Mark) -> np.ndarray:
    """The pixels on the middle of an outlined mark's left edge, where only its line is drawn."""
    x1, y1, x2, y2 = mark.rect
    return out[(y1 + y2) // 2 - 2:(y1 + y2) // 2 + 3, x1]


def _banner_words(layout: Layout) -> str:
    """The banner's text, wrapped lines joined again."""
    return " ".join(t.text for t in layout.texts if t.org[1] < layout.banner)


# --------------------------------------------------------------------------- annotate

def test_annotate_adds_banner_and_boxes_faces_in_label_colour():
    photo = _photo()
    out = annotate(photo, _face_result())
    banner = out.shape[0] - H
    assert out.dtype == np.uint8 and out.shape[1] == W and banner > 0
    assert np.array_equal(photo, _photo())  # the input is not drawn on
    below = out[banner:]
    x1, y1, x2, y2 = (int(v) for v in BOX)
    colour = LABEL_COLOURS["Positive"]
    # the box's left edge is drawn in the face label's colour, between the label tag and the box's bottom
    assert _has_colour(below[y1 + 20:y2 - 10, x1 - 3:x1 + 4], colour)
    # inside the box the face is left as it is: no landmark dots over it, the tag sits above the box
    assert np.array_equal(below[y1 + 3:y2 - 2, x1 + 3:x2 - 2], photo[y1 + 3:y2 - 2, x1 + 3:x2 - 2])
    # far from the face the photo is untouched
    assert np.array_equal(below[:, :x1 - 20], photo[:, :x1 - 20])
    assert np.array_equal(below[y2 + 20:], photo[y2 + 20:])
    # the banner carries the group label's colour swatch
    assert _has_colour(out[:banner], colour)


def test_annotate_without_faces_leaves_the_photo_and_lists_every_branch():
    photo = _photo()
    one = annotate(photo, _no_face_result())
    banner = one.shape[0] - H
    assert np.array_equal(one[banner:], photo)
    assert _has_colour(one[:banner], LABEL_COLOURS["Negative"]) and _has_colour(one[:banner], LABEL_COLOURS[ABSTAIN])
    r = _no_face_result()
    fewer = GroupResult(r.label, r.probs, {"global": r.branches["global"]}, [], True, False, W, H)
    assert annotate(photo, fewer).shape[0] < one.shape[0]  # one banner line per branch


def test_layout_is_what_annotate_draws():
    result = _face_result()
    layout = annotation_layout(result)
    out = annotate(_photo(), result)
    assert out.shape[0] == H + layout.banner and len(layout.swatches) == 1 + len(result.branches)
    assert [m.thick for m in layout.swatches] == [-1, -1, -1]  # a group decision: filled swatches
    for swatch in layout.swatches:  # filled: every pixel of the swatch is its colour
        assert (_inside(out, swatch) == np.array(swatch.colour, np.uint8)).all()
    (box,), (tag,) = layout.boxes, layout.tags
    assert box.rect == (300, 150 + layout.banner, 460, 350 + layout.banner)
    assert (_edge(out, box) == np.array(LABEL_COLOURS["Positive"], np.uint8)).all()
    assert tag.rect[3] < box.rect[1] and not layout.numbers  # the full label, above the box
    assert [t.text for t in layout.texts if t.org[1] >= layout.banner] == ["1: Positive 0.70"]  # numbered from 1


def test_banner_says_why_a_branch_is_silent_and_what_each_branch_is():
    probs = np.array([0.1, 0.2, 0.7])
    faces = [FaceResult(Face(np.array([100.0 + 200 * k, 150, 220 + 200 * k, 300]), 0.99, np.zeros((5, 2))), "Positive",
                        probs, {"aligned": probs}, ("aligned",)) for k in range(3)]
    branches = {"aligned": BranchResult(probs, 0.8, 1.0, True, (0, 1, 2), "all", "face_aligned"),
                "nonaligned": BranchResult(np.full(3, 1 / 3), 0.2, 0.0, False, (), "top3", "face_nonaligned"),
                "global": BranchResult(np.full(3, 1 / 3), 0.0, 0.0, False, (), "image", "global")}
    words = _banner_words(annotation_layout(GroupResult("Positive", probs, branches, faces, False, False, W, H)))
    assert words.startswith("Group: Positive  (Neg 0.10 Neu 0.20 Pos 0.70)")
    assert "aligned (aligned faces, all): Positive 0.70, share 1.00 of the vote" in words
    assert "nonaligned (non-aligned faces, 3 largest): abstained (no face, or fewer than the bundle's min_faces)" in words
    assert "global (whole photo): not run: the face branches decide (fallback)" in words  # the fallback, not needed
    assert "global (whole photo): abstained" not in words and " x0." not in words


def test_a_label_from_the_scene_alone_is_drawn_as_such():
    result = _no_face_result(fallback=True)
    layout = annotation_layout(result)
    out = annotate(_photo(), result)
    words = _banner_words(layout)
    assert words.startswith("Scene only: Negative  (Neg 0.60 Neu 0.30 Pos 0.10) - no face found")
    assert f"global (whole photo): Negative 0.60, {FALLBACK_NOTE}" in words and "weight 0" not in words
    head = layout.swatches[0]
    assert head.thick > 0  # outlined, not the solid swatch of a group's mood
    assert (_edge(out, head) == np.array(LABEL_COLOURS["Negative"], np.uint8)).all()
    assert (_inside(out, head, inset=head.thick + 1) == 24).all()  # the banner's grey inside it
    one = _face_result()  # one face, too few for the face branches: the scene decides
    silent = {n: BranchResult(b.probs, b.weight, 0.0 if n == "aligned" else 1.0, n == "global", b.faces, b.pooling,
                              b.family) for n, b in one.branches.items()}
    few = GroupResult("Negative", np.array([0.5, 0.3, 0.2]), silent, one.faces, False, False, W, H)
    assert _banner_words(annotation_layout(few)).startswith(
        "Scene only: Negative  (Neg 0.50 Neu 0.30 Pos 0.20) - too few faces for the face branches")


def _crowd(n: int, side: int, width: int = 625, height: int = 417) -> GroupResult:
    """``n`` faces of ``side`` pixels in rows 1.3 sides apart, labels in turn."""
    faces = []
    per_row = int((width - 10) // (1.3 * side))
    for k in range(n):
        x, y = 5 + (k % per_row) * 1.3 * side, 5 + (k // per_row) * 1.6 * side
        probs = np.full(3, 0.15)
        probs[k % 3] = 0.7
        landmarks = np.array([[x + side * a, y + side * b] for a, b in
                              ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))])
        faces.append(FaceResult(Face(np.array([x, y, x + side, y + side]), 0.99, landmarks), GROUP_CLASSES[k % 3], probs,
                                {"aligned": probs}, ("aligned",)))
    branch = BranchResult(np.array([0.2, 0.3, 0.5]), 1.0, 1.0, True, tuple(range(n)), "all", "face_aligned")
    return GroupResult("Positive", np.array([0.2, 0.3, 0.5]), {"aligned": branch}, faces, False, False, width, height)


def test_a_crowd_gets_number_tags_that_do_not_overlap_and_no_landmarks():
    crowd = _crowd(38, 30)
    photo = np.full((crowd.height, crowd.width, 3), 128, np.uint8)
    layout = annotation_layout(crowd)
    assert layout.numbers and not layout.dots
    assert [t.text for t in layout.texts if t.org[1] >= layout.banner] == [str(k) for k in range(1, 39)]
    for k, a in enumerate(layout.tags):
        for b in layout.tags[k + 1:]:
            assert a.rect[2] < b.rect[0] or b.rect[2] < a.rect[0] or a.rect[3] < b.rect[1] or b.rect[3] < a.rect[1]
    out = annotate(photo, crowd)
    for box, face in zip(layout.boxes, crowd.faces):  # each box in its face's colour
        assert (_edge(out, box) == np.array(LABEL_COLOURS[face.label], np.uint8)).all()
    # the detector's picture draws landmarks only on faces large enough for them not to hide the face
    faces = [Face(f.box, f.score, f.landmarks) for f in crowd.faces]
    small = draw_faces(photo, faces[:1])
    x, y = (int(round(v)) for v in crowd.faces[0].landmarks[2])
    assert (small[y, x] == 128).all()  # the nose of a 30 px face is not covered
    big = _crowd(1, 2 * LANDMARK_MIN_SIDE).faces[0]
    drawn = draw_faces(photo, [Face(big.box, big.score, big.landmarks)])
    x, y = (int(round(v)) for v in big.landmarks[2])
    assert not (drawn[y, x] == 128).all()  # a large face shows its landmarks


def _result_saying(label: str) -> GroupResult:
    """A result whose group label, face and only branch all say ``label`` (ABSTAIN: no face, no branch spoke)."""
    if label == ABSTAIN:
        silent = BranchResult(np.full(3, 1 / 3), 1.0, 0.0, False, (), "all", "face_aligned")
        return GroupResult(ABSTAIN, np.full(3, 1 / 3), {"aligned": silent}, [], True, True, W, H)
    probs = np.full(3, 0.1)
    probs[GROUP_CLASSES.index(label)] = 0.8
    face = FaceResult(Face(np.array(BOX), 0.998, np.zeros((5, 2))), label, probs, {"aligned": probs}, ("aligned",))
    branch = BranchResult(probs, 1.0, 1.0, True, (0,), "all", "face_aligned")
    return GroupResult(label, probs, {"aligned": branch}, [face], False, False, W, H)


@pytest.mark.parametrize("label", [*GROUP_CLASSES, ABSTAIN])
def test_each_label_is_drawn_in_its_own_colour(label):
    """A picture saying one label paints its swatches, face box and face tag in that label's colour alone.

    Only pixels no anti-aliased text can reach are read: inside the banner's filled swatches, on
    the middle of a box's edge, and the tag's outermost ring (its text is drawn 3 pixels in).
    """
    result = _result_saying(label)
    layout = annotation_layout(result)
    out = annotate(_photo(), result)
    want = np.array(LABEL_COLOURS[label], np.uint8)
    solid = [_inside(out, s).reshape(-1, 3) for s in layout.swatches]
    solid += [_edge(out, b) for b in layout.boxes]
    for tag in layout.tags:
        ring = _inside(out, tag).copy()
        ring[1:-1, 1:-1] = want
        solid.append(ring.reshape(-1, 3))
    pixels = np.concatenate(solid)
    assert len(pixels) > 50 and (pixels == want).all(), f"{label} drawn with another colour"
    assert len(layout.boxes) == (label != ABSTAIN)


# --------------------------------------------------------------------------- HTML report

class _Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _report() -> HtmlReport:
    rep = HtmlReport(max_side=320)
    rep.add("party/astronaut photo.jpg", _photo(), _face_result())
    rep.add("cup <b>&amp.png", _photo(), _no_face_result())
    return rep


def test_html_report_is_self_contained_and_shows_the_evidence():
    rep = _report()
    assert len(rep) == 2
    page = rep.render("2 photos, 1 faces, 1 failed", "weights: aligned=3, global=1",
                      [("broken <x>.jpg", "empty file (0 bytes)")])
    parser = _Tags()
    parser.feed(page)
    tags = parser.tags
    # nothing outside the page: no scripts, stylesheets, frames or links; images are data: URIs
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    assert not [a for _, a in tags if "href" in a]
    assert "http://" not in page and "https://" not in page and "url(" not in page
    imgs = [a for t, a in tags if t == "img"]
    assert len(imgs) == 2 and all(a["src"].startswith("data:image/jpeg;base64,") for a in imgs)
    for a in imgs:  # a real JPEG of the annotated photo, scaled to max_side
        jpeg = base64.b64decode(a["src"].split(",", 1)[1])
        thumb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert thumb is not None and max(thumb.shape[:2]) == 320 and thumb.shape[0] > thumb.shape[1] * H / W
    # every photo is named, the odd one escaped
    assert [a["alt"] for a in imgs] == ["party/astronaut photo.jpg", "cup <b>&amp.png"]
    assert "<h2>party/astronaut photo.jpg</h2>" in page
    assert html.escape("cup <b>&amp.png") in page and "cup <b>" not in page
    # skipped files with their reason, escaped
    assert html.escape("broken <x>.jpg") in page and "broken <x>" not in page and "empty file (0 bytes)" in page
    # per-face evidence: box, detection score, face label, each branch's scores, pooled in
    assert "<th>pooled in</th>" in page and "300, 150, 460, 350" in page and "0.998" in page
    assert page.count('<table class="faces"><tr><th>#</th>') == 1  # the no-face photo has no face table
    assert "<tr><td>1</td>" in page and "<tr><td>0</td>" not in page  # faces numbered from 1, as on the picture
    assert "Positive&nbsp;0.70" in page and "Pos&nbsp;0.70" in page
    # per-branch evidence: what each branch judges, including the branch that abstained
    assert "aligned faces, all" in page and "whole photo" in page
    assert "abstained (no face, or fewer than the bundle's min_faces)" in page
    assert silent_reason("global") == "not run: the face branches decide (fallback)"
    # a group's mood is a solid badge; the no-face photo's label is the scene's alone, outlined and said so
    assert page.count('<span class="label" ') == 1 and page.count('<span class="label scene" ') == 1
    assert "Negative <small>(scene only, no face found)</small>" in page
    assert "2 photos, 1 faces, 1 failed" in page and "weights: aligned=3, global=1" in page


def test_html_report_names_the_fallback_that_decided():
    rep = HtmlReport(max_side=64)
    rep.add("cup.png", _photo(), _no_face_result(fallback=True))
    rows = rep.render().split("<tr>")
    glob = next(r for r in rows if r.startswith("<td>global"))
    assert "<td>fallback</td><td>1.00</td>" in glob and FALLBACK_NOTE in glob  # not "weight 0" beside share 1
    assert "aligned faces, all" in next(r for r in rows if r.startswith("<td>aligned"))
    with_faces = HtmlReport(max_side=64)
    with_faces.add("party.jpg", _photo(), _face_result())
    assert "fallback" not in with_faces.render() and "scene only" not in with_faces.render()


def test_html_report_write_is_atomic_and_utf8(tmp_path):
    rep = _report()
    target = tmp_path / "sub" / "report.html"
    target.parent.mkdir()
    target.write_text("old page", encoding="utf-8")
    assert rep.write(target, "summary é", "settings") == target
    assert target.read_text(encoding="utf-8") == rep.render("summary é", "settings")
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary file left


def test_html_report_escapes_title_and_checks_options():
    page = HtmlReport(title="a <run>").render()
    assert "<title>a &lt;run&gt;</title>" in page and '<div class="photo">' not in page
    with pytest.raises(ValueError):
        HtmlReport(max_side=0)
    with pytest.raises(ValueError):
        HtmlReport(quality=101)


def test_describe_fusion_names_weights_pooling_and_bundle():
    rec = SimpleNamespace(weights={"aligned": 3.0, "nonaligned": 0.5, "global": 0.0},
                          branches={"aligned": SimpleNamespace(top_k=None, is_face=True),
                                    "nonaligned": SimpleNamespace(top_k=3, is_face=True),
                                    "global": SimpleNamespace(top_k=None, is_face=False)})
    assert describe_fusion(rec, "b/bundle.yaml") == ("weights: aligned=3, nonaligned=0.5, global=0; "
                                                     "pooling: aligned all, nonaligned top3; bundle: b/bundle.yaml")


@pytest.mark.integration
def test_import_loads_no_recognizer_and_has_no_side_effects(tmp_path):
    code = ("import sys, groupmood.report as r; "
            "assert 'groupmood.pipeline' not in sys.modules and 'yaml' not in sys.modules, 'heavy import'; "
            "import os; assert os.listdir('.') == [], os.listdir('.')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
