"""Helpers shared by the benchmark scripts: machine description, load, RESULTS.md sections.

RESULTS.md holds the current result of each measurement, one section each; a script replaces its
own section (:func:`write_result_section`) and git keeps the history.
"""
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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s "model name"), or "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_line(threads: int) -> str:
    """CPU model, cores, Python and torch versions, torch threads."""
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
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


RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "The current result of each measurement, one section each: a benchmark script replaces its own section\n"
    "when it runs (`write_result_section` in `benchmarks/_common.py`). Each section starts with the date,\n"
    "commit, machine and command of its run. Earlier results are in git history:\n"
    "`git log -p benchmarks/RESULTS.md`.\n"
)
_MARK = "<!-- result: "


def git_commit() -> str:
    """The short commit the working tree is at, noting uncommitted changes to tracked code or configs."""
    import subprocess

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], check=False, cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "commit not recorded"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks", "configs")
    return head + (" (with uncommitted changes)" if dirty else "")


def render_result_section(name: str, markdown: str, command: str, machine: str, when: str | None = None,
                          commit: str | None = None) -> str:
    """A RESULTS.md section: marker, ``## name``, one row of date / commit / machine / command, the body.

    ``markdown`` is the body (notes and tables); it must not hold ``## `` headings (use ``###``).
    """
    import datetime as dt

    when = when or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = commit or git_commit()

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return "\n".join([
        f"{_MARK}{name} -->",
        f"## {name}",
        "",
        "| date | commit | machine | command |",
        "|---|---|---|---|",
        f"| {cell(when)} | {cell(commit)} | {cell(machine)} | `{cell(command)}` |",
        "",
        markdown.strip("\n"),
        "",
    ])


def split_result_sections(text: str) -> list[tuple[str | None, list[str]]]:
    """RESULTS.md as chunks: (section name, lines) for marked sections, (None, lines) for anything else.

    A section runs from its marker to the next marker or the next ``## `` heading after its own.
    """
    chunks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        if line.startswith(_MARK) and line.rstrip().endswith("-->"):
            chunks.append((line[len(_MARK):].rstrip()[:-3].strip(), [line]))
        elif line.startswith("## ") and chunks[-1][0] is not None and any(
                x.startswith("## ") for x in chunks[-1][1]):
            chunks.append((None, [line]))
        else:
            chunks[-1][1].append(line)
    return chunks


def write_result_section(name: str, markdown: str, command: str, machine: str, path: Path = RESULTS,
                         when: str | None = None, commit: str | None = None, supersedes: tuple[str, ...] = ()) -> str:
    """Replace section ``name`` of RESULTS.md with this run's (added after the others if new); atomic write.

    ``supersedes`` names sections this one replaces (a measurement renamed): they are removed, and a new
    ``name`` takes the place of the first of them. Returns the section's text. A lock file keeps two
    benchmarks finishing together from losing one.
    """
    from groupmood.io import RunLock, atomic_write_text

    new = render_result_section(name, markdown, command, machine, when, commit)
    path = Path(path)
    with RunLock(path.with_name(path.name + ".lock")):
        chunks = split_result_sections(path.read_text() if path.exists() else RESULTS_HEADER)
        names = [n for n, _ in chunks]
        old = [i for i, n in enumerate(names) if n in supersedes and n != name]
        if old and name not in names:
            chunks[old.pop(0)] = (name, new.splitlines())
        chunks = [c for i, c in enumerate(chunks) if i not in old]
        names = [n for n, _ in chunks]
        if name in names:
            chunks[names.index(name)] = (name, new.splitlines())
        else:
            last = max((i for i, n in enumerate(names) if n is not None), default=len(chunks) - 1)
            chunks.insert(last + 1, (name, new.splitlines()))
        body = "\n\n".join("\n".join(lines).strip("\n") for _, lines in chunks if any(x.strip() for x in lines))
        atomic_write_text(path, body + "\n")
    return new


def repo_path(path: Path) -> Path:
    """``path`` relative to the repo root when it lies inside it (section names do not depend on the cwd)."""
    p = Path(path).resolve()
    return p.relative_to(REPO) if p.is_relative_to(REPO) else p


def result_body(load_start: str, notes: list[str], table: list[str]) -> str:
    """The body of a section: load average at start and end, notes, table."""
    return "\n".join([
        f"Load average at start / end: {load_start} / {loadavg()} (1/5/15 min; the machine may be shared)  ",
        *[n + "  " for n in notes],
        "",
        *table,
    ])


def publish_result(name: str, threads: int, load_start: str, notes: list[str], table: list[str],
                   write: bool, supersedes: tuple[str, ...] = ()) -> None:
    """Print this run's section and, unless told not to, make it the current one of ``name`` in RESULTS.md
    (removing the sections it ``supersedes``)."""
    body, command, machine = result_body(load_start, notes, table), command_line(), machine_line(threads)
    if write:
        text = write_result_section(name, body, command, machine, supersedes=supersedes)
        print("\n" + text + f"\n(section {name!r} of {RESULTS} replaced)")
    else:
        print("\n" + render_result_section(name, body, command, machine))


def photo_benchmark_parser(doc: str, threads_help: str, memory_help: str) -> argparse.ArgumentParser:
    """The options shared by the photo benchmarks (detect.py, predict.py): data, threads, size, output."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="shared data folder (default: ../shared/data from the repo root)")
    ap.add_argument("--threads", type=int, default=2, help=threads_help)
    ap.add_argument("--limit", type=int, default=None, help="use only N photos (quick run)")
    ap.add_argument("--no-memory", action="store_true", help=memory_help)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
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
