"""The learning-rate schedule: a pure function of the optimizer step.

Because the rate depends on the step alone, a resumed run needs no schedule state beyond the
step saved in its checkpoint.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["SCHEDULES", "lr_at"]

#: The values of ``sched.name``.
SCHEDULES = ("step", "multistep", "cosine", "constant")


def lr_at(step: int, base_lr: float, sched: Mapping[str, Any], iters_per_epoch: int, total_iters: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) under the ``sched`` config section."""
    name = sched["name"]
    if name == "step":
        period = max(1, int(sched["step_epochs"]) * iters_per_epoch)
        lr = base_lr * sched["gamma"] ** (step // period)
    elif name == "multistep":
        lr = base_lr * sched["gamma"] ** sum(step >= int(m) for m in sched["milestones"])
    elif name == "cosine":
        warm = int(sched["warmup_iters"])
        t = min(1.0, max(0.0, (step - warm) / max(1, total_iters - warm)))
        lr = sched["min_lr"] + (base_lr - sched["min_lr"]) * 0.5 * (1.0 + math.cos(math.pi * t))
    elif name == "constant":
        lr = base_lr
    else:
        raise ConfigError(f"sched.name must be one of {', '.join(SCHEDULES)}, got {name!r}")
    warm = int(sched.get("warmup_iters") or 0)
    if step < warm:
        f0 = float(sched.get("warmup_factor", 0.1))
        lr *= f0 + (1.0 - f0) * step / warm
    return float(lr)
