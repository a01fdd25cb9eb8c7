"""How a recognizer fuses one photo's calibrated branches, and which branches that needs: one place for the rule.

A :class:`FusionPlan` holds the bundle's fusion: the weighted average of its ``weights``, with ``fallback``
branches that label a photo on which no branch with a positive weight spoke; optionally a regime gate
(a second, crowd fusion mixed in by the gate's crowd probability, :mod:`.regime`) or a learned fusion
model (:mod:`.model`). The recognizer asks it which branches to run (:meth:`FusionPlan.reads`), which of
them only where the fallback is needed (:meth:`FusionPlan.fallback_only`, :meth:`FusionPlan.needs`), and
for the fused label (:meth:`FusionPlan.fuse`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..labels import GROUP_CLASSES
from .core import Fused, check_weights, fuse
from .model import FusionModel
from .pooling import Pooled
from .regime import RegimeGate, mix

__all__ = ["FusionPlan", "weighted_spoke"]


def weighted_spoke(pooled: Mapping[str, Pooled], weights: Mapping[str, float]) -> bool:
    """Whether a branch with a positive weight spoke on this photo: where none did, the fallback labels it."""
    return any(p.spoke and weights.get(n, 0.0) > 0 for n, p in pooled.items())


@dataclass(frozen=True)
class FusionPlan:
    """A bundle's fusion: weights and fallback (the photo regime), an optional regime gate or fusion model.

    >>> plan = FusionPlan({"faces": 1.0, "scene": 0.0}, fallback=("scene",))
    >>> silent = {"faces": Pooled.abstain(), "scene": Pooled(np.array([0.1, 0.2, 0.7]), True, ())}
    >>> plan.fuse(silent).label
    'Positive'
    """

    weights: Mapping[str, float]
    fallback: tuple[str, ...] = ()
    regime: RegimeGate | None = None
    model: FusionModel | None = None
    branches: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names = self.branches or tuple(self.weights)
        object.__setattr__(self, "branches", tuple(names))
        unknown = sorted(set(self.weights) - set(names))
        if unknown:
            raise ConfigError(f"weights name unknown branch(es) {', '.join(unknown)}; branches: {', '.join(names)}")
        weights = check_weights(self.weights, names)
        if not any(weights.values()):
            raise ConfigError("every branch weight is 0; give at least one branch a positive weight")
        object.__setattr__(self, "weights", weights)
        missing_fb = sorted(set(self.fallback) - set(names))
        if missing_fb:
            raise ConfigError(f"fallback names unknown branch(es) {', '.join(missing_fb)}; branches: {', '.join(names)}")
        object.__setattr__(self, "fallback", tuple(self.fallback))
        if self.model is not None:
            missing = sorted(set(self.model.branches) - set(names))
            if missing:
                raise ConfigError(f"the fusion model reads branch(es) {', '.join(missing)}, which the recognizer "
                                  f"does not have ({', '.join(names)})")
        if self.regime is not None:
            if self.model is not None:
                raise ConfigError("a bundle fuses by a fusion model or by regime, not both")
            unknown_r = sorted(({self.regime.reads} | set(self.regime.weights) | set(self.regime.fallback))
                               - set(names))
            if unknown_r:
                raise ConfigError(f"the regime gate names unknown branch(es) {', '.join(unknown_r)}; branches: "
                                  f"{', '.join(names)}")

    def _regimes(self) -> list[tuple[Mapping[str, float], tuple[str, ...]]]:
        """Each weighted fusion's (weights, fallback): the photo regime, then the crowd regime's."""
        out = [(self.weights, self.fallback)]
        if self.regime is not None:
            out.append((self.regime.weights, self.regime.fallback))
        return out

    def reads(self) -> set[str]:
        """The branches the fusion reads: weight > 0 in a regime, a fallback, the gate's, the fusion model's."""
        out = {n for weights, fallback in self._regimes() for n, w in weights.items() if w > 0}
        out |= {n for _, fallback in self._regimes() for n in fallback}
        if self.regime is not None:
            out.add(self.regime.reads)
        if self.model is not None:
            out |= set(self.model.branches)
        return out

    def fallback_only(self, image_branches: Sequence[str]) -> frozenset[str]:
        """The whole-image fallback branches that never vote otherwise (weight 0 in every regime, not read by the
        gate, no fusion model): a recognizer runs them only on the photos that :meth:`needs` them."""
        if self.model is not None:
            return frozenset()
        fallbacks = {n for _, fallback in self._regimes() for n in fallback}
        return frozenset(n for n in fallbacks if n in image_branches
                         and all(w.get(n, 0.0) == 0 for w, _ in self._regimes())
                         and (self.regime is None or n != self.regime.reads))

    def needs(self, name: str, pooled: Mapping[str, Pooled]) -> bool:
        """Whether fallback branch ``name`` labels this photo: a regime that falls back on it has no branch with a
        positive weight that spoke."""
        return any(name in fallback and not weighted_spoke(pooled, weights) for weights, fallback in self._regimes())

    def weights_at(self, crowd: float | None = None) -> dict[str, float]:
        """Each branch's configured weight; with a regime gate, the regimes' weights mixed by the ``crowd``
        probability."""
        if self.regime is None or crowd is None:
            return dict(self.weights)
        return {n: (1.0 - crowd) * w + crowd * self.regime.weights.get(n, 0.0) for n, w in self.weights.items()}

    def fuse(self, pooled: Mapping[str, Pooled], face_fracs: Sequence[float] = (), crowd: float = 0.0) -> Fused:
        """One photo's fusion of its calibrated branches: the weighted average, the two regimes mixed by the gate's
        ``crowd`` probability, or the fusion model on the branches and ``face_fracs`` (each face's share of the
        photo's area)."""
        fused = fuse(pooled, self.weights, fallback=self.fallback)
        if self.regime is not None:
            return mix(fused, fuse(pooled, self.regime.weights, fallback=self.regime.fallback), crowd)
        if self.model is None:
            return fused
        x = self.model.features({n: p.probs for n, p in pooled.items()}, {n: p.spoke for n, p in pooled.items()},
                                len(face_fracs), face_fracs)
        probs = self.model.predict_proba(x)
        i = int(np.argmax(probs))
        return Fused(GROUP_CLASSES[i], i, probs, fused.weights, fused.spoke)
