"""A running ``groupmood serve`` under load: concurrent uploads, stalled clients, memory after many requests.

Starts ``groupmood serve`` (default bundle, loopback only, a free port) as its own process and
measures, over loopback and with bounded request loops:

1. **mix-ups**: 50 different photos (the real group photos of ``gaf-samples``, each also mirrored,
   shrunk and turned, cycled to 50) are first sent one at a time, then all 50 at once from 50
   threads; each concurrent answer must equal the answer to the same photo sent alone (a 503 is
   retried after its ``Retry-After``);
2. **stalled clients**: nine connections send the header of an upload of 100000 bytes and 10 bytes
   of body, then nothing; a real upload sent next must be answered (200) in less than the body
   timeout, and each stalled one gets 408 once the body timeout has passed;
3. **memory**: the server's resident memory (``VmRSS``) before and every 100 requests of a loop of
   ``--requests`` uploads (4 at a time), and its peak (``VmHWM``) at the end.

It prints a table and replaces its section of ``benchmarks/RESULTS.md`` (date, commit, machine,
command, load average).

    .venv/bin/python benchmarks/serve_stress.py                 # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/serve_stress.py --requests 100 --no-write   # quick check
"""
from __future__ import annotations

import argparse
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import REPO, loadavg, publish_result

STALLED = 9
CONCURRENT = 50


