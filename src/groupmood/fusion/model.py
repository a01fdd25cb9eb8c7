"""Learned fusion, beyond the paper's weighted average: a small model over the branches' evidence.

Features of one photo (:func:`fusion_features`), in a fixed order:

* for each branch, the log of its calibrated group probabilities (3 numbers; a branch that
  abstained gives log(1/3) each, and a 0/1 "spoke" flag follows for face branches);
* face statistics: log(1 + number of faces), the square root of the mean and of the largest face
  box area as a fraction of the photo.

The model is a multinomial logistic regression with L2 (:func:`groupmood.engine.group_head.fit_softmax_regression`),
chosen against the weighted average by cross-validation (``benchmarks/group_accuracy.py``). It is
saved as safetensors (``weight``, ``bias``) with its branch list and feature names in the metadata.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, WeightsError
from ..io import atomic_write
from ..labels import GROUP_CLASSES
from .linear import LinearHead, fit_softmax_regression

__all__ = ["FUSION_MODEL_FORMAT", "FusionModel", "fusion_features"]

FUSION_MODEL_FORMAT = "groupmood-fusion-1"
_EPS = 1e-6


def fusion_features(probs: Mapping[str, np.ndarray], spoke: Mapping[str, bool], face_branches: Sequence[str],
                    n_faces: int, face_fracs: Sequence[float], branches: Sequence[str]) -> np.ndarray:
    """One photo's feature vector (see the module docstring); ``branches`` fixes the order."""
    out: list[float] = []
    for b in branches:
        if b not in probs:
            raise ConfigError(f"the fusion model needs branch {b!r}, which this recognizer does not have")
        p = np.asarray(probs[b], dtype=np.float64) if spoke.get(b, True) else np.full(len(GROUP_CLASSES), 1 / 3)
        out.extend(np.log(np.clip(p, _EPS, 1.0)).tolist())
        if b in face_branches:
            out.append(1.0 if spoke.get(b, True) else 0.0)
    fr = np.asarray(face_fracs, dtype=np.float64)
    out += [math.log1p(n_faces), float(np.sqrt(fr.mean())) if fr.size else 0.0,
            float(np.sqrt(fr.max())) if fr.size else 0.0]
    return np.asarray(out)


@dataclass(frozen=True)
class FusionModel:
    """A fitted fusion model: which branches it reads (face branches marked) and its linear head."""

    branches: tuple[str, ...]
    face_branches: tuple[str, ...]
    head: LinearHead
    c: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, branches: Sequence[str], face_branches: Sequence[str],
            c: float) -> FusionModel:
        """Fit on (N, F) feature rows (from :func:`fusion_features`) and class indices."""
        head = fit_softmax_regression(x, y, c, len(GROUP_CLASSES))
        return cls(tuple(branches), tuple(face_branches), head, float(c))

    def features(self, probs: Mapping[str, np.ndarray], spoke: Mapping[str, bool], n_faces: int,
                 face_fracs: Sequence[float]) -> np.ndarray:
        return fusion_features(probs, spoke, self.face_branches, n_faces, face_fracs, self.branches)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) group probabilities of (N, F) feature rows (or (3,) of one row)."""
        x = np.asarray(x, dtype=np.float64)
        return self.head.probs(x[None])[0] if x.ndim == 1 else self.head.probs(x)

    def save(self, path: str | Path) -> Path:
        """safetensors with ``weight`` / ``bias`` and the branch lists in the metadata (written atomically)."""
        from safetensors.numpy import save as save_safetensors

        from ..checkpoint import canonical_safetensors

        meta = {"format": FUSION_MODEL_FORMAT, "branches": json.dumps(list(self.branches)),
                "face_branches": json.dumps(list(self.face_branches)), "classes": json.dumps(list(GROUP_CLASSES)),
                "c": json.dumps(self.c)}
        blob = save_safetensors({"weight": np.ascontiguousarray(self.head.weight),
                                 "bias": np.ascontiguousarray(self.head.bias)}, metadata=meta)
        with atomic_write(path, "wb") as fh:
            fh.write(canonical_safetensors(blob))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> FusionModel:
        """Read a fusion model file (numpy only: safetensors' numpy reader, no torch)."""
        p = Path(path)
        tensors, meta = _read_numpy_safetensors(p)
        if meta.get("format") != FUSION_MODEL_FORMAT or not {"weight", "bias"} <= set(tensors):
            raise WeightsError(f"{p}: not a groupmood fusion model (format {meta.get('format')!r}); "
                               "fit one with benchmarks/group_accuracy.py --write-bundle")
        weight, bias = tensors["weight"], tensors["bias"]
        return cls(tuple(json.loads(meta["branches"])), tuple(json.loads(meta["face_branches"])),
                   LinearHead(weight.astype(np.float64), bias.astype(np.float64)), float(json.loads(meta["c"])))


def _read_numpy_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays, raw string metadata) of a safetensors file, with the errors of
    :func:`groupmood.checkpoint.read_safetensors` (which imports torch; this does not)."""
    from safetensors import safe_open

    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found; check the path")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); fetch or export it again") from exc
