"""Training throughput (images/s) of one recipe with 1, 2, ... processes: plain ``groupmood train`` for
one process, ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on CUDA) for more.

Every run trains the same recipe on the same fixed subset of its training set (``train.subset``)
with the same global batch (``train.batch_size``, split across processes), without validation or
mid-epoch checkpoints; the figure is the median over the epochs after the first (warm-up) of the
engine's own ``images_per_s`` (global images / seconds of the training steps, read from the run's
metrics.jsonl). On a CPU the cores are shared out: N processes get ``cores // N`` torch threads
each (``--threads-per-process`` to change it). Prints a markdown table and appends it to
its section of ``benchmarks/RESULTS.md`` (one per device; ``--results`` for another file, ``--no-write`` for none).

    .venv/bin/python benchmarks/train_speed.py                                # CPU, 1 and 2 processes
    .venv/bin/python benchmarks/train_speed.py --device cuda --nproc 1,2      # GPUs, one per process
    .venv/bin/python benchmarks/train_speed.py --recipe configs/tiny.yaml --set data.root=../shared/data/ckplus48
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, REPO, command_line, loadavg, machine_line, render_result_section, result_body, \
    write_result_section

DEFAULT_RECIPE = REPO / "configs" / "ferplus_resnet_compact.yaml"


def _run(nproc: int, args: argparse.Namespace, threads: int, out: Path) -> dict:
    """Train once with ``nproc`` processes; returns images/s per epoch and the wall time."""
    sets = [f"train.subset={args.subset}", f"train.epochs={args.epochs}", "train.val_every=0",
            "train.ckpt_every=0", "train.progress=false", f"threads={threads}", *args.set]
    if args.batch:
        sets.append(f"train.batch_size={args.batch}")
    cli = ["-m", "groupmood.cli", "train", str(args.recipe), "--out", str(out), "--device", args.device]
    for s in sets:
        cli += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    argv = ([sys.executable, *cli] if nproc == 1 else
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cli])
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=args.timeout,
                          check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: the {nproc}-process run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                 f"{proc.stderr[-4000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    scaling = json.loads((out / "scaling.json").read_text())
    return {"rates": [r["images_per_s"] for r in rows], "wall": wall, "scaling": scaling,
            "loss": rows[-1]["train_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="Training recipe (default: %(default)s).")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="Extra config override, as groupmood train --set (repeatable).")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process).")
    ap.add_argument("--nproc", default="1,2", help="Comma-separated process counts, run in this order "
                    "(default: %(default)s); the table lists them by count, speed-up against the fewest.")
    ap.add_argument("--subset", type=int, default=1024, help="Training images per epoch (default: %(default)s).")
    ap.add_argument("--epochs", type=int, default=4, help="Epochs; the first is warm-up (default: %(default)s).")
    ap.add_argument("--batch", type=int, default=None, help="Global batch (default: the recipe's).")
    ap.add_argument("--threads-per-process", type=int, default=None,
                    help="torch threads per process (default on CPU: cores // N; on CUDA: 1).")
    ap.add_argument("--timeout", type=float, default=3600.0, help="Seconds before a run counts as hung.")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "train_speed", help="Run folders go here.")
    ap.add_argument("--results", type=Path, default=None, help="Markdown file whose section to replace "
                    "(default: benchmarks/RESULTS.md).")
    ap.add_argument("--no-write", action="store_true", help="Print only.")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first is warm-up)")
    counts = [int(n) for n in args.nproc.split(",") if n.strip()]
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda but torch sees no GPU")
        if max(counts) > torch.cuda.device_count():
            ap.error(f"--nproc {max(counts)} but only {torch.cuda.device_count()} GPU(s)")
        gpu = torch.cuda.get_device_name(0)
    else:
        gpu = None
    cores = os.cpu_count() or 1
    load_start = loadavg()
    table = [("| processes | device | threads / process | global batch | batch / process | images/s (median) "
              "| per-epoch images/s | speed-up | wall s |"), "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    results = {}
    for n in counts:
        threads = args.threads_per_process or (1 if gpu else max(1, cores // n))
        res = _run(n, args, threads, args.out / f"{args.device.replace(':', '')}-{n}")
        results[n] = (threads, statistics.median(res["rates"][1:]), res)
        print(f"{n} process(es): {results[n][1]:.1f} images/s", flush=True)
    base = results[min(results)][1]  # speed-up against the fewest processes measured
    for n, (threads, rate, res) in sorted(results.items()):
        sc = res["scaling"]
        table.append(f"| {n} | {gpu or 'cpu'} | {threads} | {sc['effective_batch_size']} | "
                     f"{sc['batch_size_per_process']} | {rate:.1f} | {' '.join(f'{r:.0f}' for r in res['rates'])} | "
                     f"{rate / base:.2f}x | {res['wall']:.0f} |")
    notes = [(f"Recipe: {args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe}"
             f"{' ' + ' '.join('--set ' + s for s in args.set) if args.set else ''}; train.subset={args.subset}, "
             f"{args.epochs} epochs (first = warm-up, left out of the median); 1 process: plain groupmood train; "
             f"N > 1: torchrun --standalone --nproc_per_node N ({'NCCL' if gpu else 'gloo'}). images/s: global "
             "training images per second of training steps (no validation, no checkpoints).")]
    name = f"Training throughput, 1 vs N processes on {gpu or 'CPU'}"
    body, machine = result_body(load_start, notes, table), machine_line(cores)
    if args.no_write:
        print("\n" + render_result_section(name, body, command_line(), machine))
        return
    path = args.results or RESULTS
    print("\n" + write_result_section(name, body, command_line(), machine, path) + f"\n(section {name!r} of {path})")

if __name__ == "__main__":
    main()
