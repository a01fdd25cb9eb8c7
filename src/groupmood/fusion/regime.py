"""Fusion by regime: a photo of a few people and a crowd are fused by different weights, mixed by a gate.

Faces tell a group's mood on a photo of a few people, where they are large and few; on a crowd they
are small, many or not found, and the scene carries more of it. A bundle with a regime gate has two
weighted fusions: the bundle's own ``weights`` / ``fallback`` (the *photo* regime) and the gate's
(the *crowd* regime). The gate is a logistic regression on a whole-image branch's trunk features
(``reads``) giving the probability ``p`` that the photo is a crowd; the fused probabilities are
``(1 - p) * photo + p * crowd`` (:func:`mix`), so a photo the gate is unsure of gets both.

The gate's weights live in a small safetensors file (``weight`` (2, D), ``bias`` (2,), float64,
the classes ``photo, crowd``, the sha256 of the trunk it was fitted on); the crowd regime's weights
and fallback live in the bundle YAML beside the photo regime's.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, WeightsError
from .linear import LinearHead
from .core import Fused, check_weights

__all__ = ["GATE_CLASSES", "RegimeGate", "mix"]

#: The gate's classes, in its output order: ``p`` is the second's probability.
GATE_CLASSES = ("photo", "crowd")
_FORMAT = "groupmood-regime-gate-1"


@dataclass(frozen=True)
class RegimeGate:
    """The crowd regime: a gate on ``reads``'s trunk features, and its fusion weights and fallback."""

    head: LinearHead
    reads: str
    weights: dict[str, float]
    fallback: tuple[str, ...] = ()
    trunk_sha256: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head.weight.shape[0] != len(GATE_CLASSES):
            raise ConfigError(f"a regime gate has {len(GATE_CLASSES)} classes ({', '.join(GATE_CLASSES)}), "
                              f"got a head with {self.head.weight.shape[0]}")
        w = check_weights(self.weights, self.weights)
        if not any(w.values()):
            raise ConfigError("every crowd-regime weight is 0; give at least one branch a positive weight")
        object.__setattr__(self, "weights", w)

    def crowd_probs(self, features: np.ndarray) -> np.ndarray:
        """(N,) probability that each photo is a crowd, from its (N, D) trunk features."""
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.head.weight.shape[1]:
            raise ConfigError(f"the regime gate reads {self.head.weight.shape[1]} trunk features of branch "
                              f"{self.reads!r}, got an array of shape {feats.shape}; the bundle's gate and branch "
                              "do not belong together")
        return self.head.probs(feats)[:, 1]

    def save(self, path: str | Path) -> Path:
        """Write the gate's head (and what it reads) as safetensors, atomically."""
        from safetensors.numpy import save

        from ..io import atomic_write

        meta = {**self.meta, "format": _FORMAT, "classes": json.dumps(list(GATE_CLASSES)), "reads": self.reads}
        if self.trunk_sha256:
            meta["trunk_sha256"] = self.trunk_sha256
        data = save({"weight": np.ascontiguousarray(self.head.weight, dtype=np.float64),
                     "bias": np.ascontiguousarray(self.head.bias, dtype=np.float64)}, metadata=meta)
        with atomic_write(path, "wb") as fh:
            fh.write(data)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, weights: Mapping[str, float], fallback: Sequence[str] = (),
             reads: str | None = None) -> RegimeGate:
        """Read a gate file written by :meth:`save`; the crowd regime's ``weights`` and ``fallback`` come from the
        bundle, and so does the branch it ``reads`` when given (else the file's)."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise WeightsError(f"regime gate file {p} does not exist; check the bundle's fusion.gate path "
                               "(relative to the bundle YAML)")
        try:
            with safe_open(str(p), framework="numpy") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{p} is not a readable safetensors file ({exc}); fetch or refit the bundle") from None
        if meta.get("format") != _FORMAT or set(tensors) != {"weight", "bias"}:
            raise WeightsError(f"{p} is not a regime gate (format {meta.get('format')!r}, tensors "
                               f"{sorted(tensors)}); a gate file has format {_FORMAT!r} and weight / bias")
        rest = {k: v for k, v in meta.items() if k not in ("format", "classes", "reads", "trunk_sha256")}
        return cls(LinearHead(tensors["weight"].astype(np.float64), tensors["bias"].astype(np.float64)),
                   reads or meta.get("reads", ""), dict(weights), tuple(fallback), meta.get("trunk_sha256"), rest)


def mix(photo: Fused, crowd: Fused, p: float) -> Fused:
    """``(1 - p) * photo + p * crowd`` of one photo's two regime fusions; an abstaining side gives way to the other.

    The effective weights mix the same way, so each branch's share of the vote still sums to 1.
    """
    if photo.abstained and crowd.abstained:
        return photo
    if photo.abstained or crowd.abstained:
        p = 0.0 if crowd.abstained else 1.0
    probs = (1.0 - p) * np.asarray(photo.probs) + p * np.asarray(crowd.probs)
    names = list(dict.fromkeys([*photo.weights, *crowd.weights]))
    weights = {n: (1.0 - p) * photo.weights.get(n, 0.0) + p * crowd.weights.get(n, 0.0) for n in names}
    spoke = {n: photo.spoke.get(n, False) or crowd.spoke.get(n, False) for n in names}
    i = int(np.argmax(probs))
    return Fused(photo.classes[i], i, probs, weights, spoke, photo.classes)
