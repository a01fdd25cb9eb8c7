"""Lookups over every registered model: ``create_model`` / ``list_models`` / ``model_info`` (timm style).

A model registers itself when its module is imported (:func:`groupmood.models.registry.register_model`),
so these lookups import every model module first. They do it on the first call, not at import time,
so that importing :mod:`groupmood.models` stays cheap (no PyTorch).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .registry import ModelInfo, registered

if TYPE_CHECKING:
    from torch import nn

__all__ = ["create_model", "list_models", "model_info", "resolve_recipe"]


def _ensure_loaded() -> None:
    """Import every model module, which registers its models."""
    from . import faceapi, faceapi_identity, global_cnns, mini_xception, resnet48, sphereface  # noqa: F401


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names, sorted.

    Args:
        pattern: a shell pattern the names must match (``fnmatch``).
        family: only models of this family (``face_aligned``, ``face_nonaligned``, ``global``).

    Returns:
        The matching names.

    >>> list_models("resnet*_48")
    ['resnet101_48', 'resnet18_48', 'resnet34_48', 'resnet_compact_48', 'resnet_tiny_48']
    >>> "efficientnet_lite0" in list_models(family="global")
    True
    """
    _ensure_loaded()
    return sorted(n for n, info in registered().items()
                  if fnmatch.fnmatch(n, pattern) and (family is None or info.family == family))


def model_info(name: str) -> ModelInfo:
    """A registered model's entry: its family and input recipe.

    Args:
        name: a registered model name (:func:`list_models`).

    Returns:
        Its :class:`~groupmood.models.registry.ModelInfo`.

    Raises:
        KeyError: for an unknown name, listing the registered ones.

    >>> info = model_info("resnet_tiny_48")
    >>> info.family, info.input_size, info.in_chans, info.pooling
    ('face_nonaligned', (48, 48), 1, 'top3')
    """
    _ensure_loaded()
    entries = registered()
    try:
        return entries[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(entries))}") from None


def resolve_recipe(name: str, stored: Mapping[str, Any] | None = None, where: str = "") -> ModelInfo:
    """The input recipe of a model as a weight file states it, else as registered (timm's ``resolve_data_config``).

    Args:
        name: a registered model name.
        stored: the recipe a weight file stores; None or empty: the registered one.
        where: names the file in errors.

    Returns:
        The :class:`~groupmood.models.registry.ModelInfo` with the stored recipe's values, checked.

    >>> resolve_recipe("resnet_tiny_48", {"pooling": "all"}).pooling
    'all'
    """
    info = model_info(name)
    return info if not stored else info.with_recipe(stored, where)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model with fresh weights (nothing is downloaded).

    Args:
        name: a registered model name (:func:`list_models`).
        **kwargs: go to its constructor, e.g. ``num_classes``, ``head``, ``drop_rate``.

    Returns:
        The ``torch.nn.Module``.

    >>> import torch
    >>> model = create_model("resnet_tiny_48", num_classes=3).eval()
    >>> model(torch.zeros(2, 1, 48, 48)).shape
    torch.Size([2, 3])
    """
    info = model_info(name)
    if info.fn is None:
        raise ValueError(f"model {name!r} is registered without a constructor")
    return info.fn(**kwargs)
