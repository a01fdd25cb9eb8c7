"""One reader for every weight file groupmood reads, and the writer of its model files.

Formats read (:func:`read_state_dict` for tensors, :func:`read_checkpoint` for groupmood's own files):

- groupmood training checkpoints (``.pt``: ``model`` state, ``config``, ``classes``, metric, epoch,
  and for ``--resume`` the optimizer, scaler and RNG states);
- exported model files (``.safetensors``, fp16, metadata: ``format``, ``model``, ``family``,
  ``arch``, ``recipe``, ``classes``, ``config``, ``metric``, ``epoch``; see :func:`save_model`);
- user-supplied or packaged state dicts: torchvision / timm ``.pth``, Caffe-converted files, the
  weight store's MTCNN ``.pt`` and EfficientNet-Lite ``.pth`` files: ``state_dict`` / ``model``
  wrappers are opened and DataParallel's ``module.`` prefixes stripped.

Torch files are read with ``weights_only=True`` (no pickled code runs); registered weight names
and given sha256 values are checked first (:mod:`groupmood.weights`). Every error is a
:class:`~groupmood.errors.WeightsError` that names the file and says what is wrong with it.

A model file carries its architecture (``arch``: the model section it was built from) and its input
recipe (:class:`~groupmood.models.registry.ModelInfo`), so :func:`load_model` rebuilds it and its
transforms from the file alone; files written before the recipe was stored get the registered
recipe of the model they name.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from . import weights
from .errors import WeightsError
from .io import atomic_write
from .models.catalog import create_model, resolve_recipe
from .models.registry import ModelInfo

__all__ = ["ARCH_KEYS", "MODEL_FORMAT", "Checkpoint", "build_model", "canonical_safetensors", "load_model", "read_checkpoint",
           "read_safetensors", "read_state_dict", "save_model"]

#: The ``format`` metadata of groupmood model files.
MODEL_FORMAT = "groupmood-1"
#: The model-section keys that rebuild an architecture (``create_model``'s arguments).
ARCH_KEYS = ("name", "head", "margin_m", "drop_rate", "kwargs")
_META_KEYS = ("config", "classes", "metric", "epoch", "step", "arch", "recipe", "family", "format", "model")


@dataclass
class Checkpoint:
    """A groupmood model file read: its tensors, its metadata and (``.pt``) everything else it holds."""

    path: Path
    state: dict[str, Tensor]
    meta: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> dict[str, Any]:
        """The model section that rebuilds the architecture (``arch``, else the training config's ``model``)."""
        arch = self.meta.get("arch") or (self.meta.get("config") or {}).get("model")
        if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
            raise WeightsError(f"{self.path}: names no model architecture (no 'arch' or config model section); "
                               "write it with `groupmood export` or a groupmood training run")
        return {k: arch[k] for k in ARCH_KEYS if k in arch}

    @property
    def classes(self) -> list[str]:
        classes = self.meta.get("classes")
        if not isinstance(classes, list) or not classes:
            raise WeightsError(f"{self.path}: names no output classes; export it with `groupmood export`")
        return [str(c) for c in classes]

    @property
    def info(self) -> ModelInfo:
        """The model's registry entry with the file's input recipe (the registered one when it has none)."""
        name = self.arch["name"]
        try:
            return resolve_recipe(name, self.meta.get("recipe"), str(self.path))
        except KeyError as exc:
            raise WeightsError(f"{self.path}: {exc.args[0]}; is it a model of a newer groupmood?") from None
        except ValueError as exc:
            raise WeightsError(f"{self.path}: bad input recipe ({exc})") from None


def _exists(path: Path) -> Path:
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found; check the path")
    return path


def read_safetensors(path: str | Path, framework: str = "pt") -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, raw string metadata) of a safetensors file; ``framework`` ``pt`` or ``numpy``."""
    p = _exists(Path(path))
    try:
        with safe_open(str(p), framework=framework) as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise WeightsError(f"{p}: not a readable safetensors file ({exc}); fetch or export it again") from exc


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a loadable PyTorch state dict ({exc}); only tensors and plain "
                           "containers load (weights_only), and the file must be complete") from exc


def _tensors(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensor dict inside common wrappers (``model``, ``state_dict``), ``module.`` prefixes stripped."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (a mapping of tensors), found {type(obj).__name__}")
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            obj = inner
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise WeightsError(f"{path}: holds no tensors (keys: {', '.join(map(str, list(obj)[:6])) or 'none'}); "
                           "expected a state dict")
    while all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(source: str | Path, sha256: str | None = None, auto_fetch: bool = False) -> dict[str, Tensor]:
    """The tensors of any weight file, read safely (no pickled code runs).

    Args:
        source: a registered weights name (taken from the cache, sha256-checked) or a path
            (``.safetensors``, ``.pt``, ``.pth``).
        sha256: the expected sha256 of a path (unchecked when None).
        auto_fetch: fetch a registered name missing from the cache.

    Returns:
        name -> tensor, wrappers opened and ``module.`` prefixes stripped.

    >>> sorted(read_state_dict("mtcnn_pnet", auto_fetch=True))[:2]
    ['conv1.bias', 'conv1.weight']
    """
    path = weights.resolve(source, sha256=sha256, auto_fetch=auto_fetch)
    if path.suffix == ".safetensors":
        return _tensors(read_safetensors(path)[0], path)
    return _tensors(_read_torch(path), path)


def read_checkpoint(path: str | Path, sha256: str | None = None) -> Checkpoint:
    """Read a groupmood training checkpoint (``.pt``) or exported model (``.safetensors``).

    Args:
        path: the file.
        sha256: its expected sha256 (unchecked when None).

    Returns:
        The :class:`Checkpoint`: tensors and metadata.

    >>> import importlib.resources
    >>> asset = importlib.resources.files("groupmood") / "assets" / "face_nonaligned.safetensors"
    >>> read_checkpoint(asset).arch["name"]
    'resnet_compact_48'
    """
    p = _exists(Path(path))
    if sha256:
        weights.verify(p, sha256)
    if p.suffix == ".safetensors":
        tensors, raw = read_safetensors(p)
        if raw.get("format", json.dumps(MODEL_FORMAT)) != json.dumps(MODEL_FORMAT):
            raise WeightsError(f"{p}: model file format {raw['format']} is not {MODEL_FORMAT!r}; upgrade groupmood")
        if "classes" not in raw or ("arch" not in raw and "config" not in raw):
            raise WeightsError(f"{p}: not a groupmood model file (no groupmood metadata: classes, arch or config); "
                               "export it with `groupmood export`")
        try:
            meta = {k: json.loads(v) for k, v in raw.items()}
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{p}: damaged metadata ({exc}); export it again") from None
        return Checkpoint(p, _tensors(tensors, p), meta)
    obj = _read_torch(p)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), Mapping) or "classes" not in obj:
        raise WeightsError(f"{p}: not a groupmood training checkpoint (no model / classes); a plain state dict "
                           "goes to model.pretrained or init_from")
    meta = {k: obj[k] for k in _META_KEYS if k in obj and k != "model"}
    extra = {k: v for k, v in obj.items() if k not in meta and k != "model"}
    return Checkpoint(p, _tensors(obj["model"], p), meta, extra)


def build_model(arch: Mapping[str, Any], num_classes: int) -> nn.Module:
    """A new model from a model section: training builds from the config's, loading from the file's ``arch``.

    Args:
        arch: ``name``, and optionally ``head``, ``margin_m``, ``drop_rate``, ``kwargs``.
        num_classes: the outputs.

    Returns:
        The model; TypeError / ValueError name a bad argument.

    >>> type(build_model({"name": "resnet_tiny_48"}, num_classes=3)).__name__
    'ResNet48'
    """
    return create_model(arch["name"], num_classes=num_classes, head=arch.get("head", "softmax"),
                        margin_m=arch.get("margin_m", 4), drop_rate=arch.get("drop_rate", 0.0),
                        **dict(arch.get("kwargs") or {}))


def load_model(path: str | Path, device: torch.device | str = "cpu",
               sha256: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A model in eval mode from a groupmood checkpoint or model file, and its metadata.

    Args:
        path: the file.
        device: where the model goes.
        sha256: the file's expected sha256 (unchecked when None).

    Returns:
        (model, meta): the architecture and the input recipe come from the file (``meta["info"]``:
        the registry entry with the file's recipe); ``meta`` also holds ``classes``, ``config`` (the
        training config, when the file has one), ``arch`` and, when known, the metric it was
        selected by.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = save_model(create_model("resnet_tiny_48", num_classes=3),
    ...                       {"arch": {"name": "resnet_tiny_48"}, "classes": ["Negative", "Neutral", "Positive"]},
    ...                       Path(d) / "tiny.safetensors")
    ...     model, meta = load_model(path)
    >>> meta["classes"], meta["info"].input_size, model.training
    (['Negative', 'Neutral', 'Positive'], (48, 48), False)
    """
    ckpt = read_checkpoint(path, sha256)
    arch, classes, info = ckpt.arch, ckpt.classes, ckpt.info
    try:
        model = build_model(arch, len(classes))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{ckpt.path}: cannot build its model {arch['name']!r} ({exc})") from None
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in ckpt.state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{ckpt.path}: its tensors do not fit model {arch['name']} "
                           f"({str(exc).splitlines()[0]})") from None
    meta = {**ckpt.meta, "arch": arch, "classes": classes, "info": info, "recipe": info.recipe(classes)}
    return model.to(device).eval(), meta


