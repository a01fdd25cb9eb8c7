"""Non-aligned face nets: ResNets for 48 x 48 one-channel (grey) face crops.

Built from torchvision's ``BasicBlock`` / ``Bottleneck``; the ImageNet stem (7x7 stride-2 conv +
max-pool) is replaced by one 3x3 conv so a 48x48 input keeps its resolution in the first stage.
Global average pooling + BatchNorm1d gives the embedding; dropout (0.9 in the paper) precedes the
:class:`~groupmood.models.heads.ClassifierHead`. ResNet-34 is the paper's non-aligned model.

The BatchNorm1d on the pooled features (``embed_bn``, not in the paper) matters for the angular
heads: pooled ReLU maps are non-negative and a class can collapse onto the zero vector, where
|x| cos is 0 for every class and the gradient through the normalisation vanishes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3

from .heads import EmbeddingClassifier
from .registry import register_model

__all__ = ["ResNet48", "resnet18_48", "resnet34_48", "resnet101_48", "resnet_compact_48", "resnet_tiny_48"]

NONALIGNED_INPUT_SIZE = (48, 48)


class ResNet48(EmbeddingClassifier):
    """ResNet with a 3x3 stem for small grey faces; widths, strides and block type configurable.

    ``stem_stride`` and ``strides`` (one per stage) set the downsampling: the paper-style nets use
    a stride-1 stem and strides 1/2/2/2 (stages at 48, 24, 12, 6 px); the compact net downsamples
    earlier to save compute. ``zero_init_residual`` zeroes the last BatchNorm of each block;
    ``embed_bn=False`` gives the paper's exact pooling -> dropout -> FC.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64, stem_stride: int = 1,
                 strides: Sequence[int] = (1, 2, 2, 2), in_chans: int = 1, num_classes: int = 8,
                 head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                 zero_init_residual: bool = True, embed_bn: bool = True, **margin_kw: float) -> None:
        super().__init__()
        if not (len(layers) == len(widths) == len(strides)) or not layers:
            raise ValueError(f"layers {tuple(layers)}, widths {tuple(widths)} and strides {tuple(strides)} "
                             "need the same, non-zero length")
        if any(n < 1 for n in layers) or any(w < 1 for w in widths) or stem_width < 1 or in_chans < 1:
            raise ValueError("layers, widths, stem_width and in_chans must all be >= 1")
        self.in_chans = in_chans
        self.stem = nn.Sequential(conv3x3(in_chans, stem_width, stem_stride), nn.BatchNorm2d(stem_width),
                                  nn.ReLU(inplace=True))
        self._inplanes = stem_width
        self.stages = nn.Sequential(*[self._make_stage(block, w, n, s)
                                      for w, n, s in zip(widths, layers, strides, strict=True)])
        num_features = widths[-1] * block.expansion
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.embed_bn = nn.BatchNorm1d(num_features) if embed_bn else nn.Identity()
        self._init_weights(zero_init_residual)
        self._build_head(num_features, num_classes, head, margin_m, drop_rate, margin_kw)

    def _make_stage(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        """One stage of ``blocks`` residual blocks, the first one downsampling (as torchvision does)."""
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self._inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
        if zero_init_residual:
            for mod in self.modules():
                if isinstance(mod, Bottleneck):
                    nn.init.zeros_(mod.bn3.weight)
                elif isinstance(mod, BasicBlock):
                    nn.init.zeros_(mod.bn2.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, num_features) globally pooled embedding of (B, in_chans, H, W) crops (48x48 nominal)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (batch, {self.in_chans}, height, width), got {tuple(x.shape)}")
        return self.embed_bn(self.pool(self.stages(self.stem(x))))


def _resnet(block: type[BasicBlock | Bottleneck], layers: Sequence[int], num_classes: int, head: str,
            margin_m: int, drop_rate: float, **kw: Any) -> ResNet48:
    return ResNet48(block, layers, num_classes=num_classes, head=head, margin_m=margin_m,
                    drop_rate=drop_rate, **kw)


@register_model("face_nonaligned", NONALIGNED_INPUT_SIZE, 1)
def resnet18_48(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                **kw: Any) -> ResNet48:
    """ResNet-18 for 48x48 grey faces (3x3 stride-1 stem, no max-pool)."""
    return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_nonaligned", NONALIGNED_INPUT_SIZE, 1)
def resnet34_48(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                **kw: Any) -> ResNet48:
    """ResNet-34 for 48x48 grey faces, the paper's non-aligned model (default)."""
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_nonaligned", NONALIGNED_INPUT_SIZE, 1)
def resnet101_48(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                 **kw: Any) -> ResNet48:
    """ResNet-101 (bottleneck) for 48x48 grey faces."""
    return _resnet(Bottleneck, (3, 4, 23, 3), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_nonaligned", NONALIGNED_INPUT_SIZE, 1)
def resnet_compact_48(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.5,
                      **kw: Any) -> ResNet48:
    """Compact ResNet (32-256 wide, 1/2/2/1 blocks, stride-2 stem) for FERPlus training on a CPU.

    The 3x3 stride-2 stem puts the first stage at 24x24 (stages at 24, 12, 6, 3 px): about 0.11
    GFLOPs per 48x48 face, 1.6M parameters, 2.5x cheaper than the ResNet-18 layout at these widths.
    """
    kw = {"widths": (32, 64, 128, 256), "stem_width": 32, "stem_stride": 2, "strides": (1, 2, 2, 2), **kw}
    return _resnet(BasicBlock, (1, 2, 2, 1), num_classes, head, margin_m, drop_rate, **kw)


@register_model("face_nonaligned", NONALIGNED_INPUT_SIZE, 1)
def resnet_tiny_48(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                   **kw: Any) -> ResNet48:
    """Tiny ResNet for tests (4/8 channels, one block per stage)."""
    kw = {"widths": (4, 8), "stem_width": 4, "strides": (2, 2), **kw}
    return _resnet(BasicBlock, (1, 1), num_classes, head, margin_m, drop_rate, **kw)
