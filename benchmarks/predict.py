"""Acceptance benchmark of ``groupmood predict`` against the ``fer`` package's ``FER(mtcnn=True)``.

**Whole process** (the default table; issue 14): each photo set goes through one ``groupmood predict``
process per backend (``--backend onnxruntime``, ``--backend torch``; default options otherwise: batches of
8 within the pixel budget, JPEG draft decoding) and through one fer worker process per fer release,
timed from start to exit (imports, model load, decoding and every photo), with the process's own peak
RSS (``os.wait4``'s ``ru_maxrss``), faces found, photos per second, and whether the two backends give
every photo the same label. Photo sets: the 228 benchmark photos below; ``multiemova-dev`` (127 group
photos up to 1024 px); ``crowd-dev`` (926 crowd photos up to 512 px); and 8 photos of about 24 MP made
once by upscaling real multiemova-dev photos (every 16th; bicubic, JPEG quality 90) into the git-ignored
``runs/bench-24mp`` (named ``upscaled-24mp-*.jpg``). Files are read once before timing (page cache warm
for everyone), and the ONNX files are exported once before timing (``groupmood export --format onnx``,
as ``scripts/setup.sh`` does). ONNX Runtime's settings (threads, spinning) are printed with the table;
torch keeps its default threads. ``--repeat N`` measures N rounds per set, the tools
taking turns within each round (a slow spell of a shared machine then hits every tool), and reports
each tool's median time with the per-round ratios.

**Steady state** (beside the whole-process table, on the 228 benchmark photos, ``multiemova-dev`` and
``crowd-dev``): each tool's own per-photo loop, timed after its models have loaded and one warm-up
photo (``--warmup N``: the first N) has gone through it untimed. groupmood: ``groupmood predict PATHS
-o FILE`` run as it is in a worker process (its default options and backend, photo threads and draft
decoding), only its loop over the photos timed (``run_photos``: decoding, ``GroupEmotionRecognizer.predict``,
writing each record); fer: ``cv2.imread`` and ``detect_emotions`` on each photo in its worker, the two timed there.
Reported as photos/s per tool and groupmood / fer, with faces found, each worker's peak RSS and the
load average before and after each set. The CPU model (``/proc/cpuinfo``) heads the section.

Targets (printed yes / no): steady state >= 2x fer 25.10.3's photos/s on the 228 photos and on
crowd-dev, with >= 616 faces found on the 228 photos; whole process >= 2.5x fer 25.10.3 on the 228
photos and on crowd-dev (>= 1.5x on the larger photos of the other sets); groupmood's peak RSS <= 1 GB
in every process of either measure.

**In loop** (``--in-loop``, the earlier table): on the photos of ``benchmarks/detect.py`` (``../shared/data``: voc-faces, gaf-samples, wider-val-200,
misc-group; 228 in all), in one run it measures, per photo set and overall:

* seconds per photo (mean, median) of groupmood's default bundle called as ``groupmood predict``
  calls it (the CLI's own ``build_detector`` / ``load_recognizer`` with the command's default
  options, ``GroupEmotionRecognizer.predict``), one photo per call and in batches of the
  command's ``--batch-size`` (8), against ``fer.FER(mtcnn=True).detect_emotions`` with fer's
  defaults on the same photo (BGR array from ``cv2.imread``, as fer's README does);
* faces found by each, milliseconds per face found, speed-up = fer / groupmood;
* peak RSS of each alone, each in its own subprocess (``ru_maxrss``);
* model load time of each, reported apart from the per-photo timings (models load once first).

fer's ``mtcnn=True`` detector changed between releases, and its speed with it, so several fer
releases can be measured in one run (``--fer``, default all of ``PEERS``):

* ``25.10.3``: the newest fer, what ``pip install fer`` gives today; the same detector as 22.5.1
  (its ``from fer import FER`` fails, so the worker imports ``fer.fer.FER``);
* ``22.5.1``: the first release on facenet-pytorch's MTCNN in PyTorch, the classifier called directly;
* ``22.4.0+mtcnn0.1.1``: fer 22.4.0 with the ``mtcnn`` package it was released against
  (ipazc's MTCNN in TensorFlow/Keras, one ``predict`` per pyramid scale and stage);
* ``22.4.0+mtcnn1.0.0``: fer 22.4.0 with the ``mtcnn`` release pip resolves today (a 2024 rewrite).

Photos are decoded before timing (groupmood's ``load_image``, fer's ``cv2.imread``); only the
calls are timed. Each fer runs in a long-lived subprocess (hidden ``--worker fer`` mode) that times
each call itself; the parent alternates on each photo: groupmood's batched call on up to 8 photos
of one folder, then for each of them groupmood one photo per call, then each fer on the same photo.
Those subprocesses start while this process holds the standard library only, so each one's
``ru_maxrss`` is that fer's own peak over the whole run.

Targets (issue): >= 10x faster per photo than fer while finding at least as many faces; peak RSS
<= 1.5 GB. Prints markdown tables and appends a dated section to ``benchmarks/RESULTS.md``.
Unreadable photos are reported and skipped, as ``groupmood predict`` does.

fer is not a project dependency. On first use the script pip-installs it with ``--target`` into
the git-ignored ``benchmarks/.peers-fer`` (about 2 GB; needs the network once): fer 22.5.1 and
facenet-pytorch 2.6.0 with ``--no-deps`` (facenet-pytorch pins torch<2.3; the project's torch is
used), plus tensorflow-cpu, opencv-contrib-python 4.x (fer needs OpenCV 4; the project has 5),
moviepy 1.x (fer 22.5.1 imports ``moviepy.editor``) and setuptools<81 (fer uses
``pkg_resources``). Each other fer release goes, with ``--no-deps``, into its own small folder
under ``benchmarks/.peers-fer/overlays`` that its worker puts in front of the shared one. Only the
fer subprocesses put those folders on ``sys.path``, so groupmood is measured with the project's
own OpenCV; they import torch and torchvision.ops before fer (tensorflow imported first crashes
the process).

    .venv/bin/python benchmarks/predict.py --fer 25.10.3 --repeat 3 # whole process and steady state, RESULTS.md
    .venv/bin/python benchmarks/predict.py --fer 25.10.3 --no-write # the same, prints only
    .venv/bin/python benchmarks/predict.py --fer 25.10.3 --limit 4 --no-write --large 2   # smoke test
    .venv/bin/python benchmarks/predict.py --in-loop                # also the in-loop table, all fer releases
    .venv/bin/python benchmarks/predict.py --limit 3 --no-write     # quick check, prints only
    .venv/bin/python benchmarks/predict.py --fer 22.5.1             # one fer release only
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, cpu_model, loadavg, photo_benchmark_parser, publish_result, run_memory_workers
from detect import FOLDERS, photo_paths

FER_PEERS = REPO / "benchmarks" / ".peers-fer"
# fer pulls in keras, "ffmpeg==1.4" and facenet-pytorch (which pins torch<2.3): installed without deps
FER_NO_DEPS = ["fer==22.5.1", "facenet-pytorch==2.6.0"]
# what fer 22.5.1 imports, with what it needs; numpy resolves to the project's version
FER_DEPS = ["tensorflow-cpu==2.21.0", "opencv-contrib-python>=4.5,<5", "moviepy==1.0.3", "pandas",
            "setuptools<81", "requests", "tqdm", "pillow"]
FER_MARKER = FER_PEERS / "INSTALLED.json"
SPEEDUP_TARGET = 10.0
RSS_TARGET_MB = 1.5e9 / 2**20  # 1.5 GB in MiB (the unit of ru_maxrss / 1024)


@dataclass(frozen=True)
class FerPeer:
    """One fer release to measure: the packages laid over the shared folder, and its detector."""

    name: str
    overlay: tuple[str, ...]  # installed --no-deps into overlays/<name>; empty: the shared folder's fer
    detector: str             # what FER(mtcnn=True) detects faces with, for the notes

    @property
    def folder(self) -> Path | None:
        return FER_PEERS / "overlays" / self.name if self.overlay else None


PEERS = {p.name: p for p in [
    FerPeer("25.10.3", ("fer==25.10.3",), "facenet-pytorch 2.6.0 MTCNN (PyTorch): thresholds 0.6/0.7/0.7, "
            "factor 0.709, minimum face 20 px"),
    FerPeer("22.5.1", (), "facenet-pytorch 2.6.0 MTCNN (PyTorch): thresholds 0.6/0.7/0.7, factor 0.709, "
            "minimum face 20 px"),
    FerPeer("22.4.0+mtcnn0.1.1", ("fer==22.4.0", "mtcnn==0.1.1"),
            "mtcnn 0.1.1 (ipazc, TensorFlow/Keras, a Keras `predict` per pyramid scale and stage): thresholds "
            "0.6/0.7/0.7, factor 0.709, minimum face 20 px"),
    FerPeer("22.4.0+mtcnn1.0.0", ("fer==22.4.0", "mtcnn==1.0.0", "joblib==1.4.2", "lz4==4.4.5"),
            "mtcnn 1.0.0 (ipazc's 2024 TensorFlow rewrite, what `pip install fer==22.4.0` resolves today): "
            "thresholds 0.6/0.7/0.8, factor 0.709, minimum face 20 px"),
]}


# ---------------------------------------------------------------------------------------- setup

def _pip(target: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(target)]


def _installed(marker: Path, want: dict) -> bool:
    try:
        return json.loads(marker.read_text()) == want
    except (OSError, ValueError):
        return False


def ensure_fer(peers: list[FerPeer]) -> None:
    """pip-install fer and what it needs into benchmarks/.peers-fer, and each peer's overlay, when missing."""
    want = {"no_deps": FER_NO_DEPS, "deps": FER_DEPS}
    if not _installed(FER_MARKER, want):
        if FER_PEERS.exists():
            shutil.rmtree(FER_PEERS)
        print(f"installing fer and tensorflow into {FER_PEERS} (about 2 GB, once) ...", flush=True)
        subprocess.run([*_pip(FER_PEERS), "--no-deps", *FER_NO_DEPS], check=True)
        subprocess.run([*_pip(FER_PEERS), *FER_DEPS], check=True)
        FER_MARKER.write_text(json.dumps(want, indent=1) + "\n")
    for peer in peers:
        if peer.folder is None or _installed(peer.folder / "INSTALLED.json", {"no_deps": list(peer.overlay)}):
            continue
        if peer.folder.exists():
            shutil.rmtree(peer.folder)
        print(f"installing {', '.join(peer.overlay)} into {peer.folder} ...", flush=True)
        subprocess.run([*_pip(peer.folder), "--no-deps", *peer.overlay], check=True)
        (peer.folder / "INSTALLED.json").write_text(json.dumps({"no_deps": list(peer.overlay)}, indent=1) + "\n")


