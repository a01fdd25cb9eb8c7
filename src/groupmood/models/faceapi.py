"""face-api.js's expression net in PyTorch, and a reader for its TF.js weight files.

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

:func:`read_tfjs` reads a TF.js weights manifest and its ``.bin`` shards (uint8-quantised tensors
dequantise as ``q * scale + min``); :func:`faceapi_state_dict` maps them onto this module's names.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import weights as store
from ..checkpoint import save_model
from ..config import DEFAULTS
from ..errors import WeightsError
from .global_cnns import SameConv2d
from .heads import EmbeddingClassifier
from .registry import register_model

__all__ = ["FACEAPI_CLASSES", "FACEAPI_MEAN", "FaceApiExpressionNet", "faceapi_expression", "faceapi_state_dict",
           "read_tfjs"]

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


# --------------------------------------------------------------------------- TF.js weights

_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


def read_tfjs(manifest: str | Path, shards: Mapping[str, str | Path] | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a TF.js weights manifest, dequantised to float32 (int32 kept), by name.

    ``shards`` maps a shard's name in the manifest to its path; by default shards are looked up
    beside the manifest.
    """
    mpath = Path(manifest)
    try:
        groups = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{mpath}: not a readable TF.js weights manifest ({exc})") from exc
    if not isinstance(groups, list):
        raise WeightsError(f"{mpath}: a TF.js weights manifest is a list of weight groups")
    out: dict[str, np.ndarray] = {}
    for group in groups:
        data = b"".join(Path(shards[p] if shards and p in shards else mpath.parent / p).read_bytes()
                        for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = tuple(int(s) for s in w["shape"])
            count = int(np.prod(shape)) if shape else 1
            quant = w.get("quantization")
            dtype = np.dtype(_DTYPES[quant["dtype"] if quant else w["dtype"]])
            nbytes = count * dtype.itemsize
            if offset + nbytes > len(data):
                raise WeightsError(f"{mpath}: the weight shards end inside tensor {w['name']!r}; "
                                   "the .bin file is truncated or belongs to another manifest")
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += nbytes
            if quant:
                arr = arr.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            out[w["name"]] = np.array(arr, dtype=np.float32 if w["dtype"] == "float32" else arr.dtype)
        if offset != len(data):
            raise WeightsError(f"{mpath}: {len(data) - offset} bytes of the weight shards are not described by "
                               "the manifest")
    return out


def _conv(w: np.ndarray) -> Tensor:
    """TF conv filter (kh, kw, cin, cout) -> torch (cout, cin, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))


def _depthwise(w: np.ndarray) -> Tensor:
    """TF depthwise filter (kh, kw, cin, 1) -> torch (cin, 1, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(w.transpose(2, 3, 0, 1)))


def faceapi_state_dict(tensors: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Map face-api's tensor names (``dense0/conv0/filters``, ``fc/weights``, ...) onto this module."""
    state: dict[str, Tensor] = {}
    try:
        for b in range(4):
            pre, src = f"blocks.{b}.", f"dense{b}/"
            if b == 0:
                state[pre + "conv0.weight"] = _conv(tensors[src + "conv0/filters"])
                state[pre + "conv0_bias"] = torch.from_numpy(tensors[src + "conv0/bias"].copy())
            for k in range(0 if b else 1, 4):
                conv = f"{pre}conv{k}."
                state[conv + "depthwise.weight"] = _depthwise(tensors[f"{src}conv{k}/depthwise_filter"])
                state[conv + "pointwise.weight"] = _conv(tensors[f"{src}conv{k}/pointwise_filter"])
                state[conv + "pointwise.bias"] = torch.from_numpy(tensors[f"{src}conv{k}/bias"].copy())
        state["head.fc.weight"] = torch.from_numpy(np.ascontiguousarray(tensors["fc/weights"].T))
        state["head.fc.bias"] = torch.from_numpy(tensors["fc/bias"].copy())
    except KeyError as exc:
        raise WeightsError(f"the TF.js weights have no tensor {exc.args[0]!r}: they are not face-api's "
                           "face_expression_model") from None
    return state


def load_faceapi_expression(manifest: str | Path | None = None, auto_fetch: bool = False) -> FaceApiExpressionNet:
    """The pretrained 7-class net, from the weight store (``faceapi_expression``) or a manifest path."""
    if manifest is None:
        manifest = store.resolve("faceapi_expression_manifest", auto_fetch=auto_fetch)
        shards = {store.spec("faceapi_expression").filename:
                  store.resolve("faceapi_expression", auto_fetch=auto_fetch)}
    else:
        shards = None
    model = FaceApiExpressionNet()
    model.load_state_dict(faceapi_state_dict(read_tfjs(manifest, shards)))
    return model.eval()


def export_faceapi_expression(out: str | Path, manifest: str | Path | None = None, auto_fetch: bool = False) -> Path:
    """The pretrained net as a groupmood model file (fp16 safetensors with config and classes).

    The file loads like any trained model (a bundle branch, ``groupmood evaluate``,
    ``benchmarks/face_accuracy.py``): its config names ``faceapi_expression`` and the 7 classes.
    """
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"].update(name="faceapi_expression", head="softmax", drop_rate=0.0)
    cfg["data"]["classes"] = list(FACEAPI_CLASSES)
    meta = {"config": cfg, "classes": list(FACEAPI_CLASSES), "metric": None, "epoch": None}
    return save_model(load_faceapi_expression(manifest, auto_fetch), meta, out)
