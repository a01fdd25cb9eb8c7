"""Test-time flip: logits averaged over an input and its mirror image, for every branch.

The authors test every model (face and global) on the input and its horizontal flip, logits
averaged; the inference pipeline and the evaluation share these helpers.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["average_view_logits", "flip_averaged_logits"]


@torch.no_grad()
def average_view_logits(model: Callable[[Tensor], Tensor], views: Tensor, channels_last: bool = False) -> Tensor:
    """Logits averaged over views: (B, V, C, H, W) normalised input -> (B, num_classes).

    The authors' test: centre crop plus its horizontal flip
    (:func:`groupmood.data.transforms.global_eval_views`), logits averaged. One batched forward,
    in channels-last memory layout when ``channels_last``.
    """
    if views.dim() != 5:
        raise ValueError(f"views must be (batch, views, channels, height, width), got {tuple(views.shape)}")
    b, v = views.shape[:2]
    return _forward(model, views.flatten(0, 1), channels_last).view(b, v, -1).mean(dim=1)


def flip_averaged_logits(model: Callable[[Tensor], Tensor], x: Tensor, tta_flip: bool,
                         channels_last: bool = False) -> Tensor:
    """float32 logits of a normalised (N, C, H, W) batch; with ``tta_flip``, averaged with its mirror image.

    The input and its flip go through one forward pass (:func:`average_view_logits`).
    """
    if tta_flip:
        return average_view_logits(model, torch.stack([x, torch.flip(x, dims=[3])], dim=1), channels_last).float()
    return _forward(model, x, channels_last).float()


def _forward(model: Callable[[Tensor], Tensor], x: Tensor, channels_last: bool) -> Tensor:
    return model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
