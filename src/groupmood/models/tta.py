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
    """Logits averaged over views of each input, in one batched forward.

    The authors' test: centre crop plus its horizontal flip
    (:func:`groupmood.data.transforms.global_eval_views`), logits averaged.

    Args:
        model: the net.
        views: (B, V, C, H, W) normalised input.
        channels_last: run in channels-last memory layout.

    Returns:
        (B, num_classes) mean logits.

    >>> from groupmood import create_model
    >>> model = create_model("resnet_tiny_48", num_classes=3).eval()
    >>> average_view_logits(model, torch.zeros(2, 2, 1, 48, 48)).shape
    torch.Size([2, 3])
    """
    if views.dim() != 5:
        raise ValueError(f"views must be (batch, views, channels, height, width), got {tuple(views.shape)}")
    b, v = views.shape[:2]
    return _forward(model, views.flatten(0, 1), channels_last).view(b, v, -1).mean(dim=1)


def flip_averaged_logits(model: Callable[[Tensor], Tensor], x: Tensor, tta_flip: bool,
                         channels_last: bool = False) -> Tensor:
    """Logits of a batch, averaged with those of its mirror image with ``tta_flip``.

    The input and its flip go through one forward pass (:func:`average_view_logits`).

    Args:
        model: the net.
        x: (N, C, H, W) normalised input.
        tta_flip: average with the horizontal flip.
        channels_last: run in channels-last memory layout.

    Returns:
        (N, num_classes) float32 logits.

    >>> from groupmood import create_model
    >>> model = create_model("resnet_tiny_48", num_classes=3).eval()
    >>> flip_averaged_logits(model, torch.zeros(2, 1, 48, 48), tta_flip=True).shape
    torch.Size([2, 3])
    """
    if tta_flip:
        return average_view_logits(model, torch.stack([x, torch.flip(x, dims=[3])], dim=1), channels_last).float()
    return _forward(model, x, channels_last).float()


def _forward(model: Callable[[Tensor], Tensor], x: Tensor, channels_last: bool) -> Tensor:
    return model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
