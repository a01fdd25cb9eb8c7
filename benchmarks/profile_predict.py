"""Where ``groupmood predict``'s time goes, stage by stage, on a photo set.

The recognizer is the one ``groupmood predict`` builds with its default options (default bundle,
``--backend auto``: ONNX Runtime on a CPU; :func:`groupmood.cli.predict.build_recognizer`), and
each photo is decoded as predict decodes it (``load_photo`` at the reduced size the models need,
:meth:`~groupmood.pipeline.GroupEmotionRecognizer.decode_short_side`). The library is timed from
outside: the functions and methods of each stage (decoding, the MTCNN cascade's steps and its
three nets' runners, each branch's crops / trunk / model, fusion) are replaced by timing wrappers
for the run, so the library itself holds no timing code. Each stage's time is its own (time spent
in a wrapped stage it calls is counted there), so the stages add up to the loop's time.

By default photos go through ``predict`` one at a time on one thread (``--workers 1``) so that the
stage times add up to wall-clock time; predict itself works on one photo per CPU under ONNX
Runtime, which ``--workers N`` reproduces (stage times are then thread-seconds). One warm-up photo
runs first, untimed. The table gives each stage's seconds, share of the timed loop, calls and
inputs (photos, pyramid levels, candidate boxes, face crops). On a shared machine the numbers are
noisy: the load average at the start and end and the process's CPU time against the wall-clock
time are printed with them.

    .venv/bin/python benchmarks/profile_predict.py                      # the 228 benchmark photos, prints only
    .venv/bin/python benchmarks/profile_predict.py --set crowd-dev --limit 100
    .venv/bin/python benchmarks/profile_predict.py --write              # also RESULTS.md (publish_result)
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import REPO, loadavg, publish_result

SETS = ("benchmark photos", "multiemova-dev", "crowd-dev")
LEVELS = "MTCNN P-Net: pyramid levels (area resize)"


class StageTimer:
    """Exclusive wall-clock time, calls and inputs per stage, from wrappers around the timed callables.

    A wrapper's time less the time of the wrapped calls made inside it is its stage's own, so a
    stage nested in another (P-Net's runner inside stage 1) is not counted twice. Thread-safe: each
    thread keeps its own stack of open calls.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.inputs: Counter[str] = Counter()
        self.order: list[str] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def _stack(self) -> list[list[Any]]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def parent(self) -> str | None:
        """The stage of the innermost open timed call on this thread."""
        stack = self._stack()
        return stack[-1][0] if stack else None

    def wrap(self, fn: Callable, stage: str | Callable[..., str | None],
             inputs: Callable[..., int] | None = None) -> Callable:
        """``fn`` timed as ``stage`` (a name, or a function of the call's arguments giving one; None: not timed,
        its time stays with the caller's stage); ``inputs`` counts what one call works on."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            name = stage(*args, **kwargs) if callable(stage) else stage
            if name is None:
                return fn(*args, **kwargs)
            stack = self._stack()
            stack.append([name, 0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - t0
                _, inner = stack.pop()
                if stack:
                    stack[-1][1] += total
                n = inputs(*args, **kwargs) if inputs is not None else 0
                with self._lock:
                    if name not in self.seconds:
                        self.order.append(name)
                    self.seconds[name] += total - inner
                    self.calls[name] += 1
                    self.inputs[name] += n

        timed.__wrapped__ = fn
        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.inputs.clear()
        self.order.clear()


class TimedRunner:
    """A net runner (numpy in, outputs out) timed as one stage; other attributes (``channels_last``) pass through."""

    def __init__(self, runner: Callable, call: Callable) -> None:
        self._runner = runner
        self._call = call

    def __call__(self, x: Any) -> Any:
        return self._call(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


@contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """``obj.name`` replaced by ``value`` for the block."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextmanager
def instrument(rec: Any, timer: StageTimer) -> Iterator[None]:
    """Time ``rec``'s predict by stage while the block runs: the cascade's steps, its nets, the branches, fusion."""
    from contextlib import ExitStack

    import groupmood.detect.cascade as cascade
    import groupmood.detect.detector as detector_mod
    from groupmood.fusion.plan import FusionPlan
    from groupmood.pipeline import Branch, GroupEmotionRecognizer, shared_trunks

    names = {id(br): n for n, br in rec.branches.items()}
    trunks = {n: "+".join(g) for g in shared_trunks(rec.active_branches()) for n in g}

    def branch(br: Any) -> str:
        return names.get(id(br), br.info.name)

    def crops_stage(br: Any, image: Any, faces: Any) -> str:
        return f"face crops: {branch(br)}" if br.is_face else f"whole image {branch(br)}: centre crop"

    def features_stage(br: Any, inputs: Any) -> str:
        n = branch(br)
        return f"face trunk, shared ({trunks.get(n, n)})" if br.is_face else f"whole image {n}: trunk (regime gate)"

    def scores_stage(br: Any, inputs: Any) -> str:
        return f"face model: {branch(br)}" if br.is_face else f"whole image {branch(br)}: model"

    def area_stage(*_: Any) -> str | None:  # in a crop of candidates (or in area_resize) it is part of that stage
        if timer.parent() in ("MTCNN R-Net: crops 24x24", "MTCNN O-Net: crops 48x48", LEVELS):
            return None
        return LEVELS

    det = rec.detector
    pnet, rnet, onet = det.runners
    runners = (TimedRunner(pnet, timer.wrap(pnet, "MTCNN P-Net: net", lambda x: 1)),
               TimedRunner(rnet, timer.wrap(rnet, "MTCNN R-Net: net", lambda x: len(x))),
               TimedRunner(onet, timer.wrap(onet, "MTCNN O-Net: net", lambda x: len(x))))
    with ExitStack() as stack:
        stack.enter_context(patched(det, "runners", runners))
        stack.enter_context(patched(cascade, "integral_image",
                                    timer.wrap(cascade.integral_image, "MTCNN summed-area tables", lambda img: 1)))
        for fn in ("area_resize", "_area_input"):  # a level's or a crop's area averaging, whichever the cascade calls
            if hasattr(cascade, fn):
                stack.enter_context(patched(cascade, fn, timer.wrap(getattr(cascade, fn), area_stage)))
        stack.enter_context(patched(cascade, "_stage1", timer.wrap(
            cascade._stage1, "MTCNN P-Net: candidates, NMS", lambda images, *a, **k: len(images))))
        stack.enter_context(patched(cascade, "_crops", timer.wrap(
            cascade._crops, lambda tables, regions, ids, size, *a: f"MTCNN {'R' if size == cascade.RNET_SIZE else 'O'}-Net: crops "
                                                                  f"{size}x{size}",
            lambda tables, regions, *a: len(regions))))
        stack.enter_context(patched(detector_mod, "run_cascade", timer.wrap(
            detector_mod.run_cascade, "MTCNN: NMS, regression (stages 2-3)", lambda images, *a, **k: len(images))))
        stack.enter_context(patched(detector_mod.FaceDetector, "detect", timer.wrap(
            detector_mod.FaceDetector.detect, "MTCNN: input checks, Face objects")))
        stack.enter_context(patched(Branch, "crops", timer.wrap(
            Branch.crops, crops_stage, lambda br, image, faces: len(faces) if br.is_face else 1)))
        stack.enter_context(patched(Branch, "features", timer.wrap(
            Branch.features, features_stage, lambda br, inputs: len(inputs))))
        stack.enter_context(patched(Branch, "scores_from_features", timer.wrap(
            Branch.scores_from_features, "face heads on the trunk's features", lambda br, feats: len(feats))))
        stack.enter_context(patched(Branch, "scores", timer.wrap(
            Branch.scores, scores_stage, lambda br, inputs: len(inputs))))
        if getattr(rec, "regime", None) is not None:
            stack.enter_context(patched(type(rec.regime), "crowd_probs", timer.wrap(
                type(rec.regime).crowd_probs, "regime gate")))
        stack.enter_context(patched(FusionPlan, "fuse", timer.wrap(FusionPlan.fuse, "fusion")))
        stack.enter_context(patched(GroupEmotionRecognizer, "_predict", timer.wrap(
            GroupEmotionRecognizer._predict, "pooling, calibration, results", lambda self, photos, *a: len(photos))))
        stack.enter_context(patched(GroupEmotionRecognizer, "predict", timer.wrap(
            GroupEmotionRecognizer.predict, "predict: photo list, thread pool")))
        yield


def profile(paths: list[Path], workers: int) -> dict[str, Any]:
    """Decode and predict every photo as ``groupmood predict`` does, timed by stage; the timings and counts."""
    from concurrent.futures import ThreadPoolExecutor

    from groupmood.cli.predict import build_recognizer, predict_cmd
    from groupmood.errors import ImageLoadError
    from groupmood.images import load_photo

    defaults = {p.name: p.default for p in predict_cmd.params}
    t0 = time.perf_counter()
    rec = build_recognizer(defaults["bundle"], defaults["device"], defaults["backend"])
    load_s = time.perf_counter() - t0
    rec.workers = workers
    short = rec.decode_short_side()
    timer = StageTimer()
    decode = timer.wrap(load_photo, "decode and resize (load_photo)", lambda *a, **k: 1)
    faces = 0
    skipped: list[str] = []

    def one(path: Path) -> int:
        try:
            photo = decode(path, defaults["max_pixels"], short)
        except ImageLoadError as exc:
            skipped.append(str(exc))
            return 0
        return len(rec.predict([photo])[0].faces)

    with instrument(rec, timer):
        if paths:
            one(paths[0])  # warm-up: first calls of each ONNX Runtime session
        timer.reset()
        cpu0, t0 = time.process_time(), time.perf_counter()
        if workers <= 1:
            faces = sum(one(p) for p in paths)
        else:  # as predict: one photo per thread, photos flowing through
            with ThreadPoolExecutor(workers) as pool:
                faces = sum(pool.map(one, paths))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"timer": timer, "wall": wall, "cpu": cpu, "faces": faces, "load_s": load_s, "short": short,
            "backend": rec.backend, "branches": list(rec.active_branches()), "skipped": skipped,
            "settings": rec.detector.settings}


