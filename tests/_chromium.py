"""Headless Chromium driven over the DevTools protocol, for the browser tests and the docs' pictures.

Chromium is spoken to over ``--remote-debugging-pipe`` (NUL-separated JSON on file descriptors 3
and 4), so no websocket library is needed. A window of any width is emulated
(``Emulation.setDeviceMetricsOverride``): ``--window-size`` cannot go below 500 px in headless
mode. :data:`OVERFLOW_JS` names the elements that stick out of the window, so a test that finds a
page too wide says which element made it so. Used by ``tests/test_*_browser.py`` and
``scripts/make_docs_pictures.py``.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["OVERFLOW_JS", "Chromium", "assert_fits", "find_browser", "save_png"]

#: Puts two descriptors on 3 and 4, where --remote-debugging-pipe expects them, then becomes the browser.
_ON_FDS_3_AND_4 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                   "os.execv(sys.argv[3], sys.argv[3:])")

#: The page's width, the window's, and each element or run of text reaching past the window's right edge (tag,
#: class, the start of its text, its right edge), leaving out what a scrolling box of its own keeps in the window.
OVERFLOW_JS = """(() => {
  const vw = document.documentElement.clientWidth;
  const clipped = el => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX;
      if (ox !== "visible" && ox !== "clip" && p.getBoundingClientRect().right <= vw + 0.5) return true;
    }
    return false;
  };
  const describe = (el, right, text) => ({tag: el.tagName.toLowerCase(), cls: String(el.getAttribute("class") || ""),
    text: (text || el.textContent || el.getAttribute("alt") || "").trim().slice(0, 50), right: Math.round(right)});
  const wide = [...document.body.querySelectorAll("*")].filter(el => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > vw + 0.5 && !clipped(el);
  }).map(el => describe(el, el.getBoundingClientRect().right));
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    const range = document.createRange();
    range.selectNodeContents(t);
    const right = Math.max(0, ...[...range.getClientRects()].map(r => r.right));
    if (right > vw + 0.5 && !clipped(t)) wide.push(describe(t.parentElement, right, "text: " + t.textContent.trim()));
  }
  return {page: document.documentElement.scrollWidth, window: vw, viewport: innerWidth, wide};
})()"""


def find_browser() -> str | None:
    """A headless-capable Chromium: ``GROUPMOOD_BROWSER`` or the first of chromium, chromium-browser, google-chrome."""
    for name in (os.environ.get("GROUPMOOD_BROWSER"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


class Chromium:
    """Headless Chromium and a minimal DevTools-protocol client over its debugging pipe.

    ``folder`` holds the browser profile and its log; the caller owns it (a temporary folder).
    """

    def __init__(self, binary: str, folder: Path) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        self._log = open(folder / "chromium.log", "wb")
        cmd = [sys.executable, "-c", _ON_FDS_3_AND_4, *map(str, high), binary, "--headless", "--no-sandbox",
               "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--remote-debugging-pipe",
               "--font-render-hinting=none", f"--user-data-dir={folder / 'profile'}", "--window-size=1280,900",
               "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=high, stdout=self._log, stderr=self._log)
        for fd in high:
            os.close(fd)
        self._w, self._r = to_chrome_w, from_chrome_r
        self._buf = b""
        self._id = 0
        self.session = ""

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def version(self) -> str:
        """The browser's product and version, e.g. ``HeadlessChrome/156.0.8078.129``."""
        return str(self.call("Browser.getVersion")["product"])

    def open(self, url: str, width: int, height: int, ready: str = "true") -> None:
        """A new tab at ``url`` of ``width`` x ``height`` CSS pixels; returns once it has loaded and ``ready`` holds."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.size(width, height)
        self.call("Page.navigate", url=url)
        self.wait(f"document.readyState === 'complete' && ({ready})")

    def size(self, width: int, height: int, mobile: bool = False) -> None:
        """Lay the page out in a window of ``width`` x ``height`` CSS pixels (``mobile``: as a phone)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=mobile)

    def eval(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait(self, expression: str, timeout: float = 90) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.eval(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)
        return value

    def overflow(self) -> dict[str, Any]:
        """:data:`OVERFLOW_JS` once the layout has settled (two animation frames)."""
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        return self.eval(OVERFLOW_JS)

    def choose_files(self, *paths: Path, selector: str = "#pick") -> None:
        """Put files into the page's file input, as a person choosing them would."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, full_page: bool = False) -> np.ndarray:
        """The window as an RGB array (``full_page``: the whole page, however tall)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
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


def assert_fits(chromium: Chromium, width: int, height: int = 900, mobile: bool = False) -> None:
    """Lay the open page out in a ``width`` px window; fail naming every element that sticks out of it."""
    chromium.size(width, height, mobile)
    seen = chromium.overflow()
    assert seen["window"] == width, seen
    assert seen["page"] <= width and not seen["wide"], (
        f"the page is {seen['page']} px wide in a {width} px window; sticking out: {json.dumps(seen['wide'][:10])}")


def save_png(rgb: np.ndarray, target: str | Path) -> Path:
    """Write a screenshot as a small PNG (256 colours, as the docs keep them); the path."""
    from PIL import Image

    Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)
    return Path(target)
