"""Global (whole-image) nets: VGG19, BN-Inception, ResNet-101, MobileNetV2, EfficientNet-Lite0/2.

The seed's global branch fine-tunes ImageNet / Places CNNs on whole group photos: every BatchNorm
frozen, dropout 0.9 after the average pooling (0.5 on FC6 and FC7 for VGG19), 224 x 224 crops of
images whose shorter side is 256. Every net here follows the face nets' contract
(:class:`~groupmood.models.heads.EmbeddingClassifier`): ``forward_features`` gives the pooled
embedding, ``forward(x, target=None)`` the logits of a :class:`~groupmood.models.heads.ClassifierHead`
(softmax, L-Softmax or A-Softmax).

The trunks keep the parameter names of their usual checkpoints, so those load with little or no
renaming: torchvision for VGG19 (``features.*``, ``fc6`` / ``fc7``), ResNet-101 and MobileNetV2;
lukemelas ``EfficientNet`` for EfficientNet-Lite; Cadene's ``pretrainedmodels`` BN-Inception (Caffe
layer names) for BN-Inception. Every net except EfficientNet-Lite takes RGB input with ImageNet
mean / std; EfficientNet-Lite takes ``(x - 127) / 128`` (about [-1, 1]). The constants are
registered per model (``model_info(name).mean`` / ``.std``, the one place they live) and
:func:`groupmood.data.transforms.normalize` uses them.

Pretrained weights are never loaded by a constructor, nor by this module:
:func:`groupmood.models.converters.load_pretrained` reads them (``"imagenet"``, a registered weights
name, a checkpoint path, or ``"none"``), renames other layouts (torchvision's VGG classifier, Caffe
names, whose BGR first convolution it adapts) and loads the trunk; each net states only which
weights are its ImageNet ones (``default_weights``) and which keys are its source's classifier
(``classifier_prefixes``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .heads import EmbeddingClassifier
from .layers import SameConv2d
from .registry import IMAGENET_MEAN, IMAGENET_STD, register_model

__all__ = [
    "BN_TYPES", "BNInception", "EfficientNetLite", "GlobalNet", "IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN",
    "LITE_STD", "MobileNetV2Global", "ResNet101Global", "SameConv2d", "VGG19Global", "bninception", "efficientnet_lite0",
    "efficientnet_lite2", "mobilenet_v2", "resnet101", "vgg19",
]

#: EfficientNet-Lite (TF reference): (x - 127) / 128.
LITE_MEAN: tuple[float, ...] = (127.0, 127.0, 127.0)
LITE_STD: tuple[float, ...] = (128.0, 128.0, 128.0)

#: The BatchNorm layers that ``freeze_bn`` freezes.
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# --------------------------------------------------------------------------- the base

class GlobalNet(EmbeddingClassifier):
    """Base of the whole-image nets: frozen BatchNorm option, and what pretrained loading needs to know.

    With ``freeze_bn`` (the seed's recipe) every BatchNorm keeps its running statistics and its
    affine parameters: they get ``requires_grad=False`` and stay in eval mode even after
    ``model.train()``.
    """

    #: Registered weights used for ``pretrained="imagenet"`` (None: not obtainable here).
    default_weights: str | None = None
    #: Key prefixes of the source checkpoints' own classifier, skipped on load (a new head replaces it).
    classifier_prefixes: tuple[str, ...] = ()
    freeze_bn: bool = False

    def _finish(self, num_features: int, num_classes: int, head: str, margin_m: int, drop_rate: float,
                margin_kw: dict[str, float], freeze_bn: bool) -> None:
        self._build_head(num_features, num_classes, head, margin_m, drop_rate, margin_kw)
        self.set_freeze_bn(freeze_bn)

    def set_freeze_bn(self, freeze: bool) -> None:
        """Freeze (or release) every BatchNorm: statistics and affine parameters."""
        self.freeze_bn = bool(freeze)
        for mod in self.modules():
            if isinstance(mod, BN_TYPES):
                for p in mod.parameters(recurse=False):
                    p.requires_grad_(not self.freeze_bn)
        self.train(self.training)

    def train(self, mode: bool = True) -> GlobalNet:
        """Set train / eval mode; frozen BatchNorms stay in eval mode."""
        super().train(mode)
        if mode and self.freeze_bn:
            for mod in self.modules():
                if isinstance(mod, BN_TYPES):
                    mod.eval()
        return self


def _pool() -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


# --------------------------------------------------------------------------- VGG19

class VGG19Global(GlobalNet):
    """VGG19 (torchvision's layers): conv trunk, FC6 + FC7 (4096, ReLU, dropout ``drop_rate``), head.

    The paper's VGG19 was pretrained on Places; its FC6 / FC7 dropout is 0.5. There is no dropout
    between FC7 and the head (``head_drop`` is the identity).
    """

    classifier_prefixes = ("classifier.6.", "fc8")

    def __init__(self, num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.5,
                 freeze_bn: bool = True, **margin_kw: float) -> None:
        super().__init__()
        if not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        tv = torchvision.models.vgg19()
        self.features = tv.features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.fc6, self.fc7 = tv.classifier[0], tv.classifier[3]
        self._finish(4096, num_classes, head, margin_m, 0.0, margin_kw, freeze_bn)
        self.drop6, self.drop7 = nn.Dropout(drop_rate), nn.Dropout(drop_rate)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 4096) FC7 output (after ReLU and dropout) of (B, 3, H, W) images, H, W >= 32."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.drop7(F.relu(self.fc7(self.drop6(F.relu(self.fc6(x))))))


# --------------------------------------------------------------------------- BN-Inception

class ConvBN(nn.Module):
    """Conv (with bias, as in the Caffe model) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionV2Block(nn.Module):
    """One BN-Inception module: 1x1, 3x3, double 3x3 and pooling branches, concatenated.

    A stride-2 module (3c, 4e) has no 1x1 branch and a projection-free 3x3 / stride-2 max pool.
    Branch names follow the Caffe model (``1x1``, ``3x3_reduce``, ``double_3x3_1``, ``pool_proj``).
    """

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, cdr: int, cd: int, pool: str, proj: int,
                 stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.has_1x1 = c1 > 0
        if self.has_1x1:
            self.add_module("1x1", ConvBN(cin, c1, 1))
        self.add_module("3x3_reduce", ConvBN(cin, c3r, 1))
        self.add_module("3x3", ConvBN(c3r, c3, 3, stride, 1))
        self.add_module("double_3x3_reduce", ConvBN(cin, cdr, 1))
        self.add_module("double_3x3_1", ConvBN(cdr, cd, 3, 1, 1))
        self.add_module("double_3x3_2", ConvBN(cd, cd, 3, stride, 1))
        if stride == 2:
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        elif pool == "avg":
            self.pool = nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=True)
        else:
            self.pool = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        self.has_proj = proj > 0
        if self.has_proj:
            self.add_module("pool_proj", ConvBN(cin, proj, 1))
        self.out_channels = c1 + c3 + cd + (proj if self.has_proj else cin)

    def forward(self, x: Tensor) -> Tensor:
        m = self._modules
        outs = [m["1x1"](x)] if self.has_1x1 else []
        outs.append(m["3x3"](m["3x3_reduce"](x)))
        outs.append(m["double_3x3_2"](m["double_3x3_1"](m["double_3x3_reduce"](x))))
        pooled = self.pool(x)
        outs.append(m["pool_proj"](pooled) if self.has_proj else pooled)
        return torch.cat(outs, 1)


#: (name, 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool, pool proj, stride):
#: Ioffe & Szegedy 2015, Table 1 / the Caffe model.
BN_INCEPTION_BLOCKS: tuple[tuple[str, int, int, int, int, int, str, int, int], ...] = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 160, 128, 160, 128, 160, "avg", 96, 1),
    ("4d", 96, 128, 192, 160, 192, "avg", 96, 1),
    ("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 352, 192, 320, 192, 224, "max", 128, 1),
)