def cli_defaults() -> dict:
    """The default value of every option of ``groupmood predict`` (as its click command declares)."""
    from groupmood.cli.predict import predict_cmd
    return {p.name: p.default for p in predict_cmd.params}


def our_recognizer(threads: int):
    """The recognizer ``groupmood predict`` builds with its default options (default bundle)."""
    import torch

    from groupmood.cli.predict import build_recognizer
    torch.set_num_threads(threads)
    d = cli_defaults()
    return build_recognizer(d["bundle"], d["device"])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def vmhwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------------------------------- workers

def ours_worker(kind: str, shared: Path, threads: int, limit: int | None) -> int:
    """Run groupmood over every photo in this process, as the CLI does; print peak RSS as JSON."""
    from groupmood.images import load_batches

    paths = [p for _, p in photo_paths(shared, limit)]
    rec = our_recognizer(threads)
    d = cli_defaults()
    after_load = rss_mb()
    faces = 0
    for good, _bad in load_batches(paths, d["batch_size"] if kind == "ours-batch" else 1, d["max_pixels"]):
        if good:
            faces += sum(len(r.faces) for r in rec.predict([img for _, img in good]))
    print(json.dumps({"kind": kind, "after_load_mb": after_load, "peak_mb": rss_mb(), "vmhwm_mb": vmhwm_mb(),
                      "faces": faces}))
    return 0


