"""``groupmood train`` under torchrun on CPU (gloo): 2 processes train as 1 with the same global batch,
and a 2-process run killed on one rank after its first checkpoint resumes to the same final weights.

Runs are launched as ``python -m torch.distributed.run --standalone`` subprocesses (a free port
chosen by torchrun's own rendezvous), each with a timeout so that a hang fails the test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import _write_faces

from groupmood.config import load_config
from groupmood.engine.samplers import EpochBatchSampler, EpochDistributedSampler
from groupmood.engine.train import train
from groupmood.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
TIMEOUT_S = 240


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun_argv(nproc: int, run: Path, *sets: str, resume: bool = False, device: str = "cpu") -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "groupmood.cli", "train", str(TINY), "--out", str(run), "--device", device]
    for s in sets:
        argv += ["--set", s]
    return argv + (["--resume"] if resume else [])


def _torchrun(nproc: int, run: Path, *sets: str, resume: bool = False,
              device: str = "cpu") -> subprocess.CompletedProcess:
    proc = subprocess.run(_torchrun_argv(nproc, run, *sets, resume=resume, device=device), env=_env(),
                          capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return _write_faces(tmp_path_factory.mktemp("dfaces") / "set")


def _sets(faces: Path) -> list[str]:
    """The 2-process recipe of both torchrun tests: tiny model, augmentation on, frozen BatchNorm."""
    return [f"data.root={faces}", "train.epochs=6", "train.ckpt_every=1", "train.batchnorm=frozen"]


@pytest.fixture(scope="module")
def two_processes(faces, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted 2-process run (global batch 8 = 2 x 4)."""
    run = tmp_path_factory.mktemp("two") / "run"
    return run, _torchrun(2, run, *_sets(faces))


# --------------------------------------------------------------------------- sampler (no processes)

@pytest.mark.parametrize("world", [2, 4])
def test_distributed_sampler_splits_each_global_batch(world):
    """Process r takes positions r, r+N, ... of global batch b: together exactly one process's batch b."""
    n, batch, seed, epoch = 50, 8, 3, 2
    single = list(EpochBatchSampler(n, batch, seed, epoch))
    shares = [list(EpochDistributedSampler(range(n), batch, seed, epoch, world, r)) for r in range(world)]
    local = batch // world
    for b, items in enumerate(single):
        parts = [s[b * local:(b + 1) * local] for s in shares]
        assert sorted(i for p in parts for i in p) == sorted(items)
        assert all(p == items[r::world] for r, p in enumerate(parts))
    resumed = list(EpochDistributedSampler(range(n), batch, seed, epoch, world, 1, start=4))
    assert resumed == shares[1][4 * local:]
    with pytest.raises(ConfigError, match="divide evenly"):
        EpochDistributedSampler(range(n), 6, seed, epoch, 4, 0)


def test_single_process_batchnorm_option(faces, tmp_path):
    """frozen keeps every BatchNorm's running statistics; unknown modes name the choices; scaling.json."""
    cfg = load_config(TINY, [f"data.root={faces}", "device=cpu", "train.max_steps=2", "train.batchnorm=frozen"])
    train(cfg, tmp_path / "frozen")
    w = _weights(tmp_path / "frozen" / "last.pt")
    means = [k for k in w if k.endswith("running_mean")]
    assert means and all(torch.equal(w[k], torch.zeros_like(w[k])) for k in means)
    scaling = json.loads((tmp_path / "frozen" / "scaling.json").read_text())
    assert scaling["world_size"] == 1 and scaling["effective_batch_size"] == 8 and scaling["batchnorm"] == "frozen"
    assert "lr_rule" in scaling
    with pytest.raises(ConfigError, match="batch, sync, frozen"):
        train(load_config(TINY, [f"data.root={faces}", "device=cpu", "train.batchnorm=local"]), tmp_path / "bad")