class BNInception(GlobalNet):
    """BN-Inception (Inception-v2, Ioffe & Szegedy 2015) in the Caffe layout: 1024-d pooled features.

    conv1 7x7/2 64, max pool, conv2 1x1 64 + 3x3 192, max pool, inception 3a, 3b, 3c (stride 2),
    4a-4e (4e stride 2), 5a, 5b, global average pooling. Max pools use ``ceil_mode`` as in Caffe, so
    inputs should be multiples of 32 (224 nominal). Checkpoints with Cadene's ``pretrainedmodels``
    names (``inception_3a_1x1.weight``, ``inception_3a_1x1_bn.running_mean``, ``last_linear``) load
    through :func:`groupmood.models.converters.load_pretrained`, which renames them and adapts their
    BGR first conv to normalised RGB.
    """

    classifier_prefixes = ("last_linear.", "fc.")

    def __init__(self, num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                 freeze_bn: bool = True, **margin_kw: float) -> None:
        super().__init__()
        self.conv1_7x7_s2 = ConvBN(3, 64, 7, 2, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2_3x3_reduce = ConvBN(64, 64, 1)
        self.conv2_3x3 = ConvBN(64, 192, 3, 1, 1)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        cin = 192
        for name, *cfg in BN_INCEPTION_BLOCKS:
            block = InceptionV2Block(cin, *cfg)
            self.add_module(f"inception_{name}", block)
            cin = block.out_channels
        self.global_pool = _pool()
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(mod.bias)
        self._finish(cin, num_classes, head, margin_m, drop_rate, margin_kw, freeze_bn)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 1024) average-pooled features of (B, 3, H, W) images."""
        x = self.pool1(self.conv1_7x7_s2(x))
        x = self.pool2(self.conv2_3x3(self.conv2_3x3_reduce(x)))
        for name, *_ in BN_INCEPTION_BLOCKS:
            x = self._modules[f"inception_{name}"](x)
        return self.global_pool(x)


# --------------------------------------------------------------------------- ResNet-101, MobileNetV2

class ResNet101Global(GlobalNet):
    """torchvision ResNet-101 trunk (same parameter names), 2048-d average-pooled features."""

    classifier_prefixes = ("fc.",)

    def __init__(self, num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                 freeze_bn: bool = True, **margin_kw: float) -> None:
        super().__init__()
        tv = torchvision.models.resnet101()
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        self.global_pool = _pool()
        self._finish(2048, num_classes, head, margin_m, drop_rate, margin_kw, freeze_bn)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 2048) average-pooled features of (B, 3, H, W) images."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.global_pool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class MobileNetV2Global(GlobalNet):
    """torchvision MobileNetV2 trunk (``features.*``), 1280-d average-pooled features."""

    default_weights = "mobilenet_v2_imagenet"
    classifier_prefixes = ("classifier.",)

    def __init__(self, num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                 freeze_bn: bool = True, **margin_kw: float) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2().features
        self.global_pool = _pool()
        self._finish(1280, num_classes, head, margin_m, drop_rate, margin_kw, freeze_bn)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 1280) average-pooled features of (B, 3, H, W) images."""
        return self.global_pool(self.features(x))


