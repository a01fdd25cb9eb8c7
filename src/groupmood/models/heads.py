"""Classifier heads (softmax, L-Softmax, A-Softmax) and the contract every face net follows.

The head computes W x, norms and cosines only; the margin math lives in
:class:`groupmood.losses.LargeMargin`, so the margin can change (or be annealed) without touching
the weights. Every face net subclasses :class:`EmbeddingClassifier`: ``forward_features(x)`` gives
the ``(B, num_features)`` embedding, ``forward(x, target=None)`` the ``(B, num_classes)`` logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import LargeMargin, check_margin_m

__all__ = ["HEAD_KINDS", "MARGIN_KWARGS", "ClassifierHead", "EmbeddingClassifier"]

HEAD_KINDS = ("softmax", "lsoftmax", "asoftmax")
MARGIN_KWARGS = ("base", "gamma", "power", "lambda_min")


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class ClassifierHead(nn.Module):
    """Final classifier: plain softmax ``Linear``, L-Softmax (|W||x| cos) or A-Softmax (|x| cos).

    ``kind="lsoftmax"`` keeps the weight norms, ``kind="asoftmax"`` normalises each class weight;
    both have no bias. ``m`` and ``margin_kw`` (``base``, ``gamma``, ``power``, ``lambda_min``) go to
    :class:`~groupmood.losses.LargeMargin` and are ignored by ``softmax``. The weight is always
    ``self.fc.weight`` (num_classes, in_features), so checkpoints move between kinds.

    >>> head = ClassifierHead(16, 3, kind="asoftmax", m=4)
    >>> head(torch.rand(2, 16), target=torch.tensor([0, 2])).shape  # the margin applies in training
    torch.Size([2, 3])
    """

    def __init__(self, in_features: int, num_classes: int, kind: str = "softmax", m: int = 4,
                 **margin_kw: float) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
        unknown = sorted(set(margin_kw) - set(MARGIN_KWARGS))
        if unknown:
            raise TypeError(f"unknown margin option(s) {unknown}; allowed: {', '.join(MARGIN_KWARGS)}")
        self.in_features = _check_positive_int("in_features", in_features)
        self.num_classes = _check_positive_int("num_classes", num_classes)
        self.kind = kind
        self.fc = nn.Linear(in_features, num_classes, bias=kind == "softmax")
        self.margin: LargeMargin | None = None
        if kind != "softmax":
            self.margin = LargeMargin(check_margin_m(m), **margin_kw)

    def _target_indices(self, target: Tensor, batch: int) -> Tensor:
        """Class indices (B,) from indices or from a (B, C) distribution (its argmax)."""
        if target.dim() == 2 and target.shape == (batch, self.num_classes):
            return target.argmax(dim=1)
        if target.shape != (batch,):
            raise ValueError(f"target must be ({batch},) class indices or ({batch}, {self.num_classes}) "
                             f"probabilities, got shape {tuple(target.shape)}")
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"class-index targets must be integers, got dtype {target.dtype}")
        return target

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes); with ``target`` in training mode the target logit gets the margin."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"head expects (batch, {self.in_features}) features, got {tuple(x.shape)}")
        if self.margin is None:
            return self.fc(x)
        weight = self.fc.weight
        cos = F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1))
        scale = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        if self.kind == "lsoftmax":
            scale = scale * torch.linalg.vector_norm(weight, dim=1).unsqueeze(0)
        if target is not None and self.training:
            cos = self.margin(cos, self._target_indices(target, x.shape[0]))
        return cos * scale

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class EmbeddingClassifier(nn.Module):
    """Base of the face nets: ``forward_features`` -> dropout -> :class:`ClassifierHead`.

    Subclasses build their trunk, set ``num_features`` and call :meth:`_build_head`.
    """

    num_features: int
    head: ClassifierHead

    def _build_head(self, num_features: int, num_classes: int, head: str, margin_m: int,
                    drop_rate: float, margin_kw: dict[str, float]) -> None:
        if not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.num_features = num_features
        self.drop_rate = float(drop_rate)
        self.head_drop = nn.Dropout(self.drop_rate)
        self.head = ClassifierHead(num_features, num_classes, head, margin_m, **margin_kw)

    def forward_features(self, x: Tensor) -> Tensor:
        """The (B, num_features) embedding; implemented by each net."""
        raise NotImplementedError

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes); ``target`` is handed to the head (margin in training mode)."""
        return self.head(self.head_drop(self.forward_features(x)), target)

    def reset_classifier(self, num_classes: int, head: str | None = None, margin_m: int | None = None,
                         **margin_kw: float) -> None:
        """Replace the head (e.g. FERPlus 8 classes -> group 3 classes), keeping the trunk.

        ``head`` and ``margin_m`` default to the current ones; the margin schedule restarts from
        iteration 0 with ``margin_kw`` (or the defaults).
        """
        old = self.head
        kind = head if head is not None else old.kind
        if margin_m is None:
            margin_m = old.margin.m if old.margin is not None else 4
        new = ClassifierHead(self.num_features, num_classes, kind, margin_m, **margin_kw)
        self.head = new.to(device=old.fc.weight.device, dtype=old.fc.weight.dtype)
