"""``groupmood predict`` before and after a change: records and whole-process time of two source trees.

A refactor must not change what ``predict`` says nor make it slower. This script checks out ``--base`` (a
git revision) into a temporary worktree and runs ``groupmood predict`` from it and from this checkout, with
the same Python and the same weight and ONNX caches, on the same photo sets (the 228 benchmark photos of
``benchmarks/detect.py``, multiemova-dev, crowd-dev):

* **records**: one ``--all-branches`` run per tree; each photo's record compared key by key. Keys only the
  new tree writes are listed, not counted as differences; numbers that differ are reported with their
  largest absolute difference, labels that differ are counted apart.
* **time**: ``--rounds`` rounds of one whole ``predict`` process per tree and set (default options, as a
  user runs it), the trees taking turns within each round; medians reported with the load average.

Prints a table and replaces its section of RESULTS.md.

    .venv/bin/python benchmarks/compare_trees.py --base 42ab4f9
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import REPO, loadavg, publish_result
from detect import photo_paths


def photo_sets(shared: Path) -> dict[str, list[Path]]:
    """The photo sets, each in a fixed order."""
    from groupmood.paths import iter_image_paths

    sets = {"228 benchmark photos": [p for _, p in photo_paths(shared, None)]}
    for name in ("multiemova-dev", "crowd-dev"):
        if (shared / name).is_dir():
            sets[name] = list(iter_image_paths([shared / name]))
    return sets


def run_predict(src: Path, paths: list[Path], out: Path, extra: tuple[str, ...] = ()) -> float:
    """Seconds one whole ``groupmood predict`` process of the tree ``src`` takes on ``paths``."""
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "groupmood.cli", "predict", *map(str, paths), "-o", str(out),
                           "--no-progress", *extra], env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"predict from {src} failed:\n{proc.stderr[-3000:]}")
    return took


def differences(old: Any, new: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(key path, old, new) of every value that differs; keys only in ``new`` as (path, None, '<new key>')."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in new:
            if k not in old:
                yield f"{where}.{k}", None, "<new key>"
        for k in old:
            yield from differences(old[k], new.get(k, "<missing>"), f"{where}.{k}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from differences(a, b, f"{where}[{i}]")
    elif old != new:
        yield where, old, new


def compare_records(old_file: Path, new_file: Path) -> dict[str, Any]:
    """Photos whose records differ (new keys aside), labels that differ, the largest number difference, new keys."""
    old = [json.loads(line) for line in old_file.read_text(encoding="utf-8").splitlines()]
    new = [json.loads(line) for line in new_file.read_text(encoding="utf-8").splitlines()]
    differing, labels, largest, new_keys = 0, 0, 0.0, set()
    for a, b in zip(old, new):
        found = False
        for path, x, y in differences(a, b):
            if y == "<new key>":
                new_keys.add(path.rsplit(".", 1)[-1])
                continue
            found = True
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
                largest = max(largest, abs(float(x) - float(y)))
        labels += a.get("label") != b.get("label")
        differing += found
    return {"photos": len(old), "same_count": len(old) == len(new), "differing": differing, "labels": labels,
            "largest": largest, "new_keys": sorted(new_keys)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare this checkout with")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per tree and set")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    args = ap.parse_args(argv)
    sets = photo_sets(args.shared)
    load_start = loadavg()
    work = Path(tempfile.mkdtemp(prefix="groupmood-compare-"))
    base_tree = work / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base], check=True,
                   capture_output=True)
    trees = {"base": base_tree / "src", "new": REPO / "src"}
    try:
        records = {}
        for name, paths in sets.items():
            outs = {t: work / f"{t}-{len(records)}.jsonl" for t in trees}
            for tree, src in trees.items():
                run_predict(src, paths, outs[tree], ("--all-branches",))
            records[name] = compare_records(outs["base"], outs["new"])
            print(f"{name}: {records[name]}", flush=True)
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for name, paths in sets.items():
                for tree, src in trees.items():
                    took = run_predict(src, paths, work / "timed.jsonl")
                    times.setdefault((name, tree), []).append(took)
                    print(f"round {r + 1} {name} {tree}: {took:.2f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    table = ["| photos | n | records that differ (--all-branches) | labels that differ | largest number difference "
             "| keys only after | base s (median) | after s (median) | speed after / base |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for name, paths in sets.items():
        rc = records[name]
        base, new = statistics.median(times[(name, "base")]), statistics.median(times[(name, "new")])
        table.append(f"| {name} | {len(paths)} | {rc['differing']} | {rc['labels']} | {rc['largest']:.4g} | "
                     f"{', '.join(rc['new_keys']) or '-'} | {base:.2f} | {new:.2f} | {base / new:.2f}x |")
    notes = [f"Base: `{args.base}`; after: this checkout. Same Python, weights and ONNX cache; default options, "
             f"{args.rounds} alternating rounds of one whole process per tree and set."]
    publish_result(f"groupmood predict before and after a change (base {args.base})", 2, load_start, notes, table,
                   not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