# --------------------------------------------------------------------------- EfficientNet-Lite

def _bn_tf(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the TF EfficientNet settings (eps 1e-3, momentum 0.99 in TF = 0.01 here)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation (Lite): expand 1x1, depthwise kxk, project 1x1, ReLU6."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn_tf(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn_tf(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn_tf(cout)
        self.has_skip = stride == 1 and cin == cout
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return self.drop_path(out) + x if self.has_skip else out


#: EfficientNet-B0 stages (repeats, kernel, stride, expand ratio, output channels); stem 32, head 1280.
LITE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320),
)


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale by ``width``, round to a multiple of 8, at most -10 %."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * scaled else out)


class EfficientNetLite(GlobalNet):
    """EfficientNet-Lite (TF reference) with the lukemelas ``EfficientNet`` parameter names.

    Lite changes to EfficientNet: ReLU6 instead of swish, no squeeze-excitation, stem (32) and head
    (1280) not scaled, first and last stage repeats not scaled. TF "SAME" padding, BatchNorm eps
    1e-3. Inputs are ``(x - 127) / 128``. ``drop_path_rate`` is the stochastic depth of the last
    block (linearly less before), 0.2 as in the reference.
    """

    classifier_prefixes = ("_fc.",)

    def __init__(self, width: float, depth: float, num_classes: int = 3, head: str = "softmax", margin_m: int = 4,
                 drop_rate: float = 0.9, freeze_bn: bool = True, drop_path_rate: float = 0.2,
                 default_weights: str | None = None, **margin_kw: float) -> None:
        super().__init__()
        self.default_weights = default_weights
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn_tf(32)
        plan = []
        cin = 32
        for i, (repeats, kernel, stride, expand, cout) in enumerate(LITE_STAGES):
            cout = _round_filters(cout, width)
            n = repeats if i in (0, len(LITE_STAGES) - 1) else int(math.ceil(depth * repeats))
            for j in range(n):
                plan.append((cin, cout, expand, kernel, stride if j == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(MBConvBlock(*args, drop_path_rate * i / len(plan))
                                     for i, args in enumerate(plan))
        self._conv_head = SameConv2d(cin, 1280, 1)
        self._bn1 = _bn_tf(1280)
        self.global_pool = _pool()
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out")
        self._finish(1280, num_classes, head, margin_m, drop_rate, margin_kw, freeze_bn)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 1280) average-pooled features of (B, 3, H, W) images in [-1, 1]."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.global_pool(F.relu6(self._bn1(self._conv_head(x))))


# --------------------------------------------------------------------------- registered constructors

def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (3 group classes, or 2 for binary data), "
                         f"got {num_classes!r}")
    return num_classes


