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
from groupmood.report import LABEL_COLOURS, HtmlReport, annotate, describe_fusion, silent_reason

H, W = 600, 800
BOX = (300.0, 150.0, 460.0, 350.0)


def _photo() -> np.ndarray:
    """A flat grey photo: every pixel that differs from it was drawn."""
    return np.full((H, W, 3), 128, np.uint8)


def _face_result() -> GroupResult:
    """One Positive face in BOX; the aligned branch spoke, the global branch too."""
    probs = np.array([0.1, 0.2, 0.7])
    landmarks = np.array([[340, 220], [420, 220], [380, 260], [350, 300], [410, 300]], float)
    face = FaceResult(np.array(BOX), 0.998, landmarks, "Positive", probs, {"aligned": probs}, ("aligned",))
    branches = {"aligned": BranchResult(probs, 3.0, 0.75, True, (0,), "all", "face_aligned"),
                "global": BranchResult(np.array([0.5, 0.3, 0.2]), 1.0, 0.25, True, (), "image", "global")}
    return GroupResult("Positive", np.array([0.2, 0.225, 0.575]), branches, [face], False, False, W, H)


def _no_face_result() -> GroupResult:
    """No face: the aligned branch abstained, the global branch decided alone."""
    g = np.array([0.6, 0.3, 0.1])
    branches = {"aligned": BranchResult(np.full(3, 1 / 3), 3.0, 0.0, False, (), "all", "face_aligned"),
                "global": BranchResult(g, 1.0, 1.0, True, (), "image", "global")}
    return GroupResult("Negative", g, branches, [], True, False, W, H)


def _has_colour(region: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((region == np.array(rgb, np.uint8)).all(axis=-1).any())


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
    assert not _has_colour(below[y1 + 20:y2 - 10, x1 + 10:x1 + 20], colour)  # inside the box: the photo
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


def _result_saying(label: str) -> GroupResult:
    """A result whose group label, face and only branch all say ``label`` (ABSTAIN: no face, no branch spoke)."""
    if label == ABSTAIN:
        silent = BranchResult(np.full(3, 1 / 3), 1.0, 0.0, False, (), "all", "face_aligned")
        return GroupResult(ABSTAIN, np.full(3, 1 / 3), {"aligned": silent}, [], True, True, W, H)
    probs = np.full(3, 0.1)
    probs[GROUP_CLASSES.index(label)] = 0.8
    face = FaceResult(np.array(BOX), 0.998, np.zeros((5, 2)), label, probs, {"aligned": probs}, ("aligned",))
    branch = BranchResult(probs, 1.0, 1.0, True, (0,), "all", "face_aligned")
    return GroupResult(label, probs, {"aligned": branch}, [face], False, False, W, H)


@pytest.mark.parametrize("label", [*GROUP_CLASSES, ABSTAIN])
def test_each_label_is_drawn_in_its_own_colour(label):
    """A picture saying one label shows that label's colour and no other label's.

    A few pixels of anti-aliased white text can match the grey of Abstain, so colours are counted.
    """
    out = annotate(_photo(), _result_saying(label))

    def count(rgb: tuple[int, int, int]) -> int:
        return int((out == np.array(rgb, np.uint8)).all(axis=-1).sum())

    assert count(LABEL_COLOURS[label]) > 500
    for other in {*GROUP_CLASSES, ABSTAIN} - {label}:
        assert count(LABEL_COLOURS[other]) < 20, f"{label} drawn with {other}'s colour"


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
        assert thumb is not None and thumb.shape[1] == 320 and thumb.shape[0] > 320 * H / W
    # every photo is named, the odd one escaped
    assert [a["alt"] for a in imgs] == ["party/astronaut photo.jpg", "cup <b>&amp.png"]
    assert "<h2>party/astronaut photo.jpg</h2>" in page
    assert html.escape("cup <b>&amp.png") in page and "cup <b>" not in page
    # skipped files with their reason, escaped
    assert html.escape("broken <x>.jpg") in page and "broken <x>" not in page and "empty file (0 bytes)" in page
    # per-face evidence: box, detection score, face label, each branch's scores, pooled in
    assert "<th>pooled in</th>" in page and "300, 150, 460, 350" in page and "0.998" in page
    assert page.count('<table><tr><th>#</th>') == 1  # the no-face photo has no face table
    assert "Positive 0.70" in page and "Pos&nbsp;0.70" in page
    # per-branch evidence, including the branch that abstained
    assert "abstained (no face, or fewer than the bundle's min_faces)" in page and "no face found" in page
    assert silent_reason("global") == "not run: the face branches decide (fallback)"
    assert "2 photos, 1 faces, 1 failed" in page and "weights: aligned=3, global=1" in page


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


def test_import_loads_no_recognizer_and_has_no_side_effects(tmp_path):
    code = ("import sys, groupmood.report as r; "
            "assert 'groupmood.pipeline' not in sys.modules and 'yaml' not in sys.modules, 'heavy import'; "
            "import os; assert os.listdir('.') == [], os.listdir('.')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