def test_sync_batchnorm_on_cpu_processes_is_refused(faces, tmp_path, monkeypatch):
    """torch's SyncBatchNorm runs on GPUs only: asking for it with CPU processes says what to use instead."""
    from groupmood.engine import distributed

    monkeypatch.setattr(distributed, "requested", lambda: True)
    monkeypatch.setattr(distributed, "setup", lambda device: distributed.DistInfo(0, 2, 0, "gloo"))
    cfg = load_config(TINY, [f"data.root={faces}", "device=cpu", "train.batchnorm=sync"])
    with pytest.raises(ConfigError, match="needs CUDA.*batch.*frozen"):
        train(cfg, tmp_path / "run")


# --------------------------------------------------------------------------- torchrun

@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_train_as_one(faces, tmp_path, two_processes):
    """Same global batch (8 = 2 x 4), augmentation on, frozen BatchNorm: same losses and weights."""
    two, proc = two_processes
    one = train(load_config(TINY, [*_sets(faces), "device=cpu"]), tmp_path / "one")
    assert proc.stdout.count("finished at step") == 1  # rank 0 alone prints
    a, b = _rows(tmp_path / "one"), _rows(two)
    assert len(a) == 6 and [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5, abs=1e-6)
        assert rb["train_acc"] == ra["train_acc"] and rb["val_acc"] == ra["val_acc"]
    wa, wb = _weights(tmp_path / "one" / "last.pt"), _weights(two / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    scaling = json.loads((two / "scaling.json").read_text())
    assert scaling["world_size"] == 2 and scaling["backend"] == "gloo"
    assert scaling["batch_size_per_process"] == 4 and scaling["effective_batch_size"] == 8
    assert one["finished"] and (two / "model.safetensors").is_file()


def _worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers below ``launcher`` (read from /proc)."""
    found: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher:
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(d.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc (Linux)")
@pytest.mark.integration
def test_killed_rank_resumes_to_the_same_weights(faces, tmp_path, two_processes):
    """SIGKILL rank 1 after the first checkpoint; torchrun stops rank 0; --resume ends where the
    uninterrupted 2-process run ends, bit for bit."""
    whole, _ = two_processes
    sets = _sets(faces)

    run = tmp_path / "killed"
    launcher = subprocess.Popen(_torchrun_argv(2, run, *sets), env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (run / "last.pt").is_file() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        workers = _worker_pids(launcher.pid)
        assert 1 in workers, "no rank-1 worker found (the run ended before its first checkpoint?)"
        os.kill(workers[1], signal.SIGKILL)
        out, _ = launcher.communicate(timeout=TIMEOUT_S)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode != 0, out[-3000:]
    stopped = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    total = torch.load(whole / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert 1 <= stopped["step"] < total, (stopped["step"], total)

    proc = _torchrun(2, run, *sets, resume=True)
    assert f"step {stopped['step']}" in proc.stdout
    wa, wb = _weights(whole / "last.pt"), _weights(run / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def drop(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "images_per_s"}

    assert [drop(r) for r in _rows(whole)] == [drop(r) for r in _rows(run)]
    assert np.isfinite([r["train_loss"] for r in _rows(run)]).all()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL and SyncBatchNorm: needs 2 GPUs")
@pytest.mark.integration
def test_two_gpus_with_sync_batchnorm_train_as_one(faces, tmp_path):
    """SyncBatchNorm normalises by the global batch: 2 GPUs give one GPU's losses and weights (GPU rounding)."""
    sets = [f"data.root={faces}", "train.epochs=3", "train.batchnorm=sync", "train.amp=false"]
    train(load_config(TINY, [*sets, "device=cuda"]), tmp_path / "one")
    _torchrun(2, tmp_path / "two", *sets, device="cuda")
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-3)
    wa, wb = _weights(tmp_path / "one" / "last.pt"), _weights(tmp_path / "two" / "last.pt")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4, msg=k)
    assert json.loads((tmp_path / "two" / "scaling.json").read_text())["backend"] == "nccl"
