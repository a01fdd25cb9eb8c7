"""``groupmood serve``'s page in a real browser: headless Chromium driven over the DevTools protocol.

The real server (uvicorn, in a thread, on a free loopback port, with the shipped default bundle)
serves the page; Chromium (:mod:`_chromium`) opens it, and the real group photo is put into the
page's file input (``DOM.setFileInputFiles``, which fires the same ``change`` event as a person
choosing it). Once the page has its answer, what the browser drew is read back: one box per face of
the JSON record, inside the photo and in the face's label colour; the group label shown is the
record's; clicking a box highlights that face. A photo without a face shows its label as the
scene's alone, the whole-image branch as the fallback that decided. A text file named .jpg shows its
refusal in words. At 500 and 400 px the page is no wider than the window (a failure names the
elements sticking out), with a long file name, with a made-up crowd of 40 faces and, where
../shared/data is present, with the real 38-face photo. Skipped where no Chromium is installed
(``.ci/run`` installs it; ``GROUPMOOD_BROWSER`` names another). ``scripts/make_docs_pictures.py``
takes docs/serving.md's screenshot with the same driver.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from _chromium import Chromium, assert_fits
from conftest import shared_path
from serving import running_server

from groupmood.cli.predict import build_recognizer
from groupmood.pipeline import default_bundle_path
from groupmood.report import FALLBACK_NOTE, LABEL_COLOURS
from groupmood.serve import create_app

pytestmark = pytest.mark.integration  # a real Chromium and a real server

#: A file name with no place to break a line, longer than a phone is wide.
LONG_NAME = "the_whole_team_at_the_summer_picnic_by_the_lake_after_the_relay_race_2017_final_v2.jpg"
#: The page is ready for a photo.
READY = "!!document.querySelector('#pick')"


@pytest.fixture(scope="module")
def server(browser: str) -> str:
    """The real server with the default bundle on a free loopback port, in a thread; its base URL."""
    app = create_app(lambda: build_recognizer(None, "cpu"), default_bundle_path())
    with running_server(app, start_timeout=120) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def chromium(browser: str, tmp_path_factory) -> Chromium:
    with Chromium(browser, tmp_path_factory.mktemp("chromium")) as c:
        yield c


_PROBE = """(() => {
  const card = document.querySelector('.photo');
  const img = card.querySelector('.stage img').getBoundingClientRect();
  const boxes = [...card.querySelectorAll('.stage svg rect')].map(r => {
    const b = r.getBoundingClientRect();
    return {left: b.left, top: b.top, right: b.right, bottom: b.bottom, stroke: r.getAttribute('stroke')};
  });
  const label = card.querySelector('.label');
  const cells = [...card.querySelectorAll('table.branches tr')].slice(1).map(r => [...r.cells].map(c => c.textContent));
  return {state: card.dataset.state, label: label.textContent, scene: label.classList.contains('scene'),
          background: getComputedStyle(label).backgroundColor, border: getComputedStyle(label).borderTopColor, boxes,
          img: {left: img.left, top: img.top, right: img.right, bottom: img.bottom, shown: img.width},
          decoded: card.querySelector('.stage img').naturalWidth, rows: card.querySelectorAll('tr.face').length,
          numbers: [...card.querySelectorAll('tr.face')].map(r => r.cells[0].textContent),
          tags: [...card.querySelectorAll('.stage svg text')].map(t => t.textContent), branches: cells,
          crowd: (card.querySelector('.crowd') || {}).textContent,
          record: window.groupmoodRecords[window.groupmoodRecords.length - 1]};
})()"""


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def _rgb(rgb: tuple[int, int, int]) -> str:
    return "rgb(%d, %d, %d)" % rgb


def _label(chromium: Chromium, server: str, *photos: Path) -> None:
    """Open the page and choose ``photos``; return once every one has its answer."""
    chromium.open(server + "/", 1280, 900, READY)
    chromium.choose_files(*photos)
    chromium.wait(f"document.querySelectorAll('.photo').length === {len(photos)} && "
                  "![...document.querySelectorAll('.photo')].some(c => c.dataset.state === 'working')")


@pytest.mark.slow
def test_page_labels_the_group_photo_with_a_box_per_face(server: str, chromium: Chromium, tmp_path) -> None:
    from groupmood.samples import sample_path

    photo = tmp_path / LONG_NAME
    shutil.copy(sample_path("group"), photo)
    _label(chromium, server, photo)
    seen = chromium.eval(_PROBE)
    assert seen["state"] == "done", chromium.eval("document.querySelector('.photo').textContent")
    record = seen["record"]
    direct = httpx.post(server + "/v1/predict", files=[("files", (LONG_NAME, photo.read_bytes()))], timeout=120)
    assert record == direct.json()["records"][0]  # the page shows what the API answers
    assert record["n_faces"] == 5 and len(seen["boxes"]) == len(record["faces"]) == seen["rows"]
    assert seen["numbers"] == seen["tags"] == ["1", "2", "3", "4", "5"]  # numbered from 1, as in the report
    assert seen["label"] == record["label"] and not seen["scene"]  # a group's mood: the solid badge
    assert seen["background"] == _rgb(LABEL_COLOURS[record["label"]])
    assert [row[0] for row in seen["branches"]] == [  # each branch named with what it judges
        "groupnon-aligned faces, all", "group_crowdnon-aligned faces, all", "scenewhole photo",
        "nonalignednon-aligned faces, 3 largest", "globalwhole photo"]
    assert seen["branches"][4][1:4] == ["0", "0.00", "not run: the face branches decide (fallback)"]
    assert seen["crowd"] == f"crowd {record['crowd']:.2f}"  # the gate's mix of the photo and crowd regimes
    assert seen["decoded"] == record["width"] and seen["img"]["shown"] > 300
    scale = seen["img"]["shown"] / record["width"]
    for box, face in zip(seen["boxes"], record["faces"]):  # each box where the face is, in its label's colour
        assert box["stroke"] == _hex(LABEL_COLOURS[face["label"]])
        x1, y1, x2, y2 = face["box"]
        assert abs(box["left"] - (seen["img"]["left"] + x1 * scale)) < 2
        assert abs(box["bottom"] - (seen["img"]["top"] + y2 * scale)) < 2
        assert seen["img"]["left"] - 1 <= box["left"] < box["right"] <= seen["img"]["right"] + 1
    assert_fits(chromium, 1280)

    shot = chromium.screenshot()
    assert shot.shape[:2] == (900, 1280) and shot.std() > 20
    badge = np.array(LABEL_COLOURS[record["label"]])
    assert (np.abs(shot.reshape(-1, 3).astype(int) - badge).max(axis=1) <= 3).sum() > 200

    box = seen["boxes"][2]  # a real click in the middle of the third face highlights it and its row
    chromium.click((box["left"] + box["right"]) / 2, (box["top"] + box["bottom"]) / 2)
    picked = chromium.eval("[...document.querySelectorAll('.photo .sel')].map(e => e.tagName + e.dataset.face)")
    assert sorted(picked) == ["TR2", "g2"]

    for width in (500, 400):  # a narrow window, a phone: nothing wider than the window
        assert_fits(chromium, width)
    assert_fits(chromium, 400, 800, mobile=True)


@pytest.mark.slow
def test_page_shows_a_photo_without_faces_as_the_scene_alone(server: str, chromium: Chromium, tmp_path,
                                                             coffee) -> None:
    from groupmood.io import write_image

    write_image(tmp_path / "coffee.png", coffee)
    _label(chromium, server, tmp_path / "coffee.png")
    seen = chromium.eval(_PROBE)
    record = seen["record"]
    assert record["no_face"] and seen["rows"] == 0 and seen["boxes"] == []
    # the whole-image branch's guess about the scene, not a group's mood: outlined, and said so
    assert seen["scene"] and seen["label"] == f"{record['label']} (scene only, no face found)"
    assert seen["background"] == "rgb(255, 255, 255)" and seen["border"] == _rgb(LABEL_COLOURS[record["label"]])
    names = [row[0] for row in seen["branches"]]
    glob, scene = seen["branches"][names.index("globalwhole photo")], seen["branches"][names.index("scenewhole photo")]
    crowd = record["crowd"]  # the photo regime's fallback and the crowd regime's scene branch share the vote
    assert glob[1] == "fallback" and glob[2] == f"{1 - crowd:.2f}" and glob[3].startswith(FALLBACK_NOTE)
    assert scene[2] == f"{crowd:.2f}"
    assert [row[2] for row in seen["branches"] if "faces" in row[0]] == ["0.00"] * 3
    for width in (500, 400):
        assert_fits(chromium, width)


def _crowd_js(n: int) -> str:
    """JavaScript showing the page's last record again with its faces repeated into ``n`` small ones, under a long name."""
    return f"""(() => {{
  const rec = structuredClone(window.groupmoodRecords[window.groupmoodRecords.length - 1]);
  const face = rec.faces[0];
  rec.faces = Array.from({{length: {n}}}, (_, k) => {{
    const x = 10 + (k % 10) * (rec.width - 20) / 10, y = 10 + Math.floor(k / 10) * (rec.height - 20) / 5;
    return {{...face, box: [x, y, x + rec.width / 14, y + rec.height / 8]}};
  }});
  rec.n_faces = rec.faces.length;
  const card = $("div", {{class: "photo"}}, $("div", {{class: "stage"}}, $("img", {{alt: "crowd",
                 src: document.querySelector(".stage img").src}})),
                 $("div", {{class: "info"}}, $("h2", {{text: "crowd_" + "{LONG_NAME}"}}), $("p", {{class: "working"}})));
  document.getElementById("results").prepend(card);
  showRecord(card, rec);
  return card.querySelectorAll("tr.face").length;
}})()"""


