"""Large-margin softmax pieces (L-Softmax, A-Softmax) and soft-label cross entropy.

The margin is kept apart from the classifier head (as in insightface's ``arcface_torch``): the head
computes cosines and norms, :class:`LargeMargin` turns the target-class cosine into the annealed
margin term. Everything here is NaN-free at cos = +-1: cos(m theta) comes from the Chebyshev
polynomial of the clamped cosine and the interval index k is found by comparing the cosine with
cos(j pi / m), never through ``acos``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MARGIN_M_CHOICES",
    "LargeMargin",
    "annealed_lambda",
    "check_margin_m",
    "class_balanced_weights",
    "chebyshev_cos_m",
    "psi",
    "soft_target_cross_entropy",
]

MARGIN_M_CHOICES = (1, 2, 3, 4)


def check_margin_m(m: int) -> int:
    """Check an angular margin.

    Args:
        m: the margin, an integer 1..4.

    Returns:
        ``m``.

    Raises:
        ValueError: for anything else.

    >>> check_margin_m(4)
    4
    """
    if isinstance(m, bool) or not isinstance(m, int) or m not in MARGIN_M_CHOICES:
        raise ValueError(f"margin m must be an integer in {MARGIN_M_CHOICES}, got {m!r}")
    return m


def chebyshev_cos_m(cos: Tensor, m: int) -> Tensor:
    """cos(m theta) from cos(theta) with the Chebyshev polynomial T_m (no ``acos``, so no NaN at +-1).

    Args:
        cos: cos(theta), any shape (clamped to [-1, 1]).
        m: the margin, 1..4.

    Returns:
        cos(m theta), the shape of ``cos``.

    >>> chebyshev_cos_m(torch.tensor([0.5]), 2)  # cos(2 * 60 degrees)
    tensor([-0.5000])
    """
    check_margin_m(m)
    c = cos.clamp(-1.0, 1.0)
    if m == 1:
        return c
    if m == 2:
        return 2 * c**2 - 1
    if m == 3:
        return 4 * c**3 - 3 * c
    c2 = c**2
    return 8 * c2**2 - 8 * c2 + 1


def psi(cos: Tensor, m: int) -> Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m], from cos(theta).

    psi is monotonically decreasing on [0, pi] and continuous, so the choice of k exactly at an
    interval border does not matter; k is counted from the clamped cosine, which keeps it finite
    (and the gradient a polynomial's) at cos = +-1.

    Args:
        cos: cos(theta), any shape.
        m: the margin, 1..4.

    Returns:
        psi(theta), the shape of ``cos``.

    >>> psi(torch.tensor([1.0, -1.0]), 4)  # theta = 0 and pi
    tensor([ 1., -7.])
    """
    check_margin_m(m)
    c = cos.clamp(-1.0, 1.0)
    k = torch.zeros_like(c)
    for j in range(1, m):
        k = k + (c <= math.cos(j * math.pi / m)).to(c.dtype)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * chebyshev_cos_m(c, m) - 2.0 * k


def annealed_lambda(iteration: Tensor | int | float, base: float = 1000.0, gamma: float = 0.12,
                    power: float = 1.0, lambda_min: float = 5.0) -> Tensor:
    """The margin's annealing weight: lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power).

    Args:
        iteration: the training iteration.
        base: lambda at iteration 0.
        gamma: how fast lambda decays.
        power: the decay's exponent.
        lambda_min: the floor lambda decays to.

    Returns:
        lambda as a 0-d float32 tensor.

    >>> annealed_lambda(0), annealed_lambda(10_000)
    (tensor(1000.), tensor(5.))
    """
    it = torch.as_tensor(iteration, dtype=torch.float32)
    return torch.clamp_min(base * (1.0 + gamma * it) ** (-power), lambda_min)


