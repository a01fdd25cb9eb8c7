"""Draw the pictures in docs/ again from the code that makes them, so that none goes stale silently.

``docs/serve.png`` (the picture of the web page in docs/serving.md): ``groupmood serve`` with the shipped
bundle is started on a free loopback port, headless Chromium opens its page in a 1280 x 900 window
and chooses the five-person sample photo (``groupmood samples group``, shown as ``group.jpg``) as a
person would; once the page shows its answer the window is saved as a 256-colour PNG. The browser
is driven by the browser tests' own driver (``tests/_chromium.py``). The same code, models, photo,
browser version and fonts give the same picture; run it after changing the page, the report's
style or the bundle, and commit the result:

    .venv/bin/python scripts/make_docs_pictures.py             # writes docs/serve.png
    .venv/bin/python scripts/make_docs_pictures.py --out /tmp  # writes /tmp/serve.png

Chromium is ``GROUPMOOD_BROWSER`` or the first of chromium, chromium-browser, google-chrome on PATH.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _chromium import Chromium, find_browser, save_png  # noqa: E402

#: The window the picture shows, in CSS pixels (a desktop browser).
WINDOW = (1280, 900)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_health(base: str, server: subprocess.Popen, timeout: float = 300) -> None:
    """Return once the server answers that its models are loaded; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"groupmood serve exited with status {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(base + "/v1/health", timeout=5) as answer:
                if json.load(answer).get("models_loaded"):
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"groupmood serve did not answer {base}/v1/health in {timeout:.0f} s")


def serve_picture(browser: str, photo: Path, target: Path, work: Path) -> tuple[Path, str]:
    """Screenshot the page of a fresh ``groupmood serve`` that has labelled ``photo`` into ``target``.

    Returns the picture's path and the browser version that drew it.
    """
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "groupmood.cli", "serve", "--port", str(port),
                               "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_health(base, server)
        with Chromium(browser, work) as chromium:
            chromium.open(base + "/", *WINDOW, ready="!!document.querySelector('#pick')")
            chromium.choose_files(photo)
            chromium.wait("[...document.querySelectorAll('.photo')].some(c => c.dataset.state !== 'working')")
            state = chromium.eval("document.querySelector('.photo').dataset.state")
            if state != "done":
                raise SystemExit(f"the page did not label {photo.name}: "
                                 + str(chromium.eval("document.querySelector('.photo').textContent")))
            wide = chromium.overflow()
            if wide["wide"]:
                print(f"warning: parts of the page stick out of the window: {wide['wide'][:5]}", file=sys.stderr)
            return save_png(chromium.screenshot(), target), chromium.version()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the pictures (default: docs/)")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("no Chromium here (apt-get install chromium, or set GROUPMOOD_BROWSER)", file=sys.stderr)
        return 2
    from groupmood.samples import sample_path

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="groupmood-docs-") as tmp:
        work = Path(tmp)
        photo = work / "group.jpg"
        shutil.copy(sample_path("group"), photo)
        shot, version = serve_picture(browser, photo, args.out / "serve.png", work)
    print(f"{shot} ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
