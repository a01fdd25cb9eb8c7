"""Aligned-face nets (SphereFace residual CNNs) for 112 x 96 (H x W) RGB crops.

Four stages of 64, 128, 256, 512 channels; each starts with a stride-2 3x3 conv + PReLU, then
residual units of two 3x3 convs with PReLU (1/2/4/1 units for SphereFace-20, 2/4/8/2 for -36,
3/8/16/3 for -64, the paper's aligned model). FC1 (512) is followed by BatchNorm1d as in the
slides, FC2 is a :class:`~groupmood.models.heads.ClassifierHead` (softmax / L-Softmax / A-Softmax).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .heads import EmbeddingClassifier
from .registry import register_model

__all__ = ["SphereFace", "SphereUnit", "sphereface20", "sphereface36", "sphereface64",
           "sphereface_compact", "sphereface_tiny"]

ALIGNED_INPUT_SIZE = (112, 96)


def _conv_act(in_ch: int, out_ch: int, stride: int, bn: bool) -> nn.Sequential:
    """3x3 conv (+ BatchNorm) + PReLU; the conv has a bias only when there is no BatchNorm."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.PReLU(out_ch))
    return nn.Sequential(*layers)


class SphereUnit(nn.Module):
    """Residual unit x + PReLU(conv(PReLU(conv(x)))) at constant width (SphereFace style)."""

    def __init__(self, channels: int, bn: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_act(channels, channels, 1, bn), _conv_act(channels, channels, 1, bn))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SphereFace(EmbeddingClassifier):
    """SphereFace-style residual CNN with FC1 + BatchNorm1d embedding and a classifier head.

    ``conv_bn`` adds BatchNorm after every conv (not in the original nets; it makes training from
    scratch converge much more easily). ``drop_rate`` is applied to the embedding before the head
    (the paper uses none).
    """

    def __init__(self, layers: Sequence[int], channels: Sequence[int] = (64, 128, 256, 512),
                 embed_dim: int = 512, conv_bn: bool = False, in_chans: int = 3,
                 input_size: tuple[int, int] = ALIGNED_INPUT_SIZE, num_classes: int = 8,
                 head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                 **margin_kw: float) -> None:
        super().__init__()
        if len(layers) != len(channels) or not layers:
            raise ValueError(f"layers {tuple(layers)} and channels {tuple(channels)} need the same, non-zero length")
        if any(n < 0 for n in layers) or any(c < 1 for c in channels) or embed_dim < 1 or in_chans < 1:
            raise ValueError("layers must be >= 0; channels, embed_dim and in_chans must be >= 1")
        self.in_chans = in_chans
        self.input_size = (int(input_size[0]), int(input_size[1]))
        stages: list[nn.Module] = []
        prev = in_chans
        h, w = self.input_size
        for n_units, ch in zip(layers, channels, strict=True):
            units = [SphereUnit(ch, conv_bn) for _ in range(n_units)]
            stages.append(nn.Sequential(_conv_act(prev, ch, 2, conv_bn), *units))
            prev = ch
            h, w = (h + 1) // 2, (w + 1) // 2
        self.stages = nn.Sequential(*stages)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(prev * h * w, embed_dim)
        self.fc1_bn = nn.BatchNorm1d(embed_dim)
        self._init_weights(conv_bn)
        self._build_head(embed_dim, num_classes, head, margin_m, drop_rate, margin_kw)

    def _init_weights(self, conv_bn: bool) -> None:
        """Kaiming init with BatchNorm; without it SphereFace's Caffe init (xavier, unit convs N(0, 0.01))."""
        for stage in self.stages:
            for pos, block in enumerate(stage):  # block 0: the stride-2 conv; then residual units
                for mod in block.modules():
                    if not isinstance(mod, nn.Conv2d):
                        continue
                    if conv_bn:
                        nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                    elif pos > 0:
                        nn.init.normal_(mod.weight, std=0.01)
                    else:
                        nn.init.xavier_uniform_(mod.weight)
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, embed_dim) embedding of (B, in_chans, 112, 96) crops."""
        expected = (self.in_chans, *self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected input (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"(channels, height, width), got {tuple(x.shape)}")
        return self.fc1_bn(self.fc1(self.flatten(self.stages(x))))


def _sphereface(layers: Sequence[int], num_classes: int, head: str, margin_m: int, drop_rate: float,
                **kw: Any) -> SphereFace:
    return SphereFace(layers, num_classes=num_classes, head=head, margin_m=margin_m, drop_rate=drop_rate, **kw)


@register_model("face_aligned", ALIGNED_INPUT_SIZE, 3)
def sphereface20(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                 **kw: Any) -> SphereFace:
    """SphereFace-20 (1/2/4/1 residual units at 64/128/256/512 channels), 112x96 RGB."""
    return _sphereface((1, 2, 4, 1), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_aligned", ALIGNED_INPUT_SIZE, 3)
def sphereface36(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                 **kw: Any) -> SphereFace:
    """SphereFace-36 (2/4/8/2 residual units at 64/128/256/512 channels), 112x96 RGB."""
    return _sphereface((2, 4, 8, 2), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_aligned", ALIGNED_INPUT_SIZE, 3)
def sphereface64(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                 **kw: Any) -> SphereFace:
    """SphereFace-64 (3/8/16/3 residual units), the paper's aligned model, 112x96 RGB."""
    return _sphereface((3, 8, 16, 3), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_aligned", ALIGNED_INPUT_SIZE, 3)
def sphereface_compact(num_classes: int = 8, head: str = "softmax", margin_m: int = 4,
                       drop_rate: float = 0.0, **kw: Any) -> SphereFace:
    """Small SphereFace (16/32/64/128 ch, 1/2/2/1 units, BatchNorm, 256-d) trainable on CPU."""
    kw = {"channels": (16, 32, 64, 128), "embed_dim": 256, "conv_bn": True, **kw}
    return _sphereface((1, 2, 2, 1), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_aligned", ALIGNED_INPUT_SIZE, 3)
def sphereface_tiny(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                    **kw: Any) -> SphereFace:
    """Tiny SphereFace for tests (4/8/8/16 channels, one residual unit, 16-d)."""
    kw = {"channels": (4, 8, 8, 16), "embed_dim": 16, "conv_bn": True, **kw}
    return _sphereface((0, 1, 0, 0), num_classes, head, margin_m, drop_rate, **kw)