class LargeMargin(nn.Module):
    """Annealed angular margin of L-Softmax / A-Softmax applied to the target-class cosine.

    ``forward(cos, target)`` returns ``cos`` with the target column replaced by
    ``(lambda * cos + psi(cos)) / (1 + lambda)``; the head multiplies the result by its scale
    (|W||x| for L-Softmax, |x| for A-Softmax). ``iteration`` is a buffer, so it is saved in the
    state dict and a resumed run anneals on exactly where it stopped; it advances by one at each
    training-mode forward. Defaults follow SphereFace's Caffe solver (base 1000, gamma 0.12,
    power 1, floor 5); its PyTorch port uses base 1500, gamma 0.1.

    Args:
        m: the margin, 1..4.
        base, gamma, power, lambda_min: the annealing of lambda (:func:`annealed_lambda`).

    >>> margin = LargeMargin(m=4)
    >>> margin(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))  # only the target's cosine changes
    tensor([[0.8989, 0.1000]])
    """

    iteration: Tensor

    def __init__(self, m: int = 4, base: float = 1000.0, gamma: float = 0.12, power: float = 1.0,
                 lambda_min: float = 5.0) -> None:
        super().__init__()
        self.m = check_margin_m(m)
        for name, value in (("base", base), ("gamma", gamma), ("power", power), ("lambda_min", lambda_min)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"margin {name} must be a finite number >= 0, got {value!r}")
        self.base = float(base)
        self.gamma = float(gamma)
        self.power = float(power)
        self.lambda_min = float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> Tensor:
        """The annealing weight lambda at the current iteration (a 0-d float32 tensor)."""
        return annealed_lambda(self.iteration, self.base, self.gamma, self.power,
                               self.lambda_min).to(self.iteration.device)

    def forward(self, cos: Tensor, target: Tensor) -> Tensor:
        """Margin-adjusted cosines (B, C): only column ``target[i]`` of row i changes."""
        if cos.dim() != 2:
            raise ValueError(f"cos must be (batch, classes), got shape {tuple(cos.shape)}")
        if target.shape != cos.shape[:1]:
            raise ValueError(f"target must be ({cos.shape[0]},) class indices, got shape {tuple(target.shape)}")
        idx = target.long().unsqueeze(1)
        cos_t = cos.gather(1, idx).float().clamp(-1.0, 1.0)
        lam = self.current_lambda()
        new_t = (lam * cos_t + psi(cos_t, self.m)) / (1.0 + lam)
        if self.training:
            self.iteration.add_(1)
        return cos.scatter(1, idx, new_t.to(cos.dtype))

    def extra_repr(self) -> str:
        return (f"m={self.m}, base={self.base}, gamma={self.gamma}, power={self.power}, "
                f"lambda_min={self.lambda_min}")


def soft_target_cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross entropy against a probability distribution per row (FERPlus cross-entropy mode).

    Equals ``F.cross_entropy`` with class indices when the targets are one-hot.

    Args:
        logits: (B, C) logits.
        target: (B, C) non-negative rows; renormalised to sum to 1, so raw vote counts work too.
        reduction: ``mean``, ``sum`` or ``none``.

    Returns:
        The loss: a 0-d tensor, or (B,) with ``none``.

    >>> soft_target_cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([[3.0, 1.0]]))  # 3 votes to 1
    tensor(0.6269)
    """
    if logits.dim() != 2 or target.shape != logits.shape:
        raise ValueError(f"logits and target must both be (batch, classes); got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    target = target.to(logits.dtype)
    total = target.sum(dim=1, keepdim=True)
    probs = target / total.clamp_min(torch.finfo(target.dtype).tiny)
    return F.cross_entropy(logits, probs, reduction=reduction)


def class_balanced_weights(targets: Tensor, num_classes: int) -> Tensor:
    """Per-class loss weights ``n / (k * count_c)`` so every present class weighs the same in the loss.

    ``k`` is the number of classes present. With balanced data every weight is 1, so the loss is
    unchanged.

    Args:
        targets: (N,) class indices, or (N, C) distributions (their column sums are the counts).
        num_classes: C.

    Returns:
        (C,) float32 weights; 0 for an absent class.

    >>> class_balanced_weights(torch.tensor([0, 0, 0, 1]), 3)
    tensor([0.6667, 2.0000, 0.0000])
    """
    targets = torch.as_tensor(targets)
    if targets.dim() == 2:
        counts = targets.to(torch.float64).sum(dim=0)
    else:
        counts = torch.bincount(targets.to(torch.int64), minlength=num_classes).to(torch.float64)
    if counts.numel() != num_classes:
        raise ValueError(f"targets cover {counts.numel()} classes, expected {num_classes}")
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("class_balanced_weights needs at least one target")
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.to(torch.float32)
