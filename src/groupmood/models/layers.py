"""Layers shared by several nets: TensorFlow "SAME" convolution (face-api.js, EfficientNet-Lite)."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SameConv2d"]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size (asymmetric at stride 2).

    The padding is computed from the input's height and width as Python integers, also while the model
    is traced for ONNX export (our exports fix the height and width; only the batch varies): the
    exported graph then holds a constant zero ``Pad`` that ONNX Runtime folds into the convolution,
    instead of shape arithmetic and a ``Pad`` kernel that runs outside its blocked convolution layout
    (about a fifth of EfficientNet-Lite0's time under ONNX Runtime; docs/performance.md).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = (int(d) for d in x.shape[-2:])
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)