def save_model(model: nn.Module, meta: Mapping[str, Any], out: str | Path) -> Path:
    """Write a model as fp16 safetensors with its architecture, input recipe and classes in the metadata.

    Parameters and BatchNorm statistics become fp16; other buffers (counters such as the margin
    heads' annealing iteration) keep their dtype. The file is byte-reproducible
    (:func:`canonical_safetensors`) and written atomically.

    Args:
        model: the model.
        meta: ``classes`` and ``arch`` or ``config`` (its ``model`` section), optionally ``info`` (a
            ModelInfo whose recipe to store; default: the registered one), ``metric`` and ``epoch``.
        out: the file.

    Returns:
        The path written (see :func:`load_model` for an example).
    """
    ckpt = Checkpoint(Path(out), {}, dict(meta))
    arch, classes = ckpt.arch, ckpt.classes
    info = meta.get("info") or resolve_recipe(arch["name"])
    params = {name for name, _ in model.named_parameters()}
    tensors = {}
    for name, t in model.state_dict().items():
        half = t.is_floating_point() and (name in params or name.endswith(("running_mean", "running_var")))
        tensors[name] = (t.half() if half else t).contiguous()
    metadata = {"format": json.dumps(MODEL_FORMAT), "model": json.dumps(arch["name"]),
                "family": json.dumps(info.family), "arch": json.dumps(arch),
                "recipe": json.dumps(info.recipe(classes)), "classes": json.dumps(classes),
                "metric": json.dumps(meta.get("metric")), "epoch": json.dumps(meta.get("epoch"))}
    if meta.get("config") is not None:
        metadata["config"] = json.dumps(meta["config"])
    out = Path(out)
    with atomic_write(out, "wb") as fh:
        fh.write(canonical_safetensors(save_safetensors(tensors, metadata=metadata)))
    return out


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its JSON header's keys sorted, so equal contents give equal bytes.

    safetensors writes the metadata in hash-map order, which changes from run to run; the tensor
    data and offsets are untouched, only the header is written again (padded with spaces to a
    multiple of 8 bytes, as safetensors does).
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]
