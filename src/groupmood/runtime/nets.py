"""The MTCNN nets' ONNX files: found in the cache from the weight files' sha256 alone, or exported once.

Each net is cached under its name and :func:`~groupmood.runtime.session.onnx_key` (the weight file's sha256
and whether its input height and width are dynamic: P-Net's are, it runs on every pyramid level).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .session import OrtModel, load_cached, onnx_key

if TYPE_CHECKING:
    from torch import nn

__all__ = ["NetSpec", "cached_nets", "export_nets"]

#: A net's (name, output names, input size, dynamic height and width).
NetSpec = tuple[str, tuple[str, ...], int, bool]


def cached_nets(specs: Sequence[NetSpec], shas: Sequence[str]) -> list[OrtModel] | None:
    """The nets' ONNX Runtime models when every one is in the cache (no PyTorch), else None."""
    models = []
    for (name, _, _, dynamic), sha in zip(specs, shas):
        model = load_cached(name, onnx_key(sha, dynamic_hw=dynamic))
        if model is None:
            return None
        models.append(model)
    return models


def export_nets(nets: Sequence[nn.Module], specs: Sequence[NetSpec], shas: Sequence[str],
                inputs: Callable[[str], list[Any]]) -> list[OrtModel]:
    """Export each net into the cache (the existing file when there), checked against PyTorch on
    ``inputs(name)``, the real inputs that net got."""
    import torch

    from .export import export_onnx

    return [export_onnx(net.cpu(), name, onnx_key(sha, dynamic_hw=dynamic), outputs, torch.zeros(1, 3, size, size),
                        lambda name=name: inputs(name), dynamic_hw=dynamic)
            for (name, outputs, size, dynamic), net, sha in zip(specs, nets, shas)]
