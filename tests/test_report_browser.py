"""The page of ``groupmood predict --report`` opened in a real browser (headless Chromium).

The default bundle labels two real photos (the five-person sample under a long file name, and a
cup of coffee with no face) and writes the report; Chromium loads it from disk (driven over the
DevTools protocol, :mod:`_chromium`) in windows 1280, 500 and 400 px wide and reads back what it
laid out: every thumbnail decoded and on screen, the probability bars as wide as their numbers,
nothing wider than the window (a failure names the elements sticking out), each branch table
inside its column, the no-face photo's label shown as the scene's alone. The same width check runs
on a made-up crowd of 40 faces with long names, and, where ../shared/data is present, on the real
38-face photo of multiemova-dev. A screenshot shows the label colours. Skipped where no Chromium is
installed (``.ci/run`` installs it; ``GROUPMOOD_BROWSER`` names another binary).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _chromium import Chromium, assert_fits
from conftest import shared_path

from groupmood.cli import main
from groupmood.detect import Face
from groupmood.io import write_image
from groupmood.labels import GROUP_CLASSES
from groupmood.pipeline import BranchResult, FaceResult, GroupResult
from groupmood.report import LABEL_COLOURS, HtmlReport

pytestmark = pytest.mark.integration  # a real Chromium; the default bundle through the CLI

#: A file name with no place to break a line, longer than a phone is wide.
LONG_NAME = "the_whole_team_at_the_summer_picnic_by_the_lake_after_the_relay_race_2017_final_v2.jpg"

_PROBE = """(() => {
  const imgs = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {alt: i.alt, decoded: i.complete && i.naturalWidth > 0, width: r.width, left: r.left, right: r.right};
  });
  const width = (bar, part) => bar.querySelector(part).getBoundingClientRect().width;
  const bars = [...document.querySelectorAll(".bar")].map(b => ({
    value: parseFloat(b.lastElementChild.textContent), ratio: width(b, ".fill") / width(b, ".track"),
  }));
  const branchTables = [...document.querySelectorAll("table.branches")].map(t => ({
    right: t.getBoundingClientRect().right, column: t.closest(".info").getBoundingClientRect().right}));
  const labels = [...document.querySelectorAll(".label")].map(e => {
    const r = e.getBoundingClientRect();
    return {text: e.textContent, scene: e.classList.contains("scene"), background: getComputedStyle(e).backgroundColor,
            border: getComputedStyle(e).borderTopColor, rect: [r.left, r.top, r.right, r.bottom]};
  });
  const faceNumbers = [...document.querySelectorAll("table.faces")].map(t => [...t.rows].slice(1).map(r => r.cells[0].textContent));
  return {imgs, bars, branchTables, labels, faceNumbers};
})()"""


def _rgb(rgb: tuple[int, int, int]) -> str:
    return "rgb(%d, %d, %d)" % rgb


@pytest.fixture(scope="module")
def chromium(browser: str, tmp_path_factory) -> Chromium:
    with Chromium(browser, tmp_path_factory.mktemp("chromium")) as c:
        yield c


@pytest.fixture(scope="module")
def report(browser, tmp_path_factory, coffee) -> Path:
    from groupmood.samples import sample_path

    folder = tmp_path_factory.mktemp("browser")
    (folder / "photos").mkdir()
    shutil.copy(sample_path("group"), folder / "photos" / LONG_NAME)
    write_image(folder / "photos" / "coffee.png", coffee)
    page = folder / "report.html"
    rc = main(["predict", str(folder / "photos"), "-o", str(folder / "pred.jsonl"), "--report", str(page),
               "--no-progress"])
    assert rc == 0
    return page


def _records(report: Path) -> dict[str, dict]:
    lines = (report.parent / "pred.jsonl").read_text().splitlines()
    return {json.loads(ln)["file"].split("/")[-1]: json.loads(ln) for ln in lines}


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 500, 400])  # a desktop, a narrow window, a phone
def test_report_renders_in_chromium(chromium: Chromium, report: Path, width: int) -> None:
    chromium.open(report.as_uri(), width, 900)
    assert_fits(chromium, width)
    seen = chromium.eval(_PROBE)
    assert [i["alt"] for i in seen["imgs"]] == ["coffee.png", LONG_NAME]
    for img in seen["imgs"]:  # decoded, visible, inside the window
        assert img["decoded"] and img["width"] > 100 and img["left"] >= 0 and img["right"] <= width, img
    assert len(seen["branchTables"]) == 2
    for table in seen["branchTables"]:  # the branch table fits its column (the face table may scroll in its box)
        assert table["right"] <= table["column"] + 1, table
    recs = _records(report)
    group, cup = recs[LONG_NAME], recs["coffee.png"]
    assert seen["faceNumbers"] == [[str(k) for k in range(1, group["n_faces"] + 1)]]  # numbered from 1
    scene, solid = seen["labels"]
    # the cup's label is the whole-image branch's guess: outlined and said so; the group's is solid
    assert scene["scene"] and scene["text"] == f"{cup['label']} (scene only, no face found)"
    assert scene["background"] == "rgb(255, 255, 255)" and scene["border"] == _rgb(LABEL_COLOURS[cup["label"]])
    assert not solid["scene"] and solid["text"] == group["label"]
    assert solid["background"] == _rgb(LABEL_COLOURS[group["label"]])
    assert len(seen["bars"]) >= 6
    for bar in seen["bars"]:  # each bar is drawn as wide as its probability
        assert abs(bar["ratio"] - bar["value"]) < 0.02, bar


@pytest.mark.slow
def test_report_screenshot_shows_the_label_colours(chromium: Chromium, report: Path) -> None:
    chromium.open(report.as_uri(), 1280, 1600)  # tall enough for both photos' badges
    seen = chromium.eval(_PROBE)
    shot = chromium.screenshot().astype(int)
    assert shot.shape[:2] == (1600, 1280) and shot.std() > 20  # photos, text and bars, not a blank page
    recs = _records(report)
    for badge, rec in zip(seen["labels"], (recs["coffee.png"], recs[LONG_NAME])):
        x1, y1, x2, y2 = (int(round(v)) for v in badge["rect"])
        assert 0 <= y1 < y2 <= shot.shape[0], ("the badge is outside the screenshot", badge)
        inside = shot[y1 + 3:y2 - 3, x1 + 3:x2 - 3].reshape(-1, 3)  # within the badge's border
        painted = (np.abs(inside - np.array(LABEL_COLOURS[rec["label"]])).max(axis=1) <= 3).mean()
        if badge["scene"]:  # outlined: its colour only on the border
            assert painted < 0.05, (badge, painted)
            ring = shot[y1:y2, x1:x2].reshape(-1, 3)
            assert (np.abs(ring - np.array(LABEL_COLOURS[rec["label"]])).max(axis=1) <= 3).sum() > 20, badge
        else:  # solid in the label's colour, apart from its white text
            assert painted > 0.5, (badge, painted)


def _crowd(n: int = 40, width: int = 1600, height: int = 900) -> GroupResult:
    """A made-up result of ``n`` small faces in rows, every branch speaking, labels in turn."""
    faces = []
    for k in range(n):
        x, y = 30 + (k % 10) * 150, 60 + (k // 10) * 200
        probs = np.full(3, 0.15)
        probs[k % 3] = 0.7
        faces.append(FaceResult(Face(np.array([x, y, x + 60, y + 70], float), 0.99, np.zeros((5, 2))), GROUP_CLASSES[k % 3],
                                probs, {"group": probs, "aligned": probs, "nonaligned": probs},
                                ("group", "aligned", "nonaligned")))
    fused = np.array([0.2, 0.3, 0.5])
    branches = {"group": BranchResult(fused, 0.8, 0.8, True, tuple(range(n)), "all", "face_nonaligned"),
                "aligned": BranchResult(fused, 0.0, 0.0, True, tuple(range(n)), "all", "face_aligned"),
                "nonaligned": BranchResult(fused, 0.2, 0.2, True, (0, 1, 2), "top3", "face_nonaligned"),
                "global": BranchResult(np.full(3, 1 / 3), 0.0, 0.0, False, (), "image", "global")}
    return GroupResult("Positive", fused, branches, faces, False, False, width, height)


@pytest.mark.slow
@pytest.mark.parametrize("width", [500, 400])
def test_report_of_a_crowd_with_long_names_fits_the_window(chromium: Chromium, tmp_path, width: int) -> None:
    rep = HtmlReport()
    rep.add(LONG_NAME, np.full((900, 1600, 3), 90, np.uint8), _crowd())
    bundle = "/home/runner/work/groupmood/groupmood/.venv/lib/python3.12/site-packages/groupmood/assets/bundle.yaml"
    page = rep.write(tmp_path / "report.html", "1 photos, 40 faces, 1 failed",
                     f"weights: group=0.8, aligned=0, nonaligned=0.2, global=0; bundle: {bundle}",
                     [(f"/data/uploads/{LONG_NAME.replace('.jpg', '_copy.jpg')}", "empty file (0 bytes)")])
    chromium.open(page.as_uri(), width, 900)
    assert_fits(chromium, width)
    seen = chromium.eval(_PROBE)
    assert seen["faceNumbers"] == [[str(k) for k in range(1, 41)]]
    assert all(t["right"] <= t["column"] + 1 for t in seen["branchTables"]), seen["branchTables"]


@pytest.mark.slow
@pytest.mark.shared
def test_report_of_the_38_face_photo_fits_the_window(chromium: Chromium, tmp_path) -> None:
    crowd = shared_path("multiemova-dev", "Positive", "Q441.jpg")
    (tmp_path / "photos").mkdir()
    shutil.copy(crowd, tmp_path / "photos" / LONG_NAME)
    page = tmp_path / "report.html"
    assert main(["predict", str(tmp_path / "photos"), "-o", str(tmp_path / "pred.jsonl"), "--report", str(page),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "pred.jsonl").read_text())["n_faces"] >= 30
    chromium.open(page.as_uri(), 1280, 900)
    for width in (500, 400):
        assert_fits(chromium, width)
