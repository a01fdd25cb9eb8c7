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
    """Registered model names matching a shell pattern (and family), sorted."""
    _ensure_loaded()
    return sorted(n for n, info in registered().items()
                  if fnmatch.fnmatch(n, pattern) and (family is None or info.family == family))


def model_info(name: str) -> ModelInfo:
    """The :class:`~groupmood.models.registry.ModelInfo` of a registered model."""
    _ensure_loaded()
    entries = registered()
    try:
        return entries[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(entries))}") from None


def resolve_recipe(name: str, stored: Mapping[str, Any] | None = None, where: str = "") -> ModelInfo:
    """The input recipe of model ``name`` as a weight file states it (``stored``), else as registered.

    timm's ``resolve_data_config``: a file written before recipes were stored (``stored`` None)
    gets its model's registered recipe, which is what it was trained with.
    """
    info = model_info(name)
    return info if not stored else info.with_recipe(stored, where)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; keyword arguments go to its constructor (e.g. ``num_classes``)."""
    info = model_info(name)
    if info.fn is None:
        raise ValueError(f"model {name!r} is registered without a constructor")
    return info.fn(**kwargs)
