"""The page of ``groupmood predict --report`` opened in a real browser (headless Chromium).

The default bundle labels two real photos (one with a face, one without) and writes the report;
Chromium then loads it from disk, at a desktop and at a phone width. A probe script, appended to a
copy of the page, reads what the browser laid out: every thumbnail decoded and on screen, the
probability bars as wide as their numbers, no page wider than the window, each photo's branch
table inside its column. A screenshot of the page itself shows the label colours. Skipped where
no Chromium is installed (``.ci/run`` installs it; ``GROUPMOOD_BROWSER`` names another binary).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from groupmood.cli import main
from groupmood.io import write_image
from groupmood.report import LABEL_COLOURS

_PROBE = """<script>
addEventListener("load", () => {
  const imgs = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {alt: i.alt, decoded: i.complete && i.naturalWidth > 0, width: r.width, left: r.left, right: r.right};
  });
  const width = (bar, part) => bar.querySelector(part).getBoundingClientRect().width;
  const bars = [...document.querySelectorAll(".bar")].map(b => ({
    value: parseFloat(b.lastElementChild.textContent), ratio: width(b, ".fill") / width(b, ".track"),
  }));
  const branchTables = [...document.querySelectorAll("table")].filter(t => t.rows[0].cells[0].textContent === "branch")
    .map(t => ({right: t.getBoundingClientRect().right, box: t.parentElement.getBoundingClientRect().right}));
  const out = {imgs, bars, branchTables, viewport: innerWidth, page: document.documentElement.scrollWidth,
               labels: [...document.querySelectorAll(".label")].map(e => e.textContent)};
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(browser: str, page: Path, width: int, *args: str) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={page.parent / 'profile'}", f"--window-size={width},900",
           "--virtual-time-budget=5000", *args, page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def report(browser, tmp_path_factory, astronaut, coffee, detector) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    write_image(folder / "photos" / "astronaut.jpg", astronaut)
    write_image(folder / "photos" / "coffee.png", coffee)
    page = folder / "report.html"
    rc = main(["predict", str(folder / "photos"), "-o", str(folder / "pred.jsonl"), "--report", str(page),
               "--no-progress"])
    assert rc == 0
    return page


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 500])  # a desktop, and the narrowest headless window
def test_report_renders_in_chromium(browser: str, report: Path, width: int) -> None:
    probed = report.with_name(f"probed_{width}.html")
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(browser, probed, width, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert [i["alt"] for i in seen["imgs"]] == ["astronaut.jpg", "coffee.png"]
    for img in seen["imgs"]:  # decoded, visible, inside the window
        assert img["decoded"] and img["width"] > 100 and img["left"] >= 0 and img["right"] <= seen["viewport"], img
    assert seen["page"] <= seen["viewport"], "the page is wider than the window"
    assert len(seen["branchTables"]) == 2
    for table in seen["branchTables"]:  # the branch table fits its column (the face table may scroll)
        assert table["right"] <= table["box"] + 1, table
    preds = {json.loads(ln)["file"].split("/")[-1]: json.loads(ln)
             for ln in (report.parent / "pred.jsonl").read_text().splitlines()}
    assert seen["labels"] == [preds["astronaut.jpg"]["label"], preds["coffee.png"]["label"]]
    assert len(seen["bars"]) >= 6
    for bar in seen["bars"]:  # each bar is drawn as wide as its probability
        assert abs(bar["ratio"] - bar["value"]) < 0.02, bar


@pytest.mark.slow
def test_report_screenshot_shows_the_label_colours(browser: str, report: Path) -> None:
    shot = report.with_name("shot.png")
    _chromium(browser, report, 1280, f"--screenshot={shot}")
    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] == 1280
    rgb = img[:, :, ::-1].reshape(-1, 3).astype(int)
    labels = [json.loads(ln)["label"] for ln in (report.parent / "pred.jsonl").read_text().splitlines()]
    for label in labels:  # the label badge is painted in its colour
        colour = np.array(LABEL_COLOURS[label])
        assert (np.abs(rgb - colour).max(axis=1) <= 3).sum() > 200, label
    assert rgb.std() > 20  # photos, text and bars, not a blank page