@register_model("global")  # the family's recipe: 224 x 224 RGB, ImageNet mean / std
def vgg19(num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.5,
          **kw: Any) -> VGG19Global:
    """VGG19 with FC6 / FC7 dropout 0.5 (the paper's Places-pretrained global model)."""
    return VGG19Global(_check_classes(num_classes), head, margin_m, drop_rate, **kw)


@register_model("global")  # the family's recipe: 224 x 224 RGB, ImageNet mean / std
def bninception(num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                **kw: Any) -> BNInception:
    """BN-Inception (Inception-v2), 1024-d, dropout 0.9 after the average pooling."""
    return BNInception(_check_classes(num_classes), head, margin_m, drop_rate, **kw)


@register_model("global")  # the family's recipe: 224 x 224 RGB, ImageNet mean / std
def resnet101(num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
              **kw: Any) -> ResNet101Global:
    """ResNet-101 (torchvision), 2048-d, dropout 0.9 after the average pooling (the paper's best global model)."""
    return ResNet101Global(_check_classes(num_classes), head, margin_m, drop_rate, **kw)


@register_model("global")  # the family's recipe: 224 x 224 RGB, ImageNet mean / std
def mobilenet_v2(num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                 **kw: Any) -> MobileNetV2Global:
    """MobileNetV2 (torchvision), 1280-d; ImageNet weights obtainable here (``mobilenet_v2_imagenet``)."""
    return MobileNetV2Global(_check_classes(num_classes), head, margin_m, drop_rate, **kw)


@register_model("global", mean=LITE_MEAN, std=LITE_STD)
def efficientnet_lite0(num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                       **kw: Any) -> EfficientNetLite:
    """EfficientNet-Lite0, 1280-d, inputs (x - 127) / 128; ImageNet weights obtainable here."""
    return EfficientNetLite(1.0, 1.0, _check_classes(num_classes), head, margin_m, drop_rate,
                            default_weights="efficientnet_lite0_imagenet", **kw)


@register_model("global", mean=LITE_MEAN, std=LITE_STD)
def efficientnet_lite2(num_classes: int = 3, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.9,
                       **kw: Any) -> EfficientNetLite:
    """EfficientNet-Lite2 (width 1.1, depth 1.2; trained at 260 px, used at 224 here); ImageNet weights obtainable."""
    return EfficientNetLite(1.1, 1.2, _check_classes(num_classes), head, margin_m, drop_rate,
                            default_weights="efficientnet_lite2_imagenet", **kw)
