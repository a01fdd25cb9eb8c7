"""``predict --resume`` killed with SIGKILL at seeded random points, in its main loop and in its
resume start-up, ends with every photo exactly once and the records of a clean run.

Runs are forked from one helper process that has imported groupmood and torch (and run no torch
op, so forking is safe): each run then starts in a fraction of a second, and 24 kills take about
half a minute. Resumed runs name the photo folder alternately by its absolute and its relative
path: resume must know the photos whatever their spelling. After every kill, no record that was
finished before the run started may be missing.
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # kills and forks processes; ~100 s

FORKER = r'''
import json, os, sys, traceback
import torch  # imported before forking; no torch op runs in this process
from groupmood.cli import main

for line in sys.stdin:
    argv, log, cwd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        rc = 99
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(cwd)
            torch.set_num_threads(1)
            rc = main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"done {os.waitstatus_to_exitcode(status)}", flush=True)
'''

KILLS = 24


class Forker:
    """The helper process: ``start(argv)`` forks one run and returns its pid; ``wait()`` its exit code."""

    def __init__(self, cwd: Path, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0, env=env)
        self.cwd, self.log = cwd, log

    def start(self, argv: list[str]) -> int:
        self.proc.stdin.write((json.dumps([argv, str(self.log), str(self.cwd)]) + "\n").encode())
        line = self.proc.stdout.readline().decode()
        assert line.startswith("pid "), f"helper died: {line!r}; log:\n{self.log.read_text()[-3000:]}"
        return int(line.split()[1])

    def finished(self) -> bool:
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def wait(self) -> int:
        line = self.proc.stdout.readline().decode()
        assert line.startswith("done "), f"helper died: {line!r}"
        return int(line.split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def _photos(folder: Path) -> int:
    """Six small real photos (scikit-image's) and one broken file; returns the number of inputs."""
    from skimage import data

    folder.mkdir()
    arrays = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
              "camera": data.camera(), "rocket": data.rocket()}
    for name, arr in arrays.items():
        img = Image.fromarray(arr)
        img.thumbnail((240, 240))
        img.save(folder / f"{name}.jpg", quality=95)
    Image.open(folder / "astronaut.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirror.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return len(arrays) + 2


def _lines(out: Path) -> list[str]:
    """Complete lines of the run's output: FILE.partial while it exists, else FILE."""
    partial = out.with_name(out.name + ".partial")
    for f in (partial, out):
        try:
            text = f.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            continue
        return text.split("\n")[:-1]
    return []


def _by_photo(lines: list[str]) -> dict[str, dict]:
    recs: dict[str, dict] = {}
    for ln in lines:
        rec = json.loads(ln)
        key = os.path.realpath(rec.pop("file"))
        assert key not in recs, f"{key} twice"
        recs[key] = rec
    return recs


def _kept(lines: list[str]) -> set[str]:
    """Finished records (a failed photo's record is dropped by design: it is tried again)."""
    return {ln for ln in lines if '"error"' not in ln}


def test_predict_resume_survives_random_kills(tmp_path, detector, monkeypatch):
    from test_pipeline import _bundle

    monkeypatch.chdir(tmp_path)  # where relative names in the records resolve, as in the runs

    n_inputs = _photos(tmp_path / "in")
    bundle = _bundle(tmp_path / "bundle", with_global=False)
    out = tmp_path / "out" / "pred.jsonl"
    spellings = [str(tmp_path / "in"), "in"]  # absolute, and relative to the runs' working folder

    def argv(spelling: str, target: Path, resume: bool = True) -> list[str]:
        return ["predict", spelling, "--bundle", str(bundle), "-o", str(target), "--no-progress",
                "--batch-size", "2", *(["--resume"] if resume else [])]

    forker = Forker(tmp_path, tmp_path / "runs.log")
    try:
        clean_out = tmp_path / "clean.jsonl"
        forker.start(argv(spellings[0], clean_out, resume=False))
        assert forker.wait() == 1  # the broken file
        clean = _by_photo(clean_out.read_text().splitlines())
        assert len(clean) == n_inputs
        # the length of a resume start-up: a resumed run of a finished output that has nothing to do
        # but read it back, write it again and try the broken file
        warm = tmp_path / "warm.jsonl"
        warm.write_bytes(clean_out.read_bytes())
        t0 = time.monotonic()
        forker.start(argv(spellings[1], warm))
        assert forker.wait() == 1
        start_up = time.monotonic() - t0

        rng = random.Random(20261130)
        kills = {"start-up": 0, "main loop": 0}
        runs = completed = 0
        while sum(kills.values()) < KILLS or not completed:
            before = _kept(_lines(out))
            where = ("start-up", "main loop")[runs % 2]
            pid = forker.start(argv(spellings[(runs // 2) % 2], out))
            runs += 1
            killing = sum(kills.values()) < KILLS
            if killing and where == "start-up":
                time.sleep(rng.uniform(0.0, start_up))
            elif killing:
                target = len(before) + rng.randint(1, 3)
                deadline = time.monotonic() + 60
                while not forker.finished() and len(_kept(_lines(out))) < target and time.monotonic() < deadline:
                    time.sleep(0.002)
            if killing and not forker.finished():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            code = forker.wait()
            after = _lines(out)
            assert before <= _kept(after), f"run {runs} ({where}) lost finished records"
            if code == -signal.SIGKILL:
                kills[where] += 1
                continue
            assert code == 1, f"run {runs} exited {code}; log:\n{(tmp_path / 'runs.log').read_text()[-3000:]}"
            assert not out.with_name(out.name + ".partial").exists()
            assert _by_photo(after) == clean  # every photo once, records as in a clean run
            completed += 1
            if sum(kills.values()) < KILLS:
                out.unlink()  # start over, so that main-loop kills keep happening
    finally:
        forker.close()
    assert kills["start-up"] >= 8 and kills["main loop"] >= 8, kills
