"""Numerical helpers shared by the numpy code paths (inference, calibration, fusion, linear heads).

It imports numpy only, so any groupmood module can import it without an import cycle or PyTorch.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["softmax"]


def softmax(z: np.ndarray | Sequence[float] | Sequence[Sequence[float]], axis: int = -1) -> np.ndarray:
    """Softmax in float64; the maximum is subtracted first, so no exponential overflows.

    Args:
        z: logits, any shape.
        axis: the axis that sums to 1.

    Returns:
        float64 probabilities of the shape of ``z``.

    >>> softmax([1000.0, 1000.0, 0.0]).round(3).tolist()
    [0.5, 0.5, 0.0]
    """
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        return z.copy()
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