def ours_steady_worker(paths_file: Path, out: Path, warmup: int = 1) -> int:
    """Run ``groupmood predict`` on the photos listed in ``paths_file`` in this process, its loop timed alone.

    The command runs as it is (options, recognizer, decoding, photo threads); only its loop over the
    photos (``run_photos``) is timed, after the models have loaded and the first ``warmup`` photos have
    gone through the command's own handler untimed (their records are not written). Prints the seconds
    as JSON.
    """
    import groupmood.cli.predict as cli
    from groupmood.errors import ImageLoadError
    from groupmood.images import load_photo

    paths = [line for line in paths_file.read_text().splitlines() if line]
    loop = cli.run_photos
    timed: dict = {}

    def run_photos(todo, batch_size, max_pixels, sink, progress, handle, draft=None, workers=1):
        for path in todo[:warmup]:
            try:
                photo = load_photo(path, max_pixels, draft)
            except ImageLoadError:
                continue
            handle([(path, photo if draft else photo.pixels)])
        t0 = time.perf_counter()
        run = loop(todo, batch_size, max_pixels, sink, progress, handle, draft, workers)
        timed.update(s=time.perf_counter() - t0, workers=workers, draft=draft)
        return run

    cli.run_photos = run_photos
    code = cli.predict_cmd.main([*paths, "-o", str(out), "--no-progress"], standalone_mode=False)
    print(json.dumps({**timed, "exit": code}))
    return 0


def fer_worker(threads: int, peer: FerPeer) -> int:
    """Serve one fer release: one JSON request per stdin line ({"path"} or {"quit"}), one JSON answer per line.

    An answer names the faces found and each face's seven emotion scores (as fer returns them).

    Each answer carries the seconds of ``detect_emotions`` (``seconds``) and of ``cv2.imread`` (``read_s``)
    apart; the last one, after {"quit"}, the peak RSS of this process.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever tensorflow, keras, moviepy or fer print goes to stderr, not into the answers

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    clock = time.perf_counter
    t0 = clock()
    import torch
    import torchvision.ops  # noqa: F401  (before tensorflow: the other order crashes the process)
    sys.path.insert(0, str(FER_PEERS))
    if peer.folder is not None:
        sys.path.insert(0, str(peer.folder))
    import cv2
    import keras
    import tensorflow as tf

    import fer
    try:
        from fer import FER
    except ImportError:  # fer 25.10.3's __init__ no longer exports FER, though its README still imports it so
        from fer.fer import FER
    t_import = clock() - t0
    torch.set_num_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.disable_interactive_logging()  # mtcnn 0.1.1's Keras predict() would draw a bar per call
    t0 = clock()
    detector = FER(mtcnn=True)
    send({"ready": True, "import_s": t_import, "load_s": clock() - t0, "after_load_mb": rss_mb(),
          "versions": {"fer": fer.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                       "opencv": cv2.__version__, "torch": torch.__version__}})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        t0 = clock()
        img = cv2.imread(req["path"])  # BGR, as fer expects
        read_s = clock() - t0
        if img is None:
            send({"error": "OpenCV cannot read it", "read_s": read_s})
            continue
        t0 = clock()
        out = detector.detect_emotions(img)
        send({"seconds": clock() - t0, "read_s": read_s, "faces": len(out),
              "emotions": [f["emotions"] for f in out]})
    send({"peak_mb": rss_mb(), "vmhwm_mb": vmhwm_mb()})
    return 0


class FerClient:
    """The parent's end of one fer worker subprocess."""

    def __init__(self, threads: int, peer: FerPeer) -> None:
        self.peer = peer
        self.log = tempfile.TemporaryFile("w+")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "fer",
                                      "--fer", peer.name, "--threads", str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            raise SystemExit(f"the fer {self.peer.name} worker died (exit {self.proc.returncode}):\n"
                             f"{self.log.read()[-3000:]}")
        return json.loads(line)

    def ask(self, obj: dict) -> dict:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        out = self.ask({"quit": True})
        self.proc.stdin.close()
        self.proc.wait()
        return out


def measure_memory(shared: Path, threads: int, limit: int | None) -> dict:
    return run_memory_workers(__file__, ("ours", "ours-batch"), shared, threads, limit)


# ---------------------------------------------------------------------------------------- report

def summary(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.median(xs)) if xs else (float("nan"), float("nan"))


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def num(x: float, fmt: str, suffix: str = "") -> str:
    """A number, or "-" where it is undefined (no photo or no face)."""
    return "-" if x != x else f"{x:{fmt}}{suffix}"


def yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


@dataclass
class Timings:
    """The per-photo records of one photo set (or all) and groupmood's batched calls on them."""

    rows: list[dict]
    batches: list[tuple[float, int]]  # (seconds, photos) of each batched call

    def ours(self) -> tuple[float, float]:
        return summary([r["ours_s"] for r in self.rows])

    def batched(self) -> tuple[float, float]:
        mean = ratio(sum(t for t, _ in self.batches), sum(k for _, k in self.batches))
        med = statistics.median([t / k for t, k in self.batches]) if self.batches else float("nan")
        return mean, med

    def fer(self, peer: str) -> tuple[float, float]:
        return summary([r["fer"][peer]["s"] for r in self.rows])

    def faces(self, peer: str | None = None) -> int:
        return sum(r["ours_faces"] if peer is None else r["fer"][peer]["faces"] for r in self.rows)

    def ms_per_face(self, peer: str | None = None) -> float:
        secs = sum(r["ours_s"] if peer is None else r["fer"][peer]["s"] for r in self.rows)
        return 1000 * ratio(secs, self.faces(peer))


def set_row(label: str, t: Timings, peers: list[str]) -> str:
    """One line of the per-set table."""
    (o_mean, o_med), (b_mean, b_med) = t.ours(), t.batched()
    cells = [label, str(len(t.rows)), str(t.faces()), f"{o_mean:.3f} / {o_med:.3f}", f"{b_mean:.3f} / {b_med:.3f}"]
    for p in peers:
        f_mean, f_med = t.fer(p)
        cells += [str(t.faces(p)), f"{f_mean:.3f} / {f_med:.3f}",
                  f"{num(ratio(f_mean, o_mean), '.1f', 'x')} / {num(ratio(f_mean, b_mean), '.1f', 'x')}"]
    return "| " + " | ".join(cells) + " |"


