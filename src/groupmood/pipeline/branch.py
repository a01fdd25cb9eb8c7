"""A branch: one trained model with its input recipe, read as scores over the three group classes.

A branch cuts its inputs from a photo (:meth:`Branch.crops`: aligned or square face crops, or the
whole-photo centre crop), runs its model on them (PyTorch, or ONNX Runtime from the export cache) and
turns the logits into group-class probabilities (:meth:`Branch.scores`). Face branches with one
trunk and one crop recipe share one trunk pass (:meth:`Branch.share_key`, :func:`shared_trunks`),
each applying its own linear head.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .. import weights as weight_store
from ..align import align_faces, square_crops
from ..fusion.calibration import Calibration
from ..detect import Face
from ..errors import ConfigError, WeightsError
from ..fusion import parse_pooling, pooling_name
from ..inputs import center_crop_array, normalize_array
from ..labels import GROUP_CLASSES, valence_array
from ..mathops import softmax
from ..models.registry import FAMILY_RECIPES, ModelInfo, family_info
from ..runtime.branches import cached_model, cached_trunk, export_branch
from ..runtime.session import OrtModel, device_type
from .bundle import BranchSpec

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Branch", "shared_trunks"]


class Branch:
    """One trained model with its input recipe, read as scores over the 3 group classes.

    ``info`` is the model's input recipe (its registry entry with the weight file's recipe,
    :func:`groupmood.checkpoint.load_model`): its family
    (``face_aligned``, ``face_nonaligned`` or ``global``) picks the crops, its input size and
    normalisation the rest. ``top_k`` is the face pooling (None: all faces); ``tta_flip`` averages
    the logits of the input and its horizontal flip. ``grey`` feeds a 3-channel model grey crops
    (replicated channels) when it was trained on grey photos, as the shipped aligned model was.

    What runs the model: the PyTorch ``model``, or ``runner``, its ONNX Runtime session
    (:meth:`with_backend`, :meth:`from_onnx_cache`); a branch built from the ONNX cache alone has no
    PyTorch model (``model`` None) and never imports torch. ``fold_bn`` folds the PyTorch model's
    BatchNorm layers into their convolutions (checked to give the same scores;
    :func:`groupmood.models.bn_fold.fold_batchnorm`), and the model runs in channels-last memory layout
    (what PyTorch's CPU convolutions, depthwise ones above all, run fastest). ``batch_size`` is how many
    inputs go through one forward pass (each with its flip): 128 faces, and for the global branch 128
    photos on a GPU but one on a CPU, where a photo's two views keep the activations in cache
    (``docs/performance.md`` has the measurements).

    Args:
        model: the PyTorch model, or None for a branch run by ``runner`` alone.
        classes: the model's output classes (group classes, or expressions read through their valence).
        info: the model's input recipe.
        calibration: applied to the pooled probabilities before fusion (the identity by default).
        sha256: the weight file's sha256, the key of its ONNX export.

    >>> from groupmood import create_model
    >>> from groupmood.models import model_info
    >>> branch = Branch(create_model("resnet_tiny_48", num_classes=3), ["Negative", "Neutral", "Positive"],
    ...                 model_info("resnet_tiny_48"))
    >>> branch.scores(np.zeros((2, 48, 48, 1), np.uint8)).shape
    (2, 3)
    """

    def __init__(self, model: nn.Module | None, classes: Sequence[str], info: ModelInfo, tta_flip: bool = False,
                 top_k: int | None = None, margin: float = 0.0, batch_size: int | None = None, source: str = "",
                 grey: bool = False, fold_bn: bool = True, calibration: Calibration | None = None,
                 runner: OrtModel | None = None, sha256: str | None = None) -> None:
        if info.family not in FAMILY_RECIPES:
            raise ConfigError(f"model family {info.family!r} is not one of {', '.join(FAMILY_RECIPES)}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if model is None and runner is None:
            raise ValueError("a branch needs a PyTorch model or an ONNX Runtime runner")
        self.classes = tuple(classes)
        self.info = info
        self.family = info.family
        self.input_size = (int(info.input_size[0]), int(info.input_size[1]))
        self.in_chans = int(info.in_chans)
        self.fold_bn = bool(fold_bn)
        self.folded = int(runner.meta.get("folded", 0)) if model is None and runner is not None else 0
        if model is not None:
            import torch

            model = model.eval()
            if fold_bn:
                from ..models.bn_fold import fold_batchnorm

                model, self.folded = fold_batchnorm(model, self._example(model))
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.tta_flip = bool(tta_flip)
        self.top_k = top_k
        self.margin = float(margin)
        if batch_size is None:
            batch_size = 1 if self.family == "global" and device_type(self.device) == "cpu" else 128
        self.batch_size = int(batch_size)
        self.source = source
        self.sha256 = sha256
        self.grey = bool(grey)
        self.calibration = calibration or Calibration()
        self._to_group = _group_matrix(self.classes)
        self.runner = runner
        #: sha256 of the trunk (every tensor but the head's) when the head is a plain Linear, and that head
        #: (read from the weight file ``source``): face branches with one trunk and one crop recipe share
        #: one trunk pass (:meth:`share_key`)
        self.trunk_sha256: str | None = None
        self.head: tuple[np.ndarray, np.ndarray] | None = None
        if self.is_face and source:
            self.trunk_sha256, self.head = _linear_head(Path(source)) or (None, None)
        #: ONNX Runtime model of the trunk alone (``forward_features``), when this branch shares it
        self.features_runner: OrtModel | None = None

    def _example(self, model: nn.Module) -> Any:
        """A fixed random input of this branch's size, on the model's device."""
        import torch

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, self.in_chans, *self.input_size, generator=gen)
        return x.to(_module_device(model))

    def __repr__(self) -> str:
        return (f"Branch(model={self.info.name!r}, family={self.family!r}, classes={len(self.classes)}, "
                f"tta_flip={self.tta_flip}, pooling={pooling_name(self.top_k)!r}, backend={self.backend!r}, "
                f"source={self.source!r})")

    @classmethod
    def from_file(cls, path: str | Path, device: Any = "cpu", tta_flip: bool | None = None,
                  pooling: str | int | None = None, margin: float = 0.0, sha256: str | None = None,
                  grey: bool | None = None, fold_bn: bool = True, calibration: Calibration | None = None) -> Branch:
        """Load a ``.safetensors`` export or ``.pt`` checkpoint (:func:`groupmood.checkpoint.load_model`) with
        its input recipe; None options take the recipe's (flip, pooling, grey)."""
        from ..checkpoint import load_model

        p = _model_file(path)
        model, meta = load_model(p, device, sha256)
        info = meta["info"]
        return cls(model, meta["classes"], info, info.tta_flip if tta_flip is None else tta_flip,
                   parse_pooling(info.pooling if pooling is None else pooling), margin, source=str(p),
                   grey=info.grey if grey is None else grey, fold_bn=fold_bn, calibration=calibration,
                   sha256=sha256 or weight_store.sha256_file(p))

    @classmethod
    def from_spec(cls, spec: BranchSpec, device: Any = "cpu", backend: str = "torch") -> Branch | None:
        """A bundle branch: from the ONNX cache under ``backend`` ``onnxruntime`` (None when it is not cached
        yet), else from its model file."""
        if backend == "onnxruntime":
            return cls.from_onnx_cache(spec.model, spec.tta_flip, spec.pooling, spec.margin, spec.sha256, spec.grey,
                                       calibration=spec.calibration)
        return cls.from_file(spec.model, device, spec.tta_flip, spec.pooling, spec.margin, spec.sha256, spec.grey,
                             calibration=spec.calibration)

    @classmethod
    def from_onnx_cache(cls, path: str | Path, tta_flip: bool | None = None, pooling: str | int | None = None,
                        margin: float = 0.0, sha256: str | None = None, grey: bool | None = None, fold_bn: bool = True,
                        calibration: Calibration | None = None) -> Branch | None:
        """The branch of model file ``path`` run by its cached ONNX file, without PyTorch; None when not cached yet.

        The cache key is the file's sha256 (checked against ``sha256`` when given) and the export
        recipe, so nothing but the file's bytes is read; the classes and input recipe come from the
        ONNX file's sidecar, written at export (:meth:`with_backend`).
        """
        p = _model_file(path)
        digest = weight_store.sha256_file(p)
        if sha256 and digest != sha256:
            weight_store.verify(p, sha256)  # raises, naming the file and both digests
        runner = cached_model(p, digest, fold_bn)
        if runner is None:
            return None
        recipe = dict(runner.meta["recipe"])
        info = dataclasses.replace(family_info(recipe["family"]), name=str(runner.meta["model"]))
        info = info.with_recipe(recipe, str(p))
        return cls(None, runner.meta["classes"], info, info.tta_flip if tta_flip is None else tta_flip,
                   parse_pooling(info.pooling if pooling is None else pooling), margin, source=str(p),
                   grey=info.grey if grey is None else grey, fold_bn=fold_bn, calibration=calibration, runner=runner,
                   sha256=digest)

    def share_key(self) -> tuple | None:
        """What two branches must have in common to share one trunk pass (None: this one shares nothing).

        The same trunk weights, model and input recipe (crop, size, resize, channels, normalisation, margin,
        grey, flip) and the same backend: their features are then the same, and each branch's own linear
        head turns them into its scores (:meth:`scores_from_features`).
        """
        if self.trunk_sha256 is None or self.head is None:
            return None
        return (self.trunk_sha256, self.info.name, self.family, self.info.crop, self.info.resize, self.input_size,
                self.in_chans, tuple(self.info.mean), tuple(self.info.std), self.margin, self.grey, self.tta_flip,
                self.backend, self.fold_bn)

    def with_trunk(self, required: bool = True) -> Branch:
        """This branch with its trunk and linear head read apart (as face branches always are), so that
        :meth:`features` and :meth:`scores_from_features` work on a whole-image branch too: a regime gate reads
        the trunk's features (:mod:`groupmood.fusion.regime`), and whole-image branches on that trunk share its
        pass. Without a plain linear head: an error, or this branch as it is when not ``required``."""
        if self.trunk_sha256 is not None:
            return self
        found = _linear_head(Path(self.source)) if self.source else None
        if found is None and not required:
            return self
        if found is None:
            raise ConfigError(f"{self.source}: a regime gate reads this branch's trunk, but its head is not a plain "
                              "linear layer (head.fc); gate a branch whose model ends in one")
        other = copy.copy(self)
        other.trunk_sha256, other.head = found
        return other

    def features_from_cache(self) -> bool:
        """Load the trunk's ONNX Runtime model from the cache, without PyTorch; whether it was there."""
        if self.trunk_sha256 is None:
            return False
        self.features_runner = cached_trunk(self.family, self.info.name, self.trunk_sha256, self.fold_bn)
        return self.features_runner is not None

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """(N, num_features) float32 trunk features of (N, H, W, C) uint8 inputs, averaged with the flip when ``tta_flip``."""
        return self._forward(inputs, features=True)

    def _forward(self, inputs: np.ndarray, features: bool = False, torch_model: bool = False) -> np.ndarray:
        """(N, D) float32 logits, or trunk features (``forward_features``), of (N, H, W, C) uint8 inputs.

        Averaged over each input and its flip when ``tta_flip`` (one pass for both), in chunks of
        ``batch_size``; run by ONNX Runtime unless the branch is PyTorch's or ``torch_model``.
        """
        if self.runner is not None and not torch_model:
            runner = self.runner
            if features:
                if self.features_runner is None and not self.features_from_cache():
                    raise ConfigError(f"{self.source}: its trunk has no ONNX file yet; run "
                                      "`groupmood export --format onnx`")
                runner = self.features_runner or runner

            def run(x: np.ndarray) -> np.ndarray:
                n = len(x)
                out = runner(np.concatenate([x, x[..., ::-1]]) if self.tta_flip else x)[0]
                return (out[:n] + out[n:]) / 2 if self.tta_flip else out
        else:
            import torch

            from ..models.tta import flip_averaged_logits

            model = self._torch_model()
            fn: Callable[..., Any] = getattr(model, "forward_features") if features else model
            device = self.device

            def run(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    out = flip_averaged_logits(fn, torch.from_numpy(x).to(device), self.tta_flip, channels_last=True)
                    return out.float().cpu().numpy()
        parts = [run(normalize_array(inputs[start:start + self.batch_size], self.info))
                 for start in range(0, len(inputs), self.batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)

    def scores_from_features(self, feats: np.ndarray) -> np.ndarray:
        """Group-class probabilities (N, 3) float64 from trunk :meth:`features` through this branch's linear head."""
        if self.head is None:
            raise ValueError(f"{self.source}: its head is not a plain linear layer; use scores()")
        weight, bias = self.head
        return self._group_probs(feats.astype(np.float32) @ weight.T + bias)

    def _group_probs(self, logits: np.ndarray) -> np.ndarray:
        """(N, 3) float64 group-class probabilities of (N, C) float32 logits: softmax, summed into the group classes."""
        if not len(logits):
            return np.zeros((0, len(GROUP_CLASSES)))
        return softmax(logits) @ self._to_group.astype(np.float64)

    @property
    def is_face(self) -> bool:
        return self.family != "global"

    @property
    def backend(self) -> str:
        """``onnxruntime`` when an ONNX Runtime session runs the model, else ``torch``."""
        return "onnxruntime" if self.runner is not None else "torch"

    @property
    def device(self) -> str:
        """Where the PyTorch model lives (``cpu`` for a branch run by ONNX Runtime)."""
        return "cpu" if self.model is None else str(_module_device(self.model))

    def with_pooling(self, top_k: int | None) -> Branch:
        """A shallow copy (same model) with another face pooling."""
        other = copy.copy(self)
        other.top_k = top_k
        return other

    def crops(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """This branch's uint8 inputs for one photo, cut by its recipe's ``crop``: (N, H, W, C) face crops
        (``aligned`` to the 5 landmarks, or ``square`` boxes), or (1, H, W, 3) for a whole image (``center``)."""
        if self.info.crop == "center":
            return center_crop_array(image, self.info)[None]
        h, w = self.input_size
        if self.info.crop == "aligned":
            lm = np.stack([f.landmarks for f in faces]) if faces else np.zeros((0, 5, 2))
            out = align_faces(image, lm, size=(h, w))
            if self.in_chans == 1:
                return _grey(out)
            return np.repeat(_grey(out), 3, axis=3) if self.grey else out
        if self.info.crop != "square":
            raise ConfigError(f"{self.source}: unknown crop {self.info.crop!r} in the model's recipe; "
                              "use aligned, square or center")
        boxes = np.stack([f.box for f in faces]) if faces else np.zeros((0, 4))
        if h != w:
            raise ConfigError(f"non-aligned models take square crops, this one wants {h}x{w}")
        out = square_crops(image, boxes, size=h, margin=self.margin, grey=self.in_chans == 1)
        return out[..., None] if out.ndim == 3 else out

    @property
    def num_features(self) -> int:
        """The width of the model's embedding (what :meth:`embed` returns per input)."""
        return int(getattr(self._torch_model(), "num_features", 0))

    def _torch_model(self) -> nn.Module:
        """The PyTorch model, loaded from :attr:`source` on first use by a branch built from the ONNX cache."""
        if self.model is None:
            torch_branch = Branch.from_file(self.source, "cpu", self.tta_flip, self.top_k, self.margin, self.sha256,
                                            self.grey, self.fold_bn, self.calibration)
            self.model, self.folded = torch_branch.model, torch_branch.folded
        if self.model is None:
            raise WeightsError(f"{self.source}: no PyTorch model could be loaded for this branch")
        return self.model

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """(N, num_features) float64 embeddings of the PyTorch model (``forward_features``, averaged with the flip
        when ``tta_flip``), whatever the backend: what a group head is fitted on.

        The head is linear, so a head on these embeddings gives the logits :meth:`scores` averages.
        """
        if not len(inputs):
            return np.zeros((0, self.num_features))
        return self._forward(inputs, features=True, torch_model=True).astype(np.float64)

    def with_backend(self, backend: str, parity_inputs: Callable[[], list[Any]]) -> Branch:
        """A shallow copy run by ``backend`` (``torch`` or ``onnxruntime``: exported once into the cache and
        checked against PyTorch on ``parity_inputs``, normalised real inputs; :meth:`parity_inputs`)."""
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"unknown backend {backend!r}; use torch or onnxruntime")
        if backend == self.backend:
            return copy.copy(self)
        other = copy.copy(self)
        model = self._torch_model()
        other.model = model
        if backend == "torch":
            other.runner = None
            return other
        meta = {"model": self.info.name, "recipe": self.info.recipe(list(self.classes)),
                "classes": list(self.classes), "folded": self.folded, "source": Path(self.source).name}
        other.runner, other.features_runner = export_branch(
            model, self.family, self.info.name, meta, (self.in_chans, *self.input_size), self.sha256,
            self.trunk_sha256, self.fold_bn, parity_inputs)
        return other

    def parity_inputs(self, photos: Sequence[tuple[np.ndarray, Sequence[Face]]]) -> list[Any]:
        """Normalised (N, C, H, W) torch inputs of this branch for (photo, faces) pairs, flips included when ``tta_flip``."""
        import torch

        parts = [self.crops(img, faces) for img, faces in photos if faces or not self.is_face]
        if not parts:
            raise ConfigError("the photos for the ONNX parity check have no face; check them on a photo with faces")
        x = torch.from_numpy(normalize_array(np.concatenate(parts), self.info))
        return [torch.cat([x, torch.flip(x, dims=[3])]) if self.tta_flip else x]

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        """Group-class probabilities (N, 3) float64 for (N, H, W, C) uint8 inputs, in chunks."""
        return self._group_probs(self._forward(inputs))


def shared_trunks(branches: Mapping[str, Branch]) -> list[list[str]]:
    """Groups of two or more face branches that share one trunk pass (:meth:`Branch.share_key`), in branch order.

    The shipped group branch is a head fitted on the non-aligned branch's frozen trunk: one pass
    over each face serves both.
    """
    groups: dict[tuple, list[str]] = {}
    for name, br in branches.items():
        key = br.share_key()
        if key is not None:
            groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _module_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return "cpu"


def _model_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"model file {p} does not exist; check the path (bundle paths are relative "
                           "to the bundle YAML)")
    return p


def _linear_head(path: Path) -> tuple[str, tuple[np.ndarray, np.ndarray]] | None:
    """(sha256 of the trunk tensors, (head weight, head bias) float32) of a ``.safetensors`` face model whose
    head is a plain softmax Linear (``head.fc.weight`` and ``head.fc.bias`` and nothing else); None otherwise."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            names = sorted(fh.keys())
            if [n for n in names if n.startswith("head.")] != ["head.fc.bias", "head.fc.weight"]:
                return None
            h = hashlib.sha256()
            for n in names:
                if not n.startswith("head."):
                    t = np.ascontiguousarray(fh.get_tensor(n))
                    h.update(f"{n}:{t.dtype}:{t.shape}".encode())
                    h.update(t.tobytes())
            head = (fh.get_tensor("head.fc.weight").astype(np.float32), fh.get_tensor("head.fc.bias").astype(np.float32))
    except Exception:  # a damaged file: the PyTorch loader names the problem
        return None
    return h.hexdigest(), head


def _group_matrix(classes: Sequence[str]) -> np.ndarray:
    """(C, 3) float32 0/1 matrix summing a model's class probabilities into the group classes.

    Group-class models (all three, or a subset such as Negative / Positive) map column by column;
    expression models through the expression -> valence map (:func:`groupmood.labels.valence_array`).
    """
    if all(c in GROUP_CLASSES for c in classes):
        m = np.zeros((len(classes), len(GROUP_CLASSES)), np.float32)
        for i, c in enumerate(classes):
            m[i, GROUP_CLASSES.index(c)] = 1.0
        return m
    try:
        return valence_array(classes)
    except KeyError as exc:
        raise ConfigError(f"the model's classes {list(classes)} are neither group classes nor expressions with a "
                          f"valence ({exc.args[0]})") from None


def _grey(rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB -> (N, H, W, 1) grey uint8."""
    out = np.empty((*rgb.shape[:3], 1), np.uint8)
    for k, c in enumerate(rgb):
        out[k, :, :, 0] = cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)
    return out