def _photos(folder: Path, count: int) -> tuple[list[tuple[str, bytes]], int]:
    """``count`` different JPEGs (each photo of ``folder`` as is, mirrored, shrunk to 3/4 and turned, cycled)
    and the number of photos they come from."""
    from PIL import Image, ImageOps

    sources = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"no photos in {folder}")
    variants = [("", lambda im: im), ("-mirrored", ImageOps.mirror),
                ("-small", lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4))),
                ("-turned", lambda im: im.rotate(180))]
    out = []
    for k in range(count):
        src = sources[k % len(sources)]
        suffix, make = variants[(k // len(sources)) % len(variants)]
        with Image.open(src) as im:
            buf = io.BytesIO()
            make(ImageOps.exif_transpose(im).convert("RGB")).save(buf, "JPEG", quality=90)
        out.append((f"{src.stem}{suffix}-{k:02d}.jpg", buf.getvalue()))
    return out, len(sources)


class Server:
    """``groupmood serve`` in its own process on a free loopback port."""

    def __init__(self, args: list[str]) -> None:
        cmd = [str(REPO / ".venv" / "bin" / "groupmood"), "serve", "--host", "127.0.0.1", "--port", "0",
               "--log-level", "warning", *args]
        self.command = " ".join(cmd[1:])
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.log: list[str] = []
        found = threading.Event()
        self.port = 0

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"open http://127\.0\.0\.1:(\d+)/", line)
                if m:
                    self.port = int(m.group(1))
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(300):
            self.stop()
            raise SystemExit("groupmood serve did not start:\n" + "\n".join(self.log[-20:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def memory_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the server process, in kB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def post(url: str, name: str, data: bytes, retries: int = 60) -> tuple[dict, int]:
    """The JSON answer to one upload and how many 503 answers came before it (each waited out)."""
    import httpx

    busy = 0
    for _ in range(retries):
        r = httpx.post(url + "/v1/predict", files=[("files", (name, data, "image/jpeg"))], timeout=300)
        if r.status_code != 503:
            if r.status_code != 200:
                raise SystemExit(f"{name}: {r.status_code} {r.text}")
            return r.json(), busy
        busy += 1
        time.sleep(float(r.headers.get("retry-after", "1")))
    raise SystemExit(f"{name}: still busy after {retries} tries")


def stalled_connection(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
              "boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nxxxx".encode())
    return s


def status_line(s: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="shared data folder (default: ../shared/data); photos from its gaf-samples")
    ap.add_argument("--requests", type=int, default=500, help="uploads of the memory loop (default 500)")
    ap.add_argument("--body-timeout", type=float, default=10.0, help="the server's --body-timeout (default 10 s)")
    ap.add_argument("--workers", type=int, default=2, help="the server's --workers (default 2)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    args = ap.parse_args()
    load_start = loadavg()
    photos, n_sources = _photos(args.shared / "gaf-samples", CONCURRENT)
    server = Server(["--workers", str(args.workers), "--body-timeout", str(args.body_timeout)])
    rows: list[tuple[str, str, str]] = []
    try:
        rss0, _ = server.memory_kb()
        # 1. mix-ups
        start = time.perf_counter()
        alone = {name: post(server.url, name, data)[0] for name, data in photos}
        t_alone = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            together = list(pool.map(lambda item: post(server.url, *item), photos))
        t_together = time.perf_counter() - start
        mixed = [name for (name, _), (answer, _) in zip(photos, together) if answer != alone[name]]
        retried = sum(b for _, b in together)
        rows.append((f"{CONCURRENT} different photos sent at once (then compared with each sent alone)",
                     f"{CONCURRENT - len(mixed)} of {CONCURRENT} answers equal the photo's own; {retried} "
                     f"503 answers waited out; {t_together:.1f} s (alone, one by one: {t_alone:.1f} s)",
                     "ok" if not mixed else f"MIXED UP: {', '.join(mixed[:5])}"))
        # 2. stalled clients
        stalled = [stalled_connection(server.port) for _ in range(STALLED)]
        opened = time.perf_counter()
        time.sleep(0.5)
        start = time.perf_counter()
        answer, busy = post(server.url, *photos[0], retries=1)
        latency = time.perf_counter() - start
        ok_answer = answer == alone[photos[0][0]] and busy == 0
        statuses = [status_line(s) for s in stalled]
        waited = time.perf_counter() - opened
        for s in stalled:
            s.close()
        all_408 = all(st.startswith("HTTP/1.1 408") for st in statuses)
        rows.append((f"{STALLED} stalled uploads (100000 bytes promised, 10 sent), then a real upload",
                     f"real upload answered 200 in {latency:.2f} s (body timeout {args.body_timeout:g} s); "
                     f"stalled ones: {sum(st.startswith('HTTP/1.1 408') for st in statuses)} of {STALLED} got 408 "
                     f"within {waited:.1f} s",
                     "ok" if ok_answer and latency < args.body_timeout and all_408 else "FAILED"))
        # 3. memory over many requests
        marks = [(0, rss0)]
        done = 0
        lock = threading.Lock()

        def one(k: int) -> None:
            nonlocal done
            post(server.url, *photos[k % len(photos)])
            with lock:
                done += 1
                if done % 100 == 0:
                    marks.append((done, server.memory_kb()[0]))

        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(args.requests)))
        t_loop = time.perf_counter() - start
        rss_end, hwm = server.memory_kb()
        curve = ", ".join(f"{n}: {kb / 1024:.0f}" for n, kb in sorted(marks))
        rows.append((f"memory over {args.requests} uploads (4 at a time; plus the {2 * CONCURRENT + 1} above)",
                     f"RSS MB after N requests: {curve}; peak (VmHWM) {hwm / 1024:.0f} MB; "
                     f"{t_loop:.1f} s ({t_loop / max(1, args.requests):.2f} s/request)",
                     f"end {rss_end / 1024:.0f} MB"))
    finally:
        server.stop()
    table = ["| case | measured | verdict |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]
    print("\n".join(table))
    notes = [f"Server: `{server.command}` (default bundle, CPU, loopback)",
             f"Photos: {CONCURRENT} JPEG variants of the {n_sources} photos of gaf-samples (as is, mirrored, 3/4 "
             "size, turned); the server's default queue (8) answers 503 with Retry-After beyond it, and the "
             "client waits and sends again"]
    publish_result("serve under load: concurrent uploads, stalled clients, memory", os.cpu_count() or 1, load_start, notes, table,
                   not args.no_write)
    if any(r[2] not in ("ok",) and not r[2].startswith("end") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
