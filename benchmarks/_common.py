"""Helpers shared by the benchmark scripts: machine description, load, RESULTS.md appends."""
from __future__ import annotations

import argparse

import os
import platform
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))


def machine_line(threads: int) -> str:
    """CPU model, cores, Python and torch versions, torch threads."""
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch threads {threads}")


def loadavg() -> str:
    """The 1/5/15-minute load averages (the machine may be shared during a run)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def command_line() -> str:
    """The command that ran this script, as a user would type it from the repo root."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def append_results(section: str, path: Path = RESULTS) -> None:
    """Append a markdown section to RESULTS.md atomically (groupmood imported only here: the
    memory-measuring workers of detect.py start from a parent that holds the standard library only)."""
    from groupmood.io import atomic_write_text

    old = path.read_text() if path.exists() else (
        "# Benchmark results\n\nAppended by the scripts in `benchmarks/` (see README.md); newest last.\n")
    atomic_write_text(path, old.rstrip("\n") + "\n\n" + section.strip("\n") + "\n")


def section(title: str, threads: int, load_start: str, notes: list[str], table: list[str]) -> str:
    """A dated RESULTS.md section: title, command, machine, load at start and end, notes, table."""
    import datetime as dt

    return "\n".join([
        f"## {title} — {dt.date.today().isoformat()}",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line(threads)}  ",
        f"Load average at start / end: {load_start} / {loadavg()} (1/5/15 min; the machine may be shared)  ",
        *[n + "  " for n in notes],
        "",
        *table,
    ])


def publish(text: str, write: bool) -> None:
    """Print a section and, unless told not to, append it to RESULTS.md."""
    print("\n" + text)
    if write:
        append_results(text)


def photo_benchmark_parser(doc: str, threads_help: str, memory_help: str) -> argparse.ArgumentParser:
    """The options shared by the photo benchmarks (detect.py, predict.py): data, threads, size, output."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="shared data folder (default: ../shared/data from the repo root)")
    ap.add_argument("--threads", type=int, default=2, help=threads_help)
    ap.add_argument("--limit", type=int, default=None, help="use only N photos (quick run)")
    ap.add_argument("--no-memory", action="store_true", help=memory_help)
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    return ap


def run_memory_workers(script: str | Path, kinds: tuple[str, ...], shared: Path, threads: int,
                       limit: int | None) -> dict:
    """Run ``script --worker KIND`` once per kind in a fresh process; return each one's last JSON line.

    Peak RSS is only honest per process, so each measured tool runs alone in its own subprocess.
    """
    import json
    import subprocess

    out = {}
    for kind in kinds:
        cmd = [sys.executable, str(Path(script).resolve()), "--worker", kind, "--shared", str(shared),
               "--threads", str(threads)] + (["--limit", str(limit)] if limit else [])
        print(f"memory worker: {kind} ...", flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"worker {kind} failed:\n{r.stderr[-3000:]}")
        out[kind] = json.loads(r.stdout.strip().splitlines()[-1])
    return out