def table(res: dict[str, Any]) -> list[str]:
    """The markdown table: stage, seconds, share of the timed loop, calls, inputs; then the loop's total."""
    t: StageTimer = res["timer"]
    total = sum(t.seconds.values())
    rows = ["| Stage | seconds | share | calls | inputs |", "|---|---:|---:|---:|---:|"]
    for name in t.order:
        rows.append(f"| {name} | {t.seconds[name]:.2f} | {100 * t.seconds[name] / total:.1f}% | {t.calls[name]} | "
                    f"{t.inputs[name] or ''} |")
    mtcnn = sum(s for n, s in t.seconds.items() if n.startswith("MTCNN"))
    rows.append(f"| **MTCNN, all stages** | {mtcnn:.2f} | {100 * mtcnn / total:.1f}% | | |")
    rows.append(f"| **all stages** | {total:.2f} | 100% | | |")
    return rows


def photos_of(name: str, shared: Path, limit: int | None) -> list[Path]:
    """The photos of set ``name`` (benchmarks/predict.py's sets), the first ``limit`` of them."""
    from predict import photo_sets

    sets = photo_sets(shared, limit, 0)
    if name not in sets:
        raise SystemExit(f"photo set {name!r} not found under {shared}")
    return sets[name]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default=SETS[0], choices=SETS, help=f"photo set (default: {SETS[0]}, 228 photos)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="shared data folder (default: ../shared/data from the repo root)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos of the set")
    ap.add_argument("--workers", type=int, default=1,
                    help="photos worked on at once, one per thread (default 1: stage times add up to wall-clock "
                         "time; predict uses one per CPU under ONNX Runtime)")
    ap.add_argument("--write", action="store_true", help="also make this the current section of RESULTS.md")
    args = ap.parse_args(argv)
    from groupmood.runtime import settings

    paths = photos_of(args.set, args.shared.resolve(), args.limit)
    for p in paths:
        p.read_bytes()  # page cache warm
    load_start = loadavg()
    print(f"{args.set}: {len(paths)} photos; load average {load_start}", flush=True)
    res = profile(paths, args.workers)
    rows = table(res)
    t: StageTimer = res["timer"]
    st = res["settings"]
    notes = [
        f"{args.set}: {len(paths)} photos of `{args.shared}`, {res['faces']} faces found; `groupmood predict`'s "
        f"default recognizer (backend {res['backend']}; branches run: {', '.join(res['branches'])}; MTCNN "
        f"thresholds {'/'.join(f'{x:g}' for x in st.thresholds)}, factor {st.factor}, minimum face "
        f"{st.min_face_frac:g} of the shorter side), photos decoded to a shorter side of at least {res['short']} px "
        "as predict decodes them; one warm-up photo first, untimed.",
        f"ONNX Runtime: {settings().describe()}; {args.workers} photo(s) at once"
        + (" (stage seconds are thread-seconds)" if args.workers > 1 else "") + ".",
        f"Timed loop: {res['wall']:.2f} s wall-clock, {res['cpu']:.2f} s CPU time of this process "
        f"({len(paths) / res['wall']:.2f} photos/s; model load before it {res['load_s']:.1f} s). Stage times are each "
        "stage's own (nested timed stages subtracted); a shared machine makes them noisy (load average above).",
        f"MTCNN: {t.calls['MTCNN P-Net: net']} P-Net calls (one per pyramid level), "
        f"{t.inputs['MTCNN R-Net: net']} R-Net candidates, {t.inputs['MTCNN O-Net: net']} O-Net candidates, "
        f"{res['faces']} faces.",
    ]
    if res["skipped"]:
        notes.append(f"Skipped (unreadable): {'; '.join(res['skipped'])}.")
    print("\n".join(rows))
    print("\n".join(notes))
    name = f"groupmood predict time by stage: {args.set}" + (f", {args.workers} workers" if args.workers > 1 else "")
    import torch

    publish_result(name, torch.get_num_threads(), load_start, notes, rows, args.write)
    return 0


if __name__ == "__main__":
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    raise SystemExit(main())
