"""Inference-time rewrites of a trained model: BatchNorm folded into the convolution before it.

An eval-mode BatchNorm is an affine map per channel, so when it reads a convolution's output and
nothing else does, it can be folded into that convolution's weight and bias and removed: one pass
over the activations fewer per layer (on a CPU, BatchNorm and the memory traffic around it are a
large share of a small net's time). The pairs are found by running the model once on an
example input and watching which BatchNorm consumes which convolution's output tensor, so any
architecture works without a per-model list; the rewritten model is then checked against the
original on that input and discarded if they disagree (say, when a convolution's raw output is
also used elsewhere). Training code never calls this: only the inference pipeline does.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["conv_bn_pairs", "fold_batchnorm"]


def conv_bn_pairs(model: nn.Module, example: Tensor) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) of every BatchNorm2d whose input is a Conv2d's output.

    Found by one forward pass on ``example``; a convolution or BatchNorm called more than once
    (shared weights) is left out, since folding it would change its other uses.
    """
    names = {m: n for n, m in model.named_modules()}
    outputs: list[tuple[Tensor, nn.Module]] = []  # kept alive for the pass, so ``is`` is exact
    calls: dict[nn.Module, int] = {}
    pairs: dict[nn.Module, nn.Module] = {}

    def after_conv(mod: nn.Module, _inp: tuple, out: Tensor) -> None:
        calls[mod] = calls.get(mod, 0) + 1
        outputs.append((out, mod))

    def before_bn(mod: nn.Module, inp: tuple) -> None:
        calls[mod] = calls.get(mod, 0) + 1
        conv = next((c for t, c in outputs if t is inp[0]), None)
        if conv is not None:
            pairs[mod] = conv

    hooks = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(after_conv))
        elif isinstance(mod, nn.BatchNorm2d):
            hooks.append(mod.register_forward_pre_hook(before_bn))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return [(names[conv], names[bn]) for bn, conv in pairs.items()
            if calls.get(bn) == 1 and calls.get(conv) == 1 and not bn.training and bn.track_running_stats]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def fold_batchnorm(model: nn.Module, example: Tensor, atol: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of an eval-mode model with each foldable BatchNorm2d folded into its convolution.

    Args:
        model: the model, in eval mode (not changed).
        example: an input; the pairs are found, and the copy checked, on it.
        atol: largest output difference allowed, relative to the output's scale.

    Returns:
        ``(model, folded)``: the copy and the number of BatchNorms folded; the original and 0 when
        the copy's output differs from the original's by more than ``atol``.

    >>> from groupmood import create_model
    >>> model = create_model("resnet_tiny_48", num_classes=3).eval()
    >>> fused, folded = fold_batchnorm(model, torch.rand(1, 1, 48, 48))
    >>> folded
    7
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm running statistics)")
    pairs = conv_bn_pairs(model, example)
    if not pairs:
        return model, 0
    fused = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv = fused.get_submodule(conv_name)
        folded = fuse_conv_bn_eval(conv, fused.get_submodule(bn_name))
        conv.weight = folded.weight
        conv.bias = folded.bias
        _set(fused, bn_name, nn.Identity())
    with torch.inference_mode():
        want, got = model(example).float(), fused(example).float()
    scale = max(float(want.abs().max()), 1.0)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=0.0, atol=atol * scale):
        return model, 0
    return fused, len(pairs)