@pytest.mark.slow
def test_page_of_a_crowd_fits_narrow_windows(server: str, chromium: Chromium, tmp_path) -> None:
    from groupmood.samples import sample_path

    photo = tmp_path / "group.jpg"
    shutil.copy(sample_path("group"), photo)
    _label(chromium, server, photo)
    assert chromium.eval(_crowd_js(40)) == 40
    assert chromium.eval("document.querySelectorAll('.photo .stage svg rect').length") == 45
    for width in (500, 400):
        assert_fits(chromium, width)


@pytest.mark.slow
@pytest.mark.shared
def test_page_of_the_38_face_photo_fits_narrow_windows(server: str, chromium: Chromium, tmp_path) -> None:
    photo = tmp_path / LONG_NAME
    shutil.copy(shared_path("multiemova-dev", "Positive", "Q441.jpg"), photo)
    _label(chromium, server, photo)
    seen = chromium.eval(_PROBE)
    assert seen["state"] == "done" and seen["rows"] == len(seen["boxes"]) >= 30
    for width in (500, 400):
        assert_fits(chromium, width)


@pytest.mark.slow
def test_page_shows_a_refusal_in_words(server: str, chromium: Chromium, tmp_path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo\n")
    chromium.open(server + "/", 1280, 900, READY)
    chromium.choose_files(notes)
    chromium.wait("document.querySelector('.photo') && document.querySelector('.photo').dataset.state === 'error'")
    shown = chromium.eval("document.querySelector('.photo .error').textContent")
    assert shown == "Refused (415): not an image file (format not recognised from its content)"
