"""What a training run keeps on disk to resume and to ship its model.

- :class:`TrainState`: where a run stands (epoch, batch, step, running sums, best metric);
- :func:`rng_state` / :func:`set_rng_state`: the torch, numpy, python and CUDA generators, stored
  as tensors and plain values so that ``torch.load`` reads them back with ``weights_only``;
- :func:`save_checkpoint`: an atomic write, so a run killed mid-save keeps its previous file;
- :func:`check_resumable`: a run resumes only with the config it was started with, apart from
  :data:`RESUME_FREE_KEYS`;
- :func:`export`: a checkpoint's model as fp16 safetensors.
"""
from __future__ import annotations

import io
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_model, save_model
from ..config import load_config
from ..errors import ConfigError
from ..io import atomic_write

__all__ = ["RESUME_FREE_KEYS", "TrainState", "check_resumable", "export", "rng_state", "save_checkpoint",
           "set_rng_state"]

#: Keys that may differ between a run and its resumption (they do not change the result).
RESUME_FREE_KEYS = ("device", "threads", "out", "train.max_steps", "train.progress", "data.workers",
                    "data.cache", "data.root")


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


def rng_state() -> dict[str, Any]:
    """This process's torch, python, numpy (and CUDA, once initialised) generator states."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states saved by :func:`rng_state` (CUDA's only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(obj: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically: serialised in memory, then written and renamed."""
    buf = io.BytesIO()
    torch.save(dict(obj), buf)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getbuffer())


def _flat(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"section.key": value}``; empty sections stay as values."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError unless ``run_dir`` holds a run to resume whose config matches ``cfg``.

    Keys of :data:`RESUME_FREE_KEYS` (and those under them) may differ.
    """
    saved_path = run_dir / "config.yaml"
    if not (run_dir / "last.pt").is_file() or not saved_path.is_file():
        raise ConfigError(f"nothing to resume in {run_dir} (no last.pt / config.yaml); "
                          "start the run without --resume")
    saved, now = _flat(load_config(saved_path)), _flat(cfg)
    diff = sorted(k for k in set(saved) | set(now)
                  if saved.get(k) != now.get(k) and not any(k == f or k.startswith(f + ".")
                                                              for f in RESUME_FREE_KEYS))
    if diff:
        raise ConfigError(f"the config differs from the run being resumed in {', '.join(diff)}; "
                          f"resume with the run's own config ({saved_path}) or start a new run")


def export(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Write a checkpoint's model as fp16 safetensors with its config and classes in the metadata.

    Parameters and BatchNorm statistics become fp16 (:func:`groupmood.checkpoint.save_model`, which
    also stores the architecture and input recipe); the file loads with
    :func:`groupmood.checkpoint.load_model`.
    """
    checkpoint = Path(checkpoint)
    model, meta = load_model(checkpoint, "cpu")
    return save_model(model, meta, Path(out) if out is not None else checkpoint.with_suffix(".safetensors"))
