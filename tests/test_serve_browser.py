"""``groupmood serve``'s page in a real browser: headless Chromium driven over the DevTools protocol.

The real server (uvicorn, in a thread, on a free loopback port, with the shipped default bundle)
serves the page; Chromium opens it, and the real group photo is put into the page's file input
(``DOM.setFileInputFiles``, which fires the same ``change`` event as a person choosing it). Once the
page has its answer, what the browser drew is read back: one box per face of the JSON record,
inside the photo and in the face's label colour; the group label shown is the record's; clicking a
box highlights that face. A text file named .jpg shows its refusal in words, and at phone width
the page is no wider than the window. Chromium is spoken to over ``--remote-debugging-pipe``
(NUL-separated JSON on file descriptors 3 and 4), so no websocket library is needed. Skipped
where no Chromium is installed (``.ci/run`` installs it; ``GROUPMOOD_BROWSER`` names another).

``GROUPMOOD_SCREENSHOT=docs/serve.png`` also writes the README's screenshot (desktop width).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from groupmood.cli.predict import build_recognizer
from groupmood.pipeline import default_bundle_path
from groupmood.report import LABEL_COLOURS
from groupmood.serve import create_app


#: Puts two descriptors on 3 and 4, where --remote-debugging-pipe expects them, then becomes the browser.
_ON_FDS_3_AND_4 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                   "os.execv(sys.argv[3], sys.argv[3:])")


class Chromium:
    """Headless Chromium and a minimal DevTools-protocol client over its debugging pipe."""

    def __init__(self, binary: str, folder: Path) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        self._log = open(folder / "chromium.log", "wb")
        cmd = [sys.executable, "-c", _ON_FDS_3_AND_4, *map(str, high), binary, "--headless", "--no-sandbox",
               "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--remote-debugging-pipe",
               f"--user-data-dir={folder / 'profile'}", "--window-size=1280,900", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=high, stdout=self._log, stderr=self._log)
        for fd in high:
            os.close(fd)
        self._w, self._r = to_chrome_w, from_chrome_r
        self._buf = b""
        self._id = 0
        self.session = ""

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session once attached) and wait for its answer."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed its pipe (exit status {self.proc.poll()})")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url: str, width: int, height: int) -> None:
        """A new tab at ``url`` of ``width`` x ``height`` CSS pixels; returns once the page has loaded."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.size(width, height)
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && !!document.querySelector('#pick')")

    def size(self, width: int, height: int, mobile: bool = False) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=mobile)

    def eval(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait(self, expression: str, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.eval(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)
        return value

    def choose_files(self, *paths: Path) -> None:
        """Put files into the page's file input, as a person choosing them would."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector="#pick")["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> np.ndarray:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.proc.wait(10)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self._w, self._r):
            os.close(fd)
        self._log.close()


@pytest.fixture(scope="module")
def server(browser: str) -> str:
    """The real server with the default bundle on a free loopback port, in a thread; its base URL."""
    import uvicorn

    app = create_app(lambda: build_recognizer(None, "cpu"), default_bundle_path())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def chromium(browser: str, tmp_path_factory) -> Chromium:
    c = Chromium(browser, tmp_path_factory.mktemp("chromium"))
    yield c
    c.close()


_PROBE = """(() => {
  const card = document.querySelector('.photo');
  const img = card.querySelector('.stage img').getBoundingClientRect();
  const boxes = [...card.querySelectorAll('.stage svg rect')].map(r => {
    const b = r.getBoundingClientRect();
    return {left: b.left, top: b.top, right: b.right, bottom: b.bottom, stroke: r.getAttribute('stroke')};
  });
  return {state: card.dataset.state, label: card.querySelector('.label').textContent, boxes,
          img: {left: img.left, top: img.top, right: img.right, bottom: img.bottom, shown: img.width},
          decoded: card.querySelector('.stage img').naturalWidth, rows: card.querySelectorAll('tr.face').length,
          branchRows: card.querySelectorAll('table.branches tr').length - 1,
          record: window.groupmoodRecords[window.groupmoodRecords.length - 1],
          page: document.documentElement.scrollWidth, viewport: innerWidth};
})()"""


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


@pytest.mark.slow
def test_page_labels_the_group_photo_with_a_box_per_face(server: str, chromium: Chromium, tmp_path) -> None:
    from groupmood.samples import sample_path

    photo = tmp_path / "group.jpg"
    shutil.copy(sample_path("group"), photo)
    chromium.open(server + "/", 1280, 900)
    chromium.choose_files(photo)
    chromium.wait("document.querySelector('.photo') && document.querySelector('.photo').dataset.state !== 'working'")
    seen = chromium.eval(_PROBE)
    assert seen["state"] == "done", chromium.eval("document.querySelector('.photo').textContent")
    record = seen["record"]
    direct = httpx.post(server + "/v1/predict", files=[("files", ("group.jpg", photo.read_bytes()))], timeout=120)
    assert record == direct.json()["records"][0]  # the page shows what the API answers
    assert record["n_faces"] == 5 and len(seen["boxes"]) == len(record["faces"]) == seen["rows"]
    assert seen["label"] == record["label"] and seen["branchRows"] == len(record["branches"])
    assert seen["decoded"] == record["width"] and seen["img"]["shown"] > 300
    scale = seen["img"]["shown"] / record["width"]
    for box, face in zip(seen["boxes"], record["faces"]):  # each box where the face is, in its label's colour
        assert box["stroke"] == _hex(LABEL_COLOURS[face["label"]])
        x1, y1, x2, y2 = face["box"]
        assert abs(box["left"] - (seen["img"]["left"] + x1 * scale)) < 2
        assert abs(box["bottom"] - (seen["img"]["top"] + y2 * scale)) < 2
        assert seen["img"]["left"] - 1 <= box["left"] < box["right"] <= seen["img"]["right"] + 1
    assert seen["page"] <= seen["viewport"]

    shot = chromium.screenshot()
    assert shot.shape[:2] == (900, 1280) and shot.std() > 20
    badge = np.array(LABEL_COLOURS[record["label"]])
    assert (np.abs(shot.reshape(-1, 3).astype(int) - badge).max(axis=1) <= 3).sum() > 200
    target = os.environ.get("GROUPMOOD_SCREENSHOT")
    if target:
        from PIL import Image

        Image.fromarray(shot).quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)

    box = seen["boxes"][2]  # a real click in the middle of the third face highlights it and its row
    chromium.click((box["left"] + box["right"]) / 2, (box["top"] + box["bottom"]) / 2)
    picked = chromium.eval("[...document.querySelectorAll('.photo .sel')].map(e => e.tagName + e.dataset.face)")
    assert sorted(picked) == ["TR2", "g2"]

    chromium.size(400, 800, mobile=True)  # phone width: nothing wider than the window
    narrow = chromium.wait("document.documentElement.scrollWidth <= innerWidth && "
                           "({page: document.documentElement.scrollWidth, "
                           "img: document.querySelector('.stage img').getBoundingClientRect().right, "
                           "table: document.querySelector('table.branches').getBoundingClientRect().right})")
    assert narrow["img"] <= 400 and narrow["table"] <= 400


@pytest.mark.slow
def test_page_shows_a_refusal_in_words(server: str, chromium: Chromium, tmp_path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo\n")
    chromium.open(server + "/", 1280, 900)
    chromium.choose_files(notes)
    chromium.wait("document.querySelector('.photo') && document.querySelector('.photo').dataset.state === 'error'")
    shown = chromium.eval("document.querySelector('.photo .error').textContent")
    assert shown == "Refused (415): not an image file (format not recognised from its content)"
