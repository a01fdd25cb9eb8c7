"""face-api.js's expression net in PyTorch.

The npm package ``@vladmandic/face-api`` (MIT) ships a 7-class facial-expression network
(``model/face_expression_model*``): a feature extractor of four dense blocks of depthwise-separable
convolutions (32, 64, 128, 256 channels, each block halving the resolution) on a 112x112 RGB face,
a 7x7 average pool and one fully connected layer. It was trained on other data than FERPlus (colour
web faces), so it is a second, independent opinion on each face of a group photo.

A dense block (face-api's ``denseBlock4``)::

    out1 = relu(conv0(x))                # stride 2; a plain 3x3 conv in the first block
    out2 = sep1(out1)                    # no activation
    out3 = sep2(relu(out1 + out2))
    out4 = sep3(relu(out1 + out2 + out3))
    return relu(out1 + out2 + out3 + out4)

Convolutions use TensorFlow "SAME" padding (asymmetric at stride 2). Inputs are RGB pixels minus
the mean ``(122.782, 117.001, 104.298)``, divided by 255.

The TF.js weight files are read and mapped onto this module's names by
:mod:`groupmood.models.converters` (``read_tfjs``, ``faceapi_state_dict``, ``load_faceapi_expression``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import EmbeddingClassifier
from .layers import SameConv2d
from .registry import register_model

__all__ = ["FACEAPI_CLASSES", "FACEAPI_INPUT_SIZE", "FACEAPI_MEAN", "FaceApiExpressionNet", "faceapi_expression"]

#: The net's output order (face-api's ``FACE_EXPRESSION_LABELS``), in groupmood's spelling.
FACEAPI_CLASSES: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger", "fear", "disgust", "surprise")
#: RGB mean subtracted before dividing by 255.
FACEAPI_MEAN = (122.782, 117.001, 104.298)
FACEAPI_INPUT_SIZE = (112, 112)


class _SeparableConv(nn.Module):
    """TF ``separableConv2d`` + bias: depthwise 3x3 (SAME) then pointwise 1x1."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = SameConv2d(cin, cin, 3, stride, groups=cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class _DenseBlock(nn.Module):
    """Four convolutions whose outputs are summed densely (face-api's ``denseBlock4``)."""

    def __init__(self, cin: int, cout: int, first: bool) -> None:
        super().__init__()
        if first:
            conv0 = SameConv2d(cin, cout, 3, 2)
            self.conv0_bias = nn.Parameter(torch.zeros(cout))
        else:
            conv0 = _SeparableConv(cin, cout, 2)
            self.register_parameter("conv0_bias", None)
        self.conv0 = conv0
        self.conv1 = _SeparableConv(cout, cout, 1)
        self.conv2 = _SeparableConv(cout, cout, 1)
        self.conv3 = _SeparableConv(cout, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.conv0(x)
        if self.conv0_bias is not None:
            out1 = out1 + self.conv0_bias.view(1, -1, 1, 1)
        out1 = F.relu(out1)
        out2 = self.conv1(out1)
        out3 = self.conv2(F.relu(out1 + out2))
        out4 = self.conv3(F.relu(out1 + out2 + out3))
        return F.relu(out1 + out2 + out3 + out4)


class FaceApiExpressionNet(EmbeddingClassifier):
    """face-api.js's ``FaceExpressionNet``: 112x112 RGB face -> 256-d features -> 7 expressions.

    ``num_classes`` other than 7 gives a new head over the same trunk (for fine-tuning).
    """

    def __init__(self, num_classes: int = 7, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                 **margin_kw: float) -> None:
        super().__init__()
        widths = (32, 64, 128, 256)
        cin = 3
        blocks = []
        for i, w in enumerate(widths):
            blocks.append(_DenseBlock(cin, w, first=i == 0))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self._build_head(widths[-1], num_classes, head, margin_m, drop_rate, margin_kw)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 256) features of (B, 3, 112, 112) normalised faces (7x7 average pool, as face-api)."""
        x = self.blocks(x)
        return F.avg_pool2d(x, kernel_size=7, stride=2).flatten(1)


@register_model("face_nonaligned", FACEAPI_INPUT_SIZE, in_chans=3, mean=FACEAPI_MEAN, std=(255.0, 255.0, 255.0),
                classes=FACEAPI_CLASSES)
def faceapi_expression(num_classes: int = 7, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                       **kw: Any) -> FaceApiExpressionNet:
    """face-api.js expression net (112x112 RGB square face crops, 7 classes); MIT weights from npm."""
    return FaceApiExpressionNet(num_classes, head, margin_m, drop_rate, **kw)