def tables(t: Timings, sets: dict[str, Timings], peers: list[str], ready: dict[str, dict], fer_mem: dict[str, dict],
           memory: dict | None, load: tuple[float, float], batch: int, batch_diff: int) -> list[str]:
    """The markdown tables: measures side by side, the targets per fer release, the photo sets."""
    (o_mean, o_med), (b_mean, b_med) = t.ours(), t.batched()
    fer = {p: t.fer(p) for p in peers}
    label = {p: f"fer {p}" for p in peers}

    def row(measure: str, ours: str, per_peer: dict[str, str]) -> str:
        return "| " + " | ".join([measure, ours, *[per_peer.get(p, "") for p in peers]]) + " |"

    out = ["| Measure | groupmood predict (default bundle) | " + " | ".join(label[p] for p in peers) + " |",
           "|---|---" + "|---" * len(peers) + "|",
           row("s/photo, one photo per call (mean / median)", f"{o_mean:.3f} / {o_med:.3f}",
               {p: f"{fer[p][0]:.3f} / {fer[p][1]:.3f}" for p in peers}),
           row(f"s/photo, batches of {batch} (`groupmood predict`'s default; mean / median)",
               f"{b_mean:.3f} / {b_med:.3f}", {}),
           row("Faces found", str(t.faces()), {p: str(t.faces(p)) for p in peers}),
           row("ms per face found, one photo per call", num(t.ms_per_face(), ".1f"),
               {p: num(t.ms_per_face(p), ".1f") for p in peers})]
    fer_rss = {p: f"{fer_mem[p]['peak_mb']:.0f} ({ready[p]['after_load_mb']:.0f})" for p in peers}
    if memory:
        out += [row("Peak RSS, one photo per call, MiB (after model load)",
                    f"{memory['ours']['peak_mb']:.0f} ({memory['ours']['after_load_mb']:.0f})", fer_rss),
                row(f"Peak RSS, batches of {batch}, MiB (after model load)",
                    f"{memory['ours-batch']['peak_mb']:.0f} ({memory['ours-batch']['after_load_mb']:.0f})", {})]
    else:
        out.append(row("Peak RSS, MiB (after model load)", "not measured (`--no-memory`)", fer_rss))
    out += [row("Load before timing, s: imports / models", f"{load[0]:.1f} / {load[1]:.1f}",
                {p: f"{ready[p]['import_s']:.1f} / {ready[p]['load_s']:.1f}" for p in peers}),
            row("groupmood batched vs one per call", f"{batch_diff} photos with a different face count", {})]

    target = [f"| Against | Speed-up, one photo per call (mean) | Speed-up, batches of {batch} (mean) | "
              f">= {SPEEDUP_TARGET:g}x met (one per call / batched) | Faces: groupmood >= fer | ",
              "|---|---:|---:|---|---|"]
    for p in peers:
        one, bat = ratio(fer[p][0], o_mean), ratio(fer[p][0], b_mean)
        target.append(f"| {label[p]} ({fer[p][0]:.3f} s/photo) | {one:.1f}x | {bat:.1f}x | "
                      f"{yes(one >= SPEEDUP_TARGET)} / {yes(bat >= SPEEDUP_TARGET)} | "
                      f"{yes(t.faces() >= t.faces(p))} ({t.faces()} vs {t.faces(p)}) |")
    if memory:
        peak = max(memory["ours"]["peak_mb"], memory["ours-batch"]["peak_mb"])
        target.append(f"| Peak RSS <= 1.5 GB ({RSS_TARGET_MB:.0f} MiB): groupmood's highest, {peak:.0f} MiB | | | "
                      f"{yes(peak <= RSS_TARGET_MB)} | |")

    head = ["| Photos | n | Faces (groupmood) | groupmood s/photo, one per call (mean / median) | "
            f"groupmood s/photo, batches of {batch} (mean / median) | "
            + " | ".join(f"Faces ({label[p]}) | {label[p]} s/photo (mean / median) | "
                         f"Speed-up vs {label[p]} (one per call / batched)" for p in peers) + " |",
            "|---|---:|---:|---:|---:|" + "---:|" * (3 * len(peers))]
    per_set = head + [set_row(name, s, peers) for name, s in sets.items()] + [set_row("**all**", t, peers)]
    return out + ["", "Targets:", ""] + target + ["", "Per photo set:", ""] + per_set


# ---------------------------------------------------------------------------------------- whole process

LARGE = REPO / "runs" / "bench-24mp"
GiB = 2**30
RSS_WHOLE_TARGET = 1e9  # bytes: "peak RSS <= 1 GB"


def make_24mp(shared: Path, n: int) -> list[Path]:
    """``n`` photos of about 24 MP: real group photos (multiemova-dev JPEGs, every 16th) upscaled (bicubic) to
    24 MP, made once in runs/."""
    from PIL import Image

    LARGE.mkdir(parents=True, exist_ok=True)
    srcs = sorted((shared / "multiemova-dev").rglob("*.jpg"))[::16][:n]
    out = []
    for src in srcs:
        dst = LARGE / f"upscaled-24mp-{src.stem}.jpg"
        if not dst.exists():
            with Image.open(src) as im:
                im = im.convert("RGB")
                k = (24e6 / (im.width * im.height)) ** 0.5
                im.resize((round(im.width * k), round(im.height * k)), Image.Resampling.BICUBIC).save(dst, quality=90)
        out.append(dst)
    return out


def photo_sets(shared: Path, limit: int | None, n_large: int) -> dict[str, list[Path]]:
    """The photo sets of the whole-process table, each in a fixed order."""
    from groupmood.paths import iter_image_paths

    sets = {"benchmark photos": [p for _, p in photo_paths(shared, limit)]}
    for name in ("multiemova-dev", "crowd-dev"):
        if (shared / name).is_dir():
            sets[name] = list(iter_image_paths([shared / name]))[:limit]
    if n_large:
        sets["24 MP (multiemova-dev upscaled)"] = make_24mp(shared, n_large)
    return sets


