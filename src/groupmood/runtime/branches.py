"""A branch's ONNX files: found in the cache from its weight file alone (no PyTorch), or exported once.

A branch's model is cached as ``{family}-{model}`` under :func:`~groupmood.runtime.session.onnx_key` (the
weight file's sha256 and whether BatchNorm was folded), with a sidecar holding its classes and input
recipe, so a branch runs from the cache without building the PyTorch model; its trunk alone (what branches
sharing one trunk pass run) as ``{family}-{model}-features`` under the trunk tensors' sha256.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .session import OrtModel, load_cached, onnx_key, safetensors_model_name

if TYPE_CHECKING:
    from torch import nn

__all__ = ["cached_model", "cached_trunk", "export_branch"]

#: What a cached branch's sidecar must record for the branch to run without PyTorch.
_SIDECAR_KEYS = frozenset({"model", "recipe", "classes"})


def _trunk_name(family: str, model: str) -> str:
    return f"{family}-{model}-features"


def cached_model(path: Path, weights_sha256: str, fold_bn: bool) -> OrtModel | None:
    """The cached ONNX model of groupmood model file ``path`` (sha256 ``weights_sha256``), with its classes and
    recipe in ``meta``; None when it is not cached yet (or the file names no model and family)."""
    name = safetensors_model_name(path)
    if name is None:
        return None
    runner = load_cached(name, onnx_key(weights_sha256, fold_batchnorm=fold_bn))
    if runner is None or not _SIDECAR_KEYS <= set(runner.meta):
        return None
    return runner


def cached_trunk(family: str, model: str, trunk_sha256: str, fold_bn: bool) -> OrtModel | None:
    """The cached ONNX model of a branch's trunk alone (``forward_features``); None when not cached yet."""
    return load_cached(_trunk_name(family, model), onnx_key(trunk_sha256, fold_batchnorm=fold_bn))


def export_branch(model: nn.Module, family: str, model_name: str, meta: dict[str, Any], input_shape: Sequence[int],
                  weights_sha256: str | None, trunk_sha256: str | None, fold_bn: bool,
                  parity_inputs: Callable[[], list[Any]]) -> tuple[OrtModel, OrtModel | None]:
    """Export a branch's model (and its trunk alone, when ``trunk_sha256`` is given) into the cache, each checked
    against PyTorch on ``parity_inputs``; the existing files when already there.

    ``meta`` is what the sidecar records (classes, recipe: what :func:`cached_model` needs); ``input_shape``
    is one input's (C, H, W); ``weights_sha256`` None keys the model by its tensors.
    """
    import torch

    from .export import FeaturesOf, export_onnx, weights_sha256 as tensors_sha256

    module = model.cpu()
    example = torch.zeros(1, *input_shape)
    runner = export_onnx(module, f"{family}-{model_name}",
                         onnx_key(weights_sha256 or tensors_sha256(module), fold_batchnorm=fold_bn), ("logits",),
                         example, parity_inputs, meta=meta)
    trunk = None
    if trunk_sha256 is not None:
        trunk = export_onnx(FeaturesOf(module), _trunk_name(family, model_name),
                            onnx_key(trunk_sha256, fold_batchnorm=fold_bn), ("features",), example, parity_inputs,
                            meta={"part": "features", "model": model_name})
    return runner, trunk