def run_ours(paths: list[Path], backend: str, out: Path) -> dict:
    """One whole ``groupmood predict`` process on ``paths``: wall seconds, its peak RSS, faces and labels."""
    cmd = [sys.executable, "-m", "groupmood.cli", "predict", *map(str, paths), "--backend", backend,
           "-o", str(out), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    records = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
    if proc.returncode not in (0, 1) or not records:
        raise SystemExit(f"groupmood predict --backend {backend} failed (exit {proc.returncode}):\n{err[-3000:]}")
    return {"s": wall, "rss": usage.ru_maxrss * 1024, "faces": sum(r.get("n_faces", 0) for r in records),
            "labels": {r["file"]: r.get("label") for r in records}, "n": len(records)}


def run_fer(paths: list[Path], threads: int, peer: FerPeer) -> dict:
    """One whole fer worker process on ``paths`` (start, imports, model, every photo, exit)."""
    t0 = time.perf_counter()
    client = FerClient(threads, peer)
    faces = 0
    for p in paths:
        answer = client.ask({"path": str(p)})
        faces += answer.get("faces", 0)
    mem = client.close()
    return {"s": time.perf_counter() - t0, "rss": mem["peak_mb"] * 2**20, "faces": faces, "n": len(paths)}


def median_run(runs: list[dict]) -> dict:
    """One tool's rounds on one set as one result: the median time, the largest peak RSS, the first round's
    faces and labels (the same in every round: the tools are deterministic; checked)."""
    first = runs[0]
    for r in runs[1:]:
        if r["faces"] != first["faces"] or r.get("labels") != first.get("labels"):
            raise SystemExit("a tool gave other faces or labels in another round on the same photos")
    return {**first, "s": statistics.median(r["s"] for r in runs), "rss": max(r["rss"] for r in runs)}


def whole_process(args, peers: list[FerPeer]) -> tuple[list[str], list[str], dict[str, dict]]:
    """The whole-process table, its notes, and per set what the targets read (speed-up over fer 25.10.3, peak
    RSS, labels the same under both backends)."""
    from groupmood.runtime import settings
    from groupmood.runtime.session import cpu_count

    shared = args.shared.resolve()
    sets = photo_sets(shared, args.limit, args.large)
    subprocess.run([sys.executable, "-m", "groupmood.cli", "export", "--format", "onnx"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    fer_names_ = [p.name for p in peers]
    head = ("| Photos | n | groupmood onnxruntime: s (photos/s) | faces | peak RSS | groupmood torch: s (photos/s) | "
            "faces | peak RSS | same label (ort vs torch) | "
            + " | ".join(f"fer {n}: s (photos/s) | faces | peak RSS | onnxruntime vs fer {n}" for n in fer_names_)
            + " |")
    table = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (4 * len(peers))]
    checks: dict[str, dict] = {}
    rounds_note = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in sets.items():
            for p in paths:
                p.read_bytes()  # page cache warm for every process
            runs: dict[str, list[dict]] = {}
            for r in range(args.repeat):  # rounds interleave the tools, so a slow spell of the machine hits all
                print(f"{name}: {len(paths)} photos, round {r + 1} of {args.repeat}; load average {loadavg()}",
                      flush=True)
                runs.setdefault("ort", []).append(run_ours(paths, "onnxruntime", Path(tmp) / f"{name}-ort.jsonl"))
                print(f"  groupmood onnxruntime {runs['ort'][-1]['s']:.1f} s, {runs['ort'][-1]['faces']} faces",
                      flush=True)
                runs.setdefault("torch", []).append(run_ours(paths, "torch", Path(tmp) / f"{name}-torch.jsonl"))
                print(f"  groupmood torch {runs['torch'][-1]['s']:.1f} s, {runs['torch'][-1]['faces']} faces",
                      flush=True)
                for peer in peers:
                    runs.setdefault(peer.name, []).append(run_fer(paths, args.threads, peer))
                    print(f"  fer {peer.name} {runs[peer.name][-1]['s']:.1f} s, {runs[peer.name][-1]['faces']} faces",
                          flush=True)
            ort, tor = median_run(runs["ort"]), median_run(runs["torch"])
            fers = {peer.name: median_run(runs[peer.name]) for peer in peers}
            if args.repeat > 1 and "25.10.3" in runs:
                per_round = [f["s"] / o["s"] for f, o in zip(runs["25.10.3"], runs["ort"])]
                rounds_note.append(f"{name}: onnxruntime vs fer 25.10.3 per round "
                                   f"{', '.join(f'{x:.2f}x' for x in per_round)}")
            same = sum(ort["labels"][f] == tor["labels"].get(f) for f in ort["labels"])
            n = len(paths)

            def cell(r: dict) -> list[str]:
                return [f"{r['s']:.1f} ({n / r['s']:.2f})", str(r["faces"]), f"{r['rss'] / 2**20:.0f} MiB"]

            row = [name, str(n), *cell(ort), *cell(tor), f"{same} of {len(ort['labels'])}"]
            for peer in peers:
                f = fers[peer.name]
                row += [*cell(f), f"{f['s'] / ort['s']:.2f}x"]
            table.append("| " + " | ".join(row) + " |")
            checks[name] = {"speed": fers["25.10.3"]["s"] / ort["s"] if "25.10.3" in fers else None,
                            "rss": ort["rss"], "same": same == len(ort["labels"])}
    notes = [f"Whole process, each set in one process per backend / fer release: `groupmood predict PATHS "
             f"--backend B -o FILE` with the default options; fer {', '.join(fer_names_)} `FER(mtcnn=True)` "
             f"in one worker process per set (torch / tensorflow threads {args.threads})."
             + (f" {args.repeat} rounds, the tools taking turns in each; the table gives each tool's median time "
                f"(ratios are of medians) and its largest peak RSS. " + "; ".join(rounds_note) + "."
                if args.repeat > 1 else ""),
             f"ONNX Runtime: {settings().describe()}; {cpu_count()} photos at once, one per CPU (predict's "
             "default under ONNX Runtime); torch: one photo at a time, its default threads."]
    return table, notes, checks


# ---------------------------------------------------------------------------------------- steady state

STEADY_SETS = ("benchmark photos", "multiemova-dev", "crowd-dev")
#: steady state: groupmood's photos/s over fer 25.10.3's, per set
STEADY_TARGETS = {"benchmark photos": 2.0, "crowd-dev": 2.0}
#: whole process: fer 25.10.3's seconds over groupmood's (onnxruntime), per set; the other sets WHOLE_OTHER
WHOLE_TARGETS = {"benchmark photos": 2.5, "crowd-dev": 2.5}
WHOLE_OTHER = 1.5
FACES_TARGET = 616  # faces found on the 228 benchmark photos


def run_ours_steady(paths: list[Path], out: Path, warmup: int = 1) -> dict:
    """``groupmood predict`` on ``paths`` in a worker process, its per-photo loop timed after the models load:
    loop seconds, the process's peak RSS, faces and labels."""
    listing = out.with_suffix(".paths")
    listing.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "ours-steady", "--paths", str(listing),
           "--out", str(out), "--warmup", str(warmup)]
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=so, stderr=se, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        so.seek(0)
        se.seek(0)
        lines, err = so.read().strip().splitlines(), se.read()
    code = os.waitstatus_to_exitcode(status)
    records = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
    if code != 0 or not lines or not records:
        raise SystemExit(f"the groupmood steady-state worker failed (exit {code}):\n{err[-3000:]}")
    timed = json.loads(lines[-1])
    return {"s": timed["s"], "rss": usage.ru_maxrss * 1024, "faces": sum(r.get("n_faces", 0) for r in records),
            "labels": {r["file"]: r.get("label") for r in records}, "n": len(records), "workers": timed["workers"],
            "draft": timed["draft"]}


def run_fer_steady(paths: list[Path], threads: int, peer: FerPeer, warmup: int = 1) -> dict:
    """fer's loop over ``paths`` in one worker (``cv2.imread`` and ``detect_emotions`` timed there), after its
    model loads and the first ``warmup`` photos: loop seconds, the worker's peak RSS, faces."""
    client = FerClient(threads, peer)
    for p in paths[:warmup]:  # untimed
        client.ask({"path": str(p)})
    secs, faces = 0.0, 0
    for p in paths:
        answer = client.ask({"path": str(p)})
        secs += answer.get("read_s", 0.0) + answer.get("seconds", 0.0)
        faces += answer.get("faces", 0)
    mem = client.close()
    return {"s": secs, "rss": mem["peak_mb"] * 2**20, "faces": faces, "n": len(paths)}


def steady_state(args, peers: list[FerPeer]) -> tuple[list[str], list[str], dict[str, dict]]:
    """The steady-state table, its notes, and per set what the targets read (photos/s over fer 25.10.3's,
    faces, peak RSS)."""
    from groupmood.runtime.session import cpu_count, resolve_backend

    shared = args.shared.resolve()
    sets = {k: v for k, v in photo_sets(shared, args.limit, 0).items() if k in STEADY_SETS and v}
    names = [p.name for p in peers]
    table = ["| Photos | n | groupmood: loop s (photos/s) | faces | peak RSS | "
             + " | ".join(f"fer {n}: loop s (photos/s) | faces | peak RSS | groupmood / fer {n}, photos/s"
                          for n in names) + " | load average before / after |",
             "|---|---:|---:|---:|---:|" + "---:|" * (4 * len(peers)) + "---|"]
    checks: dict[str, dict] = {}
    rounds_note = []
    workers = draft = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in sets.items():
            for p in paths:
                p.read_bytes()
            before = loadavg()
            runs: dict[str, list[dict]] = {}
            for r in range(args.repeat):  # the tools take turns within each round
                print(f"steady state, {name}: {len(paths)} photos, round {r + 1} of {args.repeat}; load average "
                      f"{loadavg()}", flush=True)
                runs.setdefault("ours", []).append(run_ours_steady(paths, Path(tmp) / f"{name}-{r}.jsonl",
                                                                   args.warmup))
                print(f"  groupmood {runs['ours'][-1]['s']:.1f} s, {runs['ours'][-1]['faces']} faces", flush=True)
                for peer in peers:
                    runs.setdefault(peer.name, []).append(run_fer_steady(paths, args.threads, peer, args.warmup))
                    print(f"  fer {peer.name} {runs[peer.name][-1]['s']:.1f} s, {runs[peer.name][-1]['faces']} "
                          "faces", flush=True)
            after = loadavg()
            ours = median_run(runs["ours"])
            workers, draft = ours["workers"], ours["draft"]
            fers = {peer.name: median_run(runs[peer.name]) for peer in peers}
            if args.repeat > 1 and "25.10.3" in runs:
                per_round = [f["s"] / o["s"] for f, o in zip(runs["25.10.3"], runs["ours"])]
                rounds_note.append(f"{name}: groupmood / fer 25.10.3 per round "
                                   f"{', '.join(f'{x:.2f}x' for x in per_round)}")
            n = len(paths)

            def cell(r: dict) -> list[str]:
                return [f"{r['s']:.1f} ({n / r['s']:.2f})", str(r["faces"]), f"{r['rss'] / 2**20:.0f} MiB"]

            row = [name, str(n), *cell(ours)]
            for peer in peers:
                row += [*cell(fers[peer.name]), f"{fers[peer.name]['s'] / ours['s']:.2f}x"]
            table.append("| " + " | ".join([*row, f"{before} / {after}"]) + " |")
            checks[name] = {"ratio": fers["25.10.3"]["s"] / ours["s"] if "25.10.3" in fers else None,
                            "faces": ours["faces"], "n": n, "rss": ours["rss"]}
    d = cli_defaults()
    backend = resolve_backend(d["backend"], d["device"])
    notes = [f"Steady state: each tool's own per-photo loop, timed after its models load and {args.warmup} untimed "
             "warm-up photo(s) (the set's first, timed again in the loop). groupmood: `groupmood predict PATHS -o "
             f"FILE` with its default options in a worker process "
             f"(backend {d['backend']}: {backend}; {workers} photo(s) at once; photos decoded to a shorter side of "
             f"at least {draft} px), only its loop over the photos timed (decoding, `GroupEmotionRecognizer.predict`, "
             f"writing each record); fer {', '.join(names)}: `cv2.imread` and `FER(mtcnn=True).detect_emotions` on "
             f"each photo in its worker (torch / tensorflow threads {args.threads}; the pipe to the parent not "
             "counted). Peak RSS: each worker process's own (`ru_maxrss`, model load included). CPU: "
             f"{cpu_model()}, {cpu_count()} CPUs for this process."
             + (f" {args.repeat} rounds, the tools taking turns in each; each tool's median time (ratios are of "
                f"medians), largest peak RSS. " + "; ".join(rounds_note) + "." if args.repeat > 1 else "")]
    return table, notes, checks


def target_lines(whole: dict[str, dict], steady: dict[str, dict], limited: bool) -> list[str]:
    """The targets, each with yes / no: steady-state and whole-process speed-ups over fer 25.10.3, faces found
    on the benchmark photos, groupmood's peak RSS and the two backends' labels."""
    out = []
    for name, target in STEADY_TARGETS.items():
        c = steady.get(name)
        if c is None or c["ratio"] is None:
            out.append(f"steady state, {name}: not measured (fer 25.10.3 and the set are needed)")
        else:
            out.append(f"steady state, {name}: groupmood {c['ratio']:.2f}x fer 25.10.3's photos/s (target "
                       f">= {target:g}x): {yes(c['ratio'] >= target)}")
    if "benchmark photos" in steady:
        c = steady["benchmark photos"]
        out.append(f"faces found on the benchmark photos: {c['faces']} on {c['n']} photos (target >= {FACES_TARGET} "
                   f"on the 228): {yes(c['faces'] >= FACES_TARGET)}" + (" (--limit: not the whole set)" if limited
                                                                        else ""))
    for name, c in whole.items():
        target = WHOLE_TARGETS.get(name, WHOLE_OTHER)
        if c["speed"] is None:
            out.append(f"whole process, {name}: fer 25.10.3 not measured")
        else:
            out.append(f"whole process, {name}: groupmood (onnxruntime) {c['speed']:.2f}x fer 25.10.3 (target "
                       f">= {target:g}x): {yes(c['speed'] >= target)}")
    peaks = [(c["rss"], f"whole process, {n}") for n, c in whole.items()]
    peaks += [(c["rss"], f"steady state, {n}") for n, c in steady.items()]
    if peaks:
        rss, where = max(peaks)
        out.append(f"groupmood's peak RSS <= 1 GB in every process: highest {rss / 2**20:.0f} MiB ({where}): "
                   f"{yes(rss <= RSS_WHOLE_TARGET)}")
    if whole:
        same = all(c["same"] for c in whole.values())
        out.append(f"same labels under onnxruntime and torch on every set: {yes(same)}")
    return out


# ---------------------------------------------------------------------------------------- main

SECTION = "groupmood predict vs fer: whole process and steady state"


def benchmark(args) -> int:
    peers = [PEERS[name] for name in args.fer]
    ensure_fer(peers)
    load_start = loadavg()
    print(f"CPU: {cpu_model()}; load average {load_start}", flush=True)
    table, notes, whole = whole_process(args, peers)
    print("\n".join(table))
    s_table, s_notes, steady = steady_state(args, peers)
    print("\n".join(s_table))
    targets = target_lines(whole, steady, args.limit is not None)
    body = ["### Whole process", "", *table, "", "### Steady state", "", *(n + "  " for n in s_notes), "", *s_table,
            "", "### Targets", "", *(f"- {t}" for t in targets)]
    publish_result(SECTION, args.threads, load_start, notes, body, not args.no_write,
                   supersedes=("groupmood predict vs fer, whole process",))
    return in_loop(args) if args.in_loop else 0


def in_loop(args) -> int:
    shared = args.shared.resolve()
    load_start = loadavg()
    peers = [PEERS[name] for name in args.fer]
    ensure_fer(peers)
    # Every subprocess starts while this process holds the standard library only: on Linux a
    # child's ru_maxrss starts from the parent's RSS at fork.
    memory = None if args.no_memory else measure_memory(shared, args.threads, args.limit)
    clients = {}
    for peer in peers:
        print(f"starting the fer {peer.name} worker ...", flush=True)
        clients[peer.name] = FerClient(args.threads, peer)

    clock = time.perf_counter
    t0 = clock()
    import torch

    from groupmood.cli.predict import predict_cmd  # noqa: F401  (the command's imports, as the CLI pays them)
    from groupmood.images import load_batches
    from groupmood.pipeline import default_bundle_path
    our_import = clock() - t0
    t0 = clock()
    rec = our_recognizer(args.threads)
    our_load = clock() - t0
    d = cli_defaults()
    batch = d["batch_size"]

    photos = photo_paths(shared, args.limit)
    folder_of = {p: f for f, p in photos}
    print(f"{len(photos)} photos from {shared}; load average {load_start}", flush=True)
    images: list[tuple[str, Path, object]] = []
    skipped: list[tuple[str, str]] = []
    for good, bad in load_batches([p for _, p in photos], 1, d["max_pixels"]):
        for err in bad:  # reported and skipped, as groupmood predict does
            print(f"skipped {err}", flush=True)
            skipped.append((err.path, err.reason))
        images += [(folder_of[p], p, img) for p, img in good]

    rows: list[dict] = []
    batches: dict[str, list[tuple[float, int]]] = {f: [] for f, _ in FOLDERS}
    batch_diff = 0
    with torch.inference_mode():
        if images:  # warm-up, one photo each
            rec.predict([images[0][2]])
            for c in clients.values():
                c.ask({"path": str(images[0][1])})
        done = 0
        for folder, _ in FOLDERS:
            mine = [x for x in images if x[0] == folder]
            for start in range(0, len(mine), batch):
                chunk = mine[start:start + batch]
                t0 = clock()
                res_batch = rec.predict([img for _, _, img in chunk])
                batches[folder].append((clock() - t0, len(chunk)))
                for (_, path, img), rb in zip(chunk, res_batch):  # alternate on each photo: ours, then each fer
                    t0 = clock()
                    res = rec.predict([img])[0]
                    t_ours = clock() - t0
                    answers = {name: c.ask({"path": str(path)}) for name, c in clients.items()}
                    errors = [f"fer {name}: {a['error']}" for name, a in answers.items() if "error" in a]
                    if errors:
                        print(f"skipped {path}: {'; '.join(errors)}", flush=True)
                        skipped.append((str(path), "; ".join(errors)))
                        continue
                    batch_diff += len(rb.faces) != len(res.faces)
                    rows.append({"folder": folder, "name": f"{folder}/{path.name}", "ours_s": t_ours,
                                 "ours_faces": len(res.faces),
                                 "fer": {n: {"s": a["seconds"], "faces": a["faces"]} for n, a in answers.items()}})
                done += len(chunk)
                print(f"  {done}/{len(images)} photos  groupmood {sum(r['ours_s'] for r in rows):.1f}s  "
                      f"batched {sum(t for b in batches.values() for t, _ in b):.1f}s  " + "  ".join(
                          f"fer {n} {sum(r['fer'][n]['s'] for r in rows):.1f}s" for n in clients), flush=True)
    ready = {n: c.ready for n, c in clients.items()}
    fer_mem = {n: c.close() for n, c in clients.items()}

    folders = [f for f, _ in FOLDERS if any(r["folder"] == f for r in rows)]
    sets = {f: Timings([r for r in rows if r["folder"] == f], batches[f]) for f in folders}
    everything = Timings(rows, [b for f in folders for b in batches[f]])
    names = list(clients)
    body = tables(everything, sets, names, ready, fer_mem, memory, (our_import, our_load), batch, batch_diff)

    more = {n: [r for r in rows if r["fer"][n]["faces"] > r["ours_faces"]] for n in names}
    print()
    print("\n".join(body))
    print()
    for n in names:
        print(f"photos where fer {n} finds more faces than groupmood: {len(more[n])}")
    if memory:
        print("peak RSS check (ru_maxrss vs /proc VmHWM, MiB): " + ", ".join(
            f"{k} {v['peak_mb']:.0f} vs {v['vmhwm_mb']:.0f}" for k, v in memory.items()) + ", " + ", ".join(
            f"fer {n} {m['peak_mb']:.0f} vs {m['vmhwm_mb']:.0f}" for n, m in fer_mem.items()))

    bundle = Path(d["bundle"] or default_bundle_path()).resolve()
    bundle = bundle.relative_to(REPO) if bundle.is_relative_to(REPO) else bundle
    counts = ", ".join(f"{f} {len(sets[f].rows)}" for f in folders)
    from groupmood.cli.common import detector_settings
    from groupmood.detect.cascade import CascadeSettings

    st = CascadeSettings(**detector_settings(d["min_face_frac"], d["min_face_px"], d["thresholds"], d["factor"],
                                             d["bundle"]))
    det = (f"thresholds {'/'.join(f'{t:g}' for t in st.thresholds)}, factor {st.factor}, minimum face "
           f"{st.min_face_frac:g} of the shorter side (the bundle's)")
    v = next(iter(ready.values()))["versions"] if ready else {}
    notes = [
        f"{len(rows)} photos of `../shared/data` ({counts}); CPU, torch threads {args.threads} in every process, "
        f"tensorflow intra/inter-op threads {args.threads}.",
        f"groupmood: `groupmood predict`'s default options through its own `build_detector` / `load_recognizer` "
        f"(bundle `{bundle}`, branches {', '.join(rec.branches)}; MTCNN {det}), `GroupEmotionRecognizer.predict` "
        f"on RGB arrays from `groupmood.images.load_image`.",
        "fer: `FER(mtcnn=True)` with its defaults (mini-Xception 64x64 grey classifier), `detect_emotions` on the "
        "BGR array of `cv2.imread` as its README shows (fer hands that BGR array to its detector as it is); "
        f"tensorflow {v.get('tensorflow')}, keras {v.get('keras')}, OpenCV {v.get('opencv')} in "
        "`benchmarks/.peers-fer`, each release in its own subprocess. Detectors: "
        + "; ".join(f"fer {p.name}: {p.detector}" for p in peers) + ".",
        "Timing: models loaded once first (load times in the table); decoding not timed; one warm-up photo each; "
        f"groupmood's batched call on up to {batch} photos of one set precedes their per-photo calls, then each "
        "photo alternates groupmood one per call, then each fer. Peak RSS: each alone in a subprocess over all "
        "photos, photos loaded one batch at a time (`ru_maxrss`; after model load in parentheses).",
    ]
    if skipped:
        notes.append(f"Skipped (unreadable): {len(skipped)}: " + "; ".join(f"{p} ({why})" for p, why in skipped) + ".")
    for n in names:
        if more[n]:
            notes.append(f"Photos where fer {n} finds more faces than groupmood: {len(more[n])} ("
                         + ", ".join(f"{r['name']} {r['ours_faces']} vs {r['fer'][n]['faces']}" for r in more[n])
                         + ").")
    publish_result("groupmood predict vs fer", args.threads, load_start, notes, body, not args.no_write)
    return 0


def fer_names(text: str) -> list[str]:
    """Parse ``--fer``: a comma-separated list of fer releases from PEERS."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown fer release {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(PEERS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = photo_benchmark_parser(__doc__, "torch (and tensorflow) threads (default 2)",
                                "skip groupmood's peak-RSS subprocesses")
    ap.add_argument("--fer", type=fer_names, default=list(PEERS),
                    help=f"fer releases to measure, comma-separated (default: all of {', '.join(PEERS)})")
    ap.add_argument("--large", type=int, default=8, help="24 MP photos made by upscaling real ones (default 8)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds per photo set, the tools taking turns; the table gives median times (default 1)")
    ap.add_argument("--in-loop", action="store_true",
                    help="also the in-loop table (models loaded first, calls timed alone)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="steady state: photos each tool runs untimed before its timed loop (default 1)")
    ap.add_argument("--worker", choices=("ours", "ours-batch", "ours-steady", "fer"), help=argparse.SUPPRESS)
    ap.add_argument("--paths", type=Path, help=argparse.SUPPRESS)  # ours-steady: the file listing its photos
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)    # ours-steady: its output records
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat must be 1 or more, got {args.repeat}")
    if args.worker == "fer":
        return fer_worker(args.threads, PEERS[args.fer[0]])
    if args.worker == "ours-steady":
        return ours_steady_worker(args.paths, args.out, args.warmup)
    if args.worker:
        return ours_worker(args.worker, args.shared, args.threads, args.limit)
    return benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
