"""GroupEmotionRecognizer: photos in, a group label (Negative / Neutral / Positive) with its evidence out.

The whole system of Tan et al. (EmotiW 2017) in one object. On a GPU a batch of photos goes
through each model together; on a CPU each photo goes through on its own (its result never
depends on its batch neighbours), under ONNX Runtime one photo per core at once:

1. MTCNN finds the faces of the photos (:class:`groupmood.detect.FaceDetector`).
2. Each face branch scores the faces: the *aligned* branch on 112x96 RGB crops aligned to the
   SphereFace template (plus the horizontal flip, logits averaged, as the authors), the
   *non-aligned* branch on square 48x48 grey crops. Face branches with one trunk and one crop
   recipe (the shipped group head sits on the non-aligned trunk) share one trunk pass
   (:func:`shared_trunks`), each applying its own linear head.
3. The *global* branch scores each whole photo: shorter side 256, centre crop 224, and with
   ``tta_flip`` its flip too, logits averaged (the seed's rule; the shipped bundle reads the centre
   crop alone, see the global model card).
4. Face scores are pooled per photo (all faces, or the k largest by box area: the authors use the
   3 largest for the non-aligned branch) and the branches are fused with weights
   (:mod:`groupmood.fusion`); a face branch on a photo without faces abstains and the weights
   renormalise over the branches that spoke.

Models trained on expressions (8 FERPlus classes) are read as the 3 group classes by summing
their probabilities with :func:`groupmood.labels.to_valence`.

A *bundle* is a YAML file naming the model files (relative to the YAML), the fusion weights and
how they were chosen::

    format: groupmood-bundle-1
    branches:
      - name: aligned
        model: aligned.safetensors      # a .safetensors export or a .pt checkpoint, or store:NAME
                                        # (a third-party net converted on first use: models.pretrained)
        sha256: 3f1c...                 # optional; checked before loading
        tta_flip: true                  # optional; default true (aligned, global), false (non-aligned)
        pooling: all                    # optional; all | topK; default all (aligned), top3 (non-aligned)
      - name: nonaligned
        model: nonaligned.safetensors
        margin: 0.0                     # optional; extra margin of the square crop (fraction of side)
      - name: global
        model: global.safetensors
        calibration: {temperature: 2.4}  # optional; see groupmood.calibration
    weights: {aligned: 3.0, global: 0.5, nonaligned: 0.5}
    fusion: {kind: weighted}            # optional; or {kind: model, model: fusion.safetensors, sha256: ...}
                                        # or {kind: regime, gate: gate.safetensors, sha256: ..., reads: scene,
                                        #     crowd: {weights: {...}, fallback: [...]}}: see groupmood.fusion.regime
    detector: {thresholds: [0.6, 0.7, 0.9], factor: 0.709, min_face_frac: 0.05}   # optional
    min_faces: 2    # optional (default 1): face branches vote only on photos with at least this many
                    # faces; on others the whole-image branches give the label (the faces are still scored)
    fallback: [global]  # optional: branches (equal weights) that label a photo on which no branch with a
                        # positive weight spoke (e.g. a photo without faces when the weights, fitted on
                        # group photos, gave the whole-image branch 0); without it such a photo abstains
    chosen_on:                          # free-form record of where the weights come from
      data: GAF 2.0 validation, 2068 photos
      fit_photos: fit_photos.tsv        # optional: sha256 of each fitting photo (evaluate-groups names the overlap)
      method: grid search over the simplex, step 0.1
      accuracy: {fused: 0.83, aligned: 0.80, nonaligned: 0.70, global: 0.74}

Each branch's pooled probabilities pass through its calibration (temperature, optional per-class
bias, fitted on validation photos) before fusion. The fusion is the paper's weighted average, or
a learned :class:`~groupmood.fusion_model.FusionModel` over the calibrated branches and face
statistics when the bundle names one (``fusion: {kind: model, ...}``).

The branch kind (aligned / non-aligned / global) comes from the model's registered family, so
branch names are free; the presets of :mod:`groupmood.fusion` use ``aligned``, ``nonaligned``
and ``global``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import yaml

from . import weights as weight_store
from .align import align_faces, square_crops
from .calibration import Calibration
from .detect import Face, FaceDetector, box_area
from .detect.detector import ImageLike, Images, as_photo_list
from .images import Photo
from .errors import ConfigError, WeightsError
from .fusion import ABSTAIN, Fused, Pooled, fuse, parse_pooling, pool, pooling_name
from .fusion.regime import RegimeGate, mix
from .fusion_model import FusionModel
from .inputs import center_crop_array, normalize_array
from .labels import GROUP_CLASSES, valence_array
from .mathops import softmax
from .models.registry import FAMILY_RECIPES, ModelInfo, family_info
from .models.pretrained import converted_model, store_name
from .runtime.session import OrtModel, device_type, load_cached, photo_workers, resolve_backend

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BUNDLE_FORMAT", "Branch", "BranchResult", "FaceResult", "GroupEmotionRecognizer", "GroupResult",
           "default_bundle_path", "read_bundle"]

BUNDLE_FORMAT = "groupmood-bundle-1"

_BRANCH_KEYS = {"name", "model", "sha256", "tta_flip", "pooling", "margin", "grey", "calibration"}
_BUNDLE_KEYS = {"format", "name", "description", "classes", "branches", "weights", "detector", "chosen_on", "fusion",
                "min_faces", "fallback"}
#: Each fusion kind and the keys its ``fusion`` section may have.
_FUSION_KINDS = {"weighted": {"kind"}, "model": {"kind", "model", "sha256"},
                 "regime": {"kind", "gate", "sha256", "reads", "crowd"}}
_DETECTOR_KEYS = {"thresholds", "factor", "min_face_frac", "min_face_px"}


#: The bundles shipped in the package, by the name ``--bundle`` takes: ``default`` (group photos and crowds: a
#: photo regime and a crowd regime mixed by a gate, :mod:`groupmood.fusion.regime`), ``photo`` (its photo regime
#: alone: faces, for photos of a few people) and ``crowd`` (one fusion fitted on crowds and group photos together).
#: Each bundle's ``chosen_on`` says how it was fitted.
SHIPPED_BUNDLES: dict[str, str] = {"default": "bundle.yaml", "photo": "bundle_photo.yaml", "crowd": "bundle_crowd.yaml"}


def default_bundle_path() -> Path:
    """Where the shipped default bundle lives: ``groupmood/assets/bundle.yaml``."""
    return bundle_path(None)


def bundle_path(bundle: str | Path | None) -> Path:
    """The YAML of a bundle given as a path, as the name of a shipped bundle (:data:`SHIPPED_BUNDLES`), or None
    (the default)."""
    name = "default" if bundle is None else str(bundle)
    if name in SHIPPED_BUNDLES:
        return Path(__file__).resolve().parent / "assets" / SHIPPED_BUNDLES[name]
    return Path(bundle)


# --------------------------------------------------------------------------- branches

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
    PyTorch model (``model`` None) and never imports torch. ``fuse`` folds the PyTorch model's
    BatchNorm layers into their convolutions (checked to give the same scores;
    :func:`groupmood.models.bn_fold.fold_batchnorm`): 20-40 % faster on a CPU. The model runs in
    channels-last memory layout, which PyTorch's CPU convolutions (depthwise ones above all) run
    1.3-1.8x faster than the default layout. ``batch_size`` is how many inputs go through one forward
    pass (each with its flip); by default 128 faces, and for the global branch 128 photos on a GPU
    but one on a CPU: a photo's two 224x224 views keep EfficientNet-Lite0's activations in cache,
    which on a 2-core CPU was about 10 % faster and 130 MiB smaller at peak than 8 photos at once.
    """

    def __init__(self, model: nn.Module | None, classes: Sequence[str], info: ModelInfo, tta_flip: bool = False,
                 top_k: int | None = None, margin: float = 0.0, batch_size: int | None = None, source: str = "",
                 grey: bool = False, fuse: bool = True, calibration: Calibration | None = None,
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
        self.fuse = bool(fuse)
        self.folded = int(runner.meta.get("folded", 0)) if model is None and runner is not None else 0
        if model is not None:
            import torch

            model = model.eval()
            if fuse:
                from .models.bn_fold import fold_batchnorm

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
                  grey: bool | None = None, fuse: bool = True, calibration: Calibration | None = None) -> Branch:
        """Load a ``.safetensors`` export or ``.pt`` checkpoint (:func:`groupmood.checkpoint.load_model`) with
        its input recipe; None options take the recipe's (flip, pooling, grey)."""
        from .checkpoint import load_model

        p = _model_file(path)
        model, meta = load_model(p, device, sha256)
        info = meta["info"]
        return cls(model, meta["classes"], info, info.tta_flip if tta_flip is None else tta_flip,
                   parse_pooling(info.pooling if pooling is None else pooling), margin, source=str(p),
                   grey=info.grey if grey is None else grey, fuse=fuse, calibration=calibration,
                   sha256=sha256 or weight_store.sha256_file(p))

    @classmethod
    def from_onnx_cache(cls, path: str | Path, tta_flip: bool | None = None, pooling: str | int | None = None,
                        margin: float = 0.0, sha256: str | None = None, grey: bool | None = None, fuse: bool = True,
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
        name = _onnx_name(p)
        if name is None:
            return None
        runner = load_cached(name, _onnx_key(digest, fuse))
        if runner is None or not {"model", "recipe", "classes"} <= set(runner.meta):
            return None
        recipe = dict(runner.meta["recipe"])
        info = dataclasses.replace(family_info(recipe["family"]), name=str(runner.meta["model"]))
        info = info.with_recipe(recipe, str(p))
        return cls(None, runner.meta["classes"], info, info.tta_flip if tta_flip is None else tta_flip,
                   parse_pooling(info.pooling if pooling is None else pooling), margin, source=str(p),
                   grey=info.grey if grey is None else grey, fuse=fuse, calibration=calibration, runner=runner,
                   sha256=digest)

    def share_key(self) -> tuple | None:
        """What two face branches must have in common to share one trunk pass (None: this one shares nothing).

        The same trunk weights, model and crop recipe (size, channels, normalisation, margin, grey,
        flip) and the same backend: their features are then the same, and each branch's own linear
        head turns them into its scores (:meth:`scores_from_features`).
        """
        if self.trunk_sha256 is None or self.head is None or not self.is_face:
            return None
        return (self.trunk_sha256, self.info.name, self.family, self.input_size, self.in_chans, tuple(self.info.mean),
                tuple(self.info.std), self.margin, self.grey, self.tta_flip, self.backend, self.fuse)

    def with_trunk(self) -> Branch:
        """This branch with its trunk and linear head read apart (as face branches always are), so that
        :meth:`features` and :meth:`scores_from_features` work on a whole-image branch too: a regime gate reads
        the trunk's features (:mod:`groupmood.fusion.regime`)."""
        if self.trunk_sha256 is not None:
            return self
        found = _linear_head(Path(self.source)) if self.source else None
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
        self.features_runner = load_cached(f"{self.family}-{self.info.name}-features",
                                           _onnx_key(self.trunk_sha256, self.fuse))
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
                runner = self.features_runner

            def run(x: np.ndarray) -> np.ndarray:
                n = len(x)
                out = runner(np.concatenate([x, x[..., ::-1]]) if self.tta_flip else x)[0]
                return (out[:n] + out[n:]) / 2 if self.tta_flip else out
        else:
            import torch

            from .models.tta import flip_averaged_logits

            model = self._torch_model()
            fn = model.forward_features if features else model
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
        """This branch's uint8 inputs for one photo: (N, H, W, C) face crops, or (1, H, W, 3) for global."""
        if self.family == "global":
            return center_crop_array(image, self.info)[None]
        h, w = self.input_size
        if self.family == "face_aligned":
            lm = np.stack([f.landmarks for f in faces]) if faces else np.zeros((0, 5, 2))
            out = align_faces(image, lm, size=(h, w))
            if self.in_chans == 1:
                return _grey(out)
            return np.repeat(_grey(out), 3, axis=3) if self.grey else out
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
                                            self.grey, self.fuse, self.calibration)
            self.model, self.folded = torch_branch.model, torch_branch.folded
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
        import torch

        from .runtime.export import export_onnx, weights_sha256

        meta = {"model": self.info.name, "recipe": self.info.recipe(list(self.classes)),
                "classes": list(self.classes), "folded": self.folded, "source": Path(self.source).name}
        example = torch.zeros(1, self.in_chans, *self.input_size)
        other.runner = export_onnx(model.cpu(), f"{self.family}-{self.info.name}",
                                   _onnx_key(self.sha256 or weights_sha256(model), self.fuse), ("logits",),
                                   example, parity_inputs, meta=meta)
        if self.trunk_sha256 is not None:
            from .runtime.export import FeaturesOf

            other.features_runner = export_onnx(FeaturesOf(model.cpu()), f"{self.family}-{self.info.name}-features",
                                                _onnx_key(self.trunk_sha256, self.fuse), ("features",), example,
                                                parity_inputs, meta={"part": "features", "model": self.info.name})
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


def _is_count(value: Any) -> bool:
    """Whether ``value`` is a whole number >= 1 (a bool is not): a face count, a number of workers."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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


def _onnx_key(weights_sha256: str, fuse: bool) -> dict[str, Any]:
    """What a branch's ONNX file is keyed by: the weight file's sha256 and whether BatchNorm was folded."""
    return {"weights": weights_sha256, "fold_batchnorm": bool(fuse)}


def _onnx_name(path: Path) -> str | None:
    """``{family}-{model}`` of a groupmood ``.safetensors`` model file from its header alone; None otherwise."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = {k: json.loads(v) for k, v in (fh.metadata() or {}).items() if k in ("model", "family", "arch", "recipe")}
    except Exception:  # a damaged file: the PyTorch loader names the problem
        return None
    model = raw.get("model") or (raw.get("arch") or {}).get("name")
    family = raw.get("family") or (raw.get("recipe") or {}).get("family")
    if not isinstance(model, str) or not isinstance(family, str):
        return None
    return f"{family}-{model}"


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


# --------------------------------------------------------------------------- results

def _probs_dict(p: np.ndarray, ndigits: int) -> dict[str, float]:
    return {c: round(float(v), ndigits) for c, v in zip(GROUP_CLASSES, p)}


@dataclass(frozen=True)
class FaceResult:
    """One face: detection, its fused face-level label, and each face branch's probabilities.

    ``probs`` is the weighted mean over the face branches (their fusion weights, renormalised);
    ``pooled`` names the branches whose pooling used this face.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    label: str
    probs: np.ndarray
    branch_probs: dict[str, np.ndarray]
    pooled: tuple[str, ...]

    @property
    def area(self) -> float:
        return box_area(self.box)

    @property
    def probs_by_class(self) -> dict[str, float]:
        """This face's probabilities named by group class."""
        return dict(zip(GROUP_CLASSES, map(float, self.probs)))

    def to_dict(self, ndigits: int = 4) -> dict[str, Any]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "area": round(self.area, 1),
            "label": self.label,
            "probs": _probs_dict(self.probs, ndigits),
            "branches": {b: _probs_dict(p, ndigits) for b, p in self.branch_probs.items()},
            "pooled_in": list(self.pooled),
        }


@dataclass(frozen=True)
class BranchResult:
    """One branch on one photo: pooled probabilities, configured and effective weight, whether it spoke."""

    probs: np.ndarray
    weight: float
    effective_weight: float
    spoke: bool
    faces: tuple[int, ...]
    pooling: str
    family: str

    def to_dict(self, ndigits: int = 4) -> dict[str, Any]:
        return {"probs": _probs_dict(self.probs, ndigits), "weight": round(self.weight, ndigits),
                "effective_weight": round(self.effective_weight, ndigits), "spoke": self.spoke,
                "faces": list(self.faces), "pooling": self.pooling, "family": self.family}


@dataclass(frozen=True)
class GroupResult:
    """The group decision for one photo and the evidence behind it.

    ``no_face`` is True when the detector found no face (the face branches then abstain);
    ``abstained`` is True when no branch spoke at all (label :data:`groupmood.fusion.ABSTAIN`).
    ``crowd`` is the regime gate's probability that the photo is a crowd (None: the bundle has no gate),
    which mixed the photo and crowd fusions (:mod:`groupmood.fusion.regime`).
    """

    label: str
    probs: np.ndarray
    branches: dict[str, BranchResult]
    faces: list[FaceResult]
    no_face: bool
    abstained: bool
    width: int
    height: int
    classes: tuple[str, ...] = GROUP_CLASSES
    crowd: float | None = None

    @property
    def probs_by_class(self) -> dict[str, float]:
        """The fused probabilities named by class: ``{"Negative": p, "Neutral": p, "Positive": p}``."""
        return dict(zip(self.classes, map(float, self.probs)))

    def to_dict(self, ndigits: int = 4) -> dict[str, Any]:
        return {
            "label": self.label,
            "probs": _probs_dict(self.probs, ndigits),
            "no_face": self.no_face,
            "abstained": self.abstained,
            "n_faces": len(self.faces),
            "width": self.width,
            "height": self.height,
            **({} if self.crowd is None else {"crowd": round(self.crowd, ndigits)}),
            "branches": {b: r.to_dict(ndigits) for b, r in self.branches.items()},
            "faces": [f.to_dict(ndigits) for f in self.faces],
        }


# --------------------------------------------------------------------------- bundles

def read_bundle(path: str | Path) -> dict[str, Any]:
    """Read and check a bundle YAML; model paths are made absolute (relative to the YAML), the
    ``detector`` section is ready for :meth:`FaceDetector.from_pretrained` (thresholds a tuple)."""
    p = bundle_path(path)
    if not p.is_file():
        raise WeightsError(f"bundle file {p} does not exist; pass --bundle with a bundle YAML or the name of a "
                           f"shipped one ({', '.join(SHIPPED_BUNDLES)}) (see groupmood.pipeline for the format)")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a bundle is a mapping with 'branches' and 'weights'")
    unknown = sorted(set(raw) - _BUNDLE_KEYS)
    if unknown:
        raise ConfigError(f"{p}: unknown bundle key(s) {', '.join(unknown)}; known: {', '.join(sorted(_BUNDLE_KEYS))}")
    if raw.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
        raise ConfigError(f"{p}: bundle format {raw.get('format')!r} is not {BUNDLE_FORMAT!r}; "
                          "upgrade groupmood or rewrite the bundle")
    if raw.get("classes", list(GROUP_CLASSES)) != list(GROUP_CLASSES):
        raise ConfigError(f"{p}: classes must be {list(GROUP_CLASSES)} (the score order), got {raw.get('classes')}")
    branches = raw.get("branches")
    if not isinstance(branches, list) or not branches:
        raise ConfigError(f"{p}: 'branches' must be a non-empty list of {{name, model}} entries")
    seen: set[str] = set()
    out_branches = []
    for i, b in enumerate(branches):
        if not isinstance(b, dict) or not isinstance(b.get("name"), str) or not isinstance(b.get("model"), str):
            raise ConfigError(f"{p}: branch {i} must be a mapping with a string 'name' and 'model', got {b!r}")
        bad = sorted(set(b) - _BRANCH_KEYS)
        if bad:
            raise ConfigError(f"{p}: branch {b['name']!r} has unknown key(s) {', '.join(bad)}; "
                              f"known: {', '.join(sorted(_BRANCH_KEYS))}")
        if b["name"] in seen:
            raise ConfigError(f"{p}: branch name {b['name']!r} is used twice")
        seen.add(b["name"])
        entry = dict(b)
        name = store_name(b["model"])
        if name is None:
            entry["model"] = str((p.parent / b["model"]).resolve())
        else:
            try:
                entry["model"] = str(converted_model(name, auto_fetch=True))
            except WeightsError as exc:
                raise WeightsError(f"{p}: branch {b['name']!r}: {exc}") from None
            entry["store"] = name
        if "pooling" in entry:
            parse_pooling(entry["pooling"])
        try:
            Calibration.from_dict(entry.get("calibration"))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{p}: branch {b['name']!r} calibration: {exc}") from None
        out_branches.append(entry)
    w = raw.get("weights")
    if not isinstance(w, dict) or not w:
        raise ConfigError(f"{p}: 'weights' must map branch names to numbers, e.g. {{aligned: 3.0, global: 0.5}}")
    unknown_w = sorted(set(w) - seen)
    if unknown_w:
        raise ConfigError(f"{p}: weights name unknown branch(es) {', '.join(unknown_w)}; branches: {sorted(seen)}")
    det = raw.get("detector") or {}
    bad_det = sorted(set(det) - _DETECTOR_KEYS)
    if bad_det:
        raise ConfigError(f"{p}: unknown detector key(s) {', '.join(bad_det)}; "
                          f"known: {', '.join(sorted(_DETECTOR_KEYS))}")
    fusion = _read_fusion(p, raw.get("fusion"), seen)
    fallback = raw.get("fallback") or []
    if not isinstance(fallback, list) or not all(isinstance(b, str) and b in seen for b in fallback):
        raise ConfigError(f"{p}: fallback must be a list of branch names (the branches that label a photo on which "
                          f"no weighted branch spoke), got {fallback!r}; branches: {sorted(seen)}")
    min_faces = raw.get("min_faces", 1)
    if not _is_count(min_faces):
        raise ConfigError(f"{p}: min_faces must be a whole number >= 1 (faces a photo needs before the face "
                          f"branches vote), got {min_faces!r}")
    out = dict(raw)
    det = dict(det)
    if "thresholds" in det:
        det["thresholds"] = tuple(det["thresholds"])
    chosen_on = dict(raw.get("chosen_on") or {})
    if isinstance(chosen_on.get("fit_photos"), str):  # the list of fitting photos, beside the bundle
        chosen_on["fit_photos"] = str((p.parent / chosen_on["fit_photos"]).resolve())
    out.update(branches=out_branches, weights={k: float(v) for k, v in w.items()}, detector=det, fusion=fusion,
               chosen_on=chosen_on, min_faces=min_faces, fallback=list(fallback),
               path=str(p.resolve()))
    return out


def _read_fusion(p: Path, raw: Any, branches: set[str]) -> dict[str, Any]:
    """A bundle's checked ``fusion`` section, its files made absolute."""
    fusion = dict(raw or {"kind": "weighted"})
    kind = fusion.get("kind", "weighted")
    if kind not in _FUSION_KINDS or set(fusion) - _FUSION_KINDS[kind]:
        raise ConfigError(f"{p}: fusion must be {{kind: weighted}}, {{kind: model, model: FILE, sha256: ...}} or "
                          "{kind: regime, gate: FILE, sha256: ..., reads: BRANCH, crowd: {weights: {...}, "
                          f"fallback: [...]}}}}, got {fusion}")
    if kind == "model":
        if not isinstance(fusion.get("model"), str):
            raise ConfigError(f"{p}: fusion kind 'model' needs 'model: FILE' (a fusion model safetensors)")
        fusion["model"] = str((p.parent / fusion["model"]).resolve())
    if kind == "regime":
        crowd = fusion.get("crowd")
        if not isinstance(fusion.get("gate"), str) or fusion.get("reads") not in branches or not isinstance(crowd, dict):
            raise ConfigError(f"{p}: fusion kind 'regime' needs 'gate: FILE', 'reads: BRANCH' (a whole-image branch "
                              f"of the bundle: {sorted(branches)}) and 'crowd: {{weights: ..., fallback: ...}}'")
        weights, fallback = crowd.get("weights"), crowd.get("fallback") or []
        if (set(crowd) - {"weights", "fallback"} or not isinstance(weights, dict) or set(weights) - branches
                or not isinstance(fallback, list) or set(fallback) - branches):
            raise ConfigError(f"{p}: fusion.crowd must be {{weights: {{BRANCH: NUMBER}}, fallback: [BRANCH]}} over the "
                              f"bundle's branches ({sorted(branches)}), got {crowd}")
        fusion["gate"] = str((p.parent / fusion["gate"]).resolve())
        fusion["crowd"] = {"weights": {k: float(v) for k, v in weights.items()}, "fallback": list(fallback)}
    return fusion


# --------------------------------------------------------------------------- the recognizer

class GroupEmotionRecognizer:
    """Detector + branches + fusion weights: ``predict(photos) -> list[GroupResult]``.

    ``pooling`` overrides the face branches' own pooling: ``"all"``, ``"top3"``, or a mapping
    branch -> pooling. ``weights`` maps branch names to non-negative numbers; a branch left out
    has weight 0 (it is run and reported but does not vote). The face branches vote only on photos
    with at least ``min_faces`` faces (one face is not a group: the whole-image branches decide).
    """

    def __init__(self, detector: FaceDetector, branches: Mapping[str, Branch], weights: Mapping[str, float],
                 pooling: str | Mapping[str, str] | None = None, device: Any = "cpu",
                 chosen_on: Mapping[str, Any] | None = None, fusion_model: FusionModel | None = None,
                 min_faces: int = 1, workers: int | None = None, fallback: Sequence[str] = (),
                 regime: RegimeGate | None = None) -> None:
        if not branches:
            raise ConfigError("a recognizer needs at least one branch")
        if "fused" in branches:
            raise ConfigError("'fused' is reserved for the fused result; give the branch another name")
        self.detector = detector
        self.device = str(device)
        self.branches: dict[str, Branch] = {}
        overrides = _pooling_overrides(pooling, branches)
        for name, br in branches.items():
            self.branches[name] = br.with_pooling(overrides[name]) if name in overrides else br
        unknown = sorted(set(weights) - set(self.branches))
        if unknown:
            raise ConfigError(f"weights name unknown branch(es) {', '.join(unknown)}; branches: "
                              f"{', '.join(self.branches)}")
        self.weights = {n: float(weights.get(n, 0.0)) for n in self.branches}
        for n, v in self.weights.items():
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"branch weight {n}={v} must be a finite number >= 0")
        if not any(self.weights.values()):
            raise ConfigError("every branch weight is 0; give at least one branch a positive weight")
        self.chosen_on = dict(chosen_on or {})
        if fusion_model is not None:
            missing = sorted(set(fusion_model.branches) - set(self.branches))
            if missing:
                raise ConfigError(f"the fusion model reads branch(es) {', '.join(missing)}, which the recognizer "
                                  f"does not have ({', '.join(self.branches)})")
        self.fusion_model = fusion_model
        if not _is_count(min_faces):
            raise ConfigError(f"min_faces must be a whole number >= 1, got {min_faces!r}")
        self.min_faces = min_faces
        if workers is not None and not _is_count(workers):
            raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")
        self.workers = workers
        missing_fb = sorted(set(fallback) - set(self.branches))
        if missing_fb:
            raise ConfigError(f"fallback names unknown branch(es) {', '.join(missing_fb)}; branches: "
                              f"{', '.join(self.branches)}")
        self.fallback = tuple(fallback)
        if regime is not None:
            if fusion_model is not None:
                raise ConfigError("a bundle fuses by a fusion model or by regime, not both")
            unknown_r = sorted(({regime.reads} | set(regime.weights) | set(regime.fallback)) - set(self.branches))
            if unknown_r:
                raise ConfigError(f"the regime gate names unknown branch(es) {', '.join(unknown_r)}; branches: "
                                  f"{', '.join(self.branches)}")
            if self.branches[regime.reads].is_face:
                raise ConfigError(f"the regime gate reads branch {regime.reads!r}, a face branch; it reads a "
                                  "whole-image branch's trunk")
            self.branches[regime.reads] = self.branches[regime.reads].with_trunk()
        self.regime = regime

    def __repr__(self) -> str:
        return f"GroupEmotionRecognizer(branches={self.branches}, weights={self.weights}, device={self.device})"

    @classmethod
    def from_bundle(cls, path: str | Path, device: Any = "cpu", detector: FaceDetector | None = None,
                    weights: Mapping[str, float] | None = None,
                    pooling: str | Mapping[str, str] | None = None, backend: str = "torch",
                    workers: int | None = None) -> GroupEmotionRecognizer:
        """Load a bundle YAML; ``detector`` defaults to MTCNN with the bundle's settings (fetched once).

        ``backend`` ``onnxruntime`` (or ``auto`` on a CPU) runs every model from the ONNX cache and,
        once the cache holds them (``groupmood export --format onnx``, or the first such run, which
        exports them), never imports PyTorch. ``workers``: see :meth:`predict`.
        """
        spec = read_bundle(path)
        backend = resolve_backend(backend, device)
        calibrations = {b["name"]: Calibration.from_dict(b.get("calibration")) for b in spec["branches"]}
        fusion_model = None
        if spec["fusion"].get("kind") == "model":
            if spec["fusion"].get("sha256"):
                weight_store.verify(spec["fusion"]["model"], spec["fusion"]["sha256"])
            fusion_model = FusionModel.load(spec["fusion"]["model"])
        regime = None
        if spec["fusion"].get("kind") == "regime":
            if spec["fusion"].get("sha256"):
                weight_store.verify(spec["fusion"]["gate"], spec["fusion"]["sha256"])
            regime = RegimeGate.load(spec["fusion"]["gate"], spec["fusion"]["crowd"]["weights"],
                                     spec["fusion"]["crowd"]["fallback"], reads=spec["fusion"]["reads"])
        branches: dict[str, Branch] = {}
        if backend == "onnxruntime":
            for b in spec["branches"]:
                br = Branch.from_onnx_cache(b["model"], b.get("tta_flip"), b.get("pooling"), float(b.get("margin", 0.0)),
                                            b.get("sha256"), b.get("grey"), calibration=calibrations[b["name"]])
                if br is None:
                    branches = {}
                    break
                branches[b["name"]] = br
            shared = [branches[n] for group in shared_trunks(branches) for n in group]
            if regime is not None and branches:
                branches[regime.reads] = branches[regime.reads].with_trunk()
                shared.append(branches[regime.reads])
            if not all(br.features_from_cache() for br in shared):
                branches = {}  # a shared trunk not exported yet: PyTorch below, then with_backend exports it
        if not branches:
            for b in spec["branches"]:
                branches[b["name"]] = Branch.from_file(b["model"], device, b.get("tta_flip"), b.get("pooling"),
                                                       float(b.get("margin", 0.0)), b.get("sha256"), b.get("grey"),
                                                       calibration=calibrations[b["name"]])
        if detector is None:
            detector = FaceDetector.from_pretrained(device=device, auto_fetch=True, backend=backend, **spec["detector"])
        rec = cls(detector, branches, spec["weights"] if weights is None else weights, pooling, device,
                  spec["chosen_on"], fusion_model if weights is None else None, spec["min_faces"], workers,
                  spec["fallback"], regime if weights is None else None)
        return rec.with_backend(backend)

    @classmethod
    def default(cls, device: Any = "cpu", backend: str = "auto", **kwargs: Any) -> GroupEmotionRecognizer:
        """The shipped bundle (``groupmood/assets/bundle.yaml``), run as ``groupmood predict`` runs it: ``backend``
        ``auto`` is ONNX Runtime on a CPU and PyTorch on a GPU. Other keyword arguments go to :meth:`from_bundle`.

        >>> rec = GroupEmotionRecognizer.default()  # doctest: +SKIP
        >>> rec.predict_one(sample_path("group")).label  # doctest: +SKIP
        'Positive'
        """
        path = default_bundle_path()
        if not path.is_file():
            raise WeightsError(f"the default bundle {path} is missing (this install ships no trained models); "
                               "pass a bundle YAML with --bundle / from_bundle(path)")
        return cls.from_bundle(path, device, backend=backend, **kwargs)

    def with_fusion(self, weights: Mapping[str, float] | None = None,
                    pooling: str | Mapping[str, str] | None = None) -> GroupEmotionRecognizer:
        """A recognizer sharing this one's models with other fusion weights and / or pooling."""
        return GroupEmotionRecognizer(self.detector, self.branches, self.weights if weights is None else weights,
                                      pooling, self.device, self.chosen_on,
                                      self.fusion_model if weights is None else None, self.min_faces, self.workers,
                                      self.fallback, self.regime if weights is None else None)

    @property
    def backend(self) -> str:
        """``torch`` or ``onnxruntime``: what runs the detector and the branches."""
        return self.detector.backend

    def with_backend(self, backend: str = "auto",
                     parity_photos: Callable[[], list[np.ndarray]] | None = None) -> GroupEmotionRecognizer:
        """A recognizer sharing this one's models and fusion, run by ``backend``.

        ``auto`` is ONNX Runtime on a CPU where it is installed, PyTorch elsewhere
        (:func:`groupmood.runtime.resolve_backend`). For ONNX Runtime, MTCNN and every branch are exported
        once into the cache and checked against PyTorch on the faces of ``parity_photos`` (default:
        the ``group`` sample photo) and their crops; models already run by ``backend`` are kept as they are.
        """
        backend = resolve_backend(backend, self.device)
        found: list[tuple[np.ndarray, list[Face]]] = []

        def photos_faces() -> list[tuple[np.ndarray, list[Face]]]:
            if not found:
                from .runtime.export import parity_photos as default_photos

                photos = (parity_photos or default_photos)()
                # PyTorch MTCNN with the authors' settings: the faces do not depend on a bundle's thresholds
                probe = FaceDetector(*self.detector.torch_nets(), device=self.device)
                found.extend(zip(photos, probe.detect(photos)))
            return found

        detector = self.detector if self.detector.backend == backend else self.detector.with_backend(backend,
                                                                                                     parity_photos)
        branches = {n: br if br.backend == backend else
                    br.with_backend(backend, lambda br=br: br.parity_inputs(photos_faces()))
                    for n, br in self.branches.items()}
        return GroupEmotionRecognizer(detector, branches, self.weights, None, self.device, self.chosen_on,
                                      self.fusion_model, self.min_faces, self.workers, self.fallback, self.regime)

    def active_branches(self, all_branches: bool = False) -> dict[str, Branch]:
        """The branches that vote (weight > 0, a fallback, or read by the fusion model); every branch with
        ``all_branches``."""
        read = set(self.fusion_model.branches) if self.fusion_model is not None else set()
        read |= set(self.fallback)
        if self.regime is not None:
            read |= {self.regime.reads, *self.regime.fallback, *(n for n, w in self.regime.weights.items() if w > 0)}
        return {n: br for n, br in self.branches.items() if all_branches or self.weights[n] > 0 or n in read}

    def photo_workers(self) -> int:
        """How many photos :meth:`predict` works on at once: ``workers``, else the CPUs under ONNX Runtime, else 1."""
        return self.workers if self.workers is not None else photo_workers(self.backend)

    def predict(self, images: Images, raw: bool = False, all_branches: bool = False) -> list[GroupResult]:
        """Label photos (RGB arrays, PIL images or paths; one of them is a batch of one); one result per
        photo, in order.

        Only the branches that vote are run (a weight-0 branch changes no label and costs time), a
        fallback branch only on the photos where no weighted branch speaks (:meth:`fallback_only`);
        ``all_branches`` runs and reports every branch on every photo. ``raw`` reports each branch's pooled
        probabilities before calibration (fusion still uses the calibrated ones): what calibration
        and fusion are fitted on.

        On a CPU each photo goes through the detector and the models on its own, so a photo's result
        never depends on its batch neighbours; under ONNX Runtime :meth:`photo_workers` photos are
        worked on at once, one per thread (ONNX Runtime runs its sessions concurrently and releases
        the GIL), which keeps both cores busy where one photo's small model calls cannot. On a GPU
        the batch goes through each model together.
        """
        branches = self.active_branches(all_branches)
        lazy = frozenset() if all_branches else self.fallback_only()
        photos = as_photo_list(images, self.decode_short_side(all_branches))
        if not photos:
            return []
        workers = min(self.photo_workers(), len(photos))
        if device_type(self.device) != "cpu":
            return self._predict(photos, branches, raw, lazy)
        if workers <= 1:
            return [r for ph in photos for r in self._predict([ph], branches, raw, lazy)]
        with ThreadPoolExecutor(workers, thread_name_prefix="groupmood-photo") as pool_:
            return [r for rs in pool_.map(lambda ph: self._predict([ph], branches, raw, lazy), photos) for r in rs]

    def fallback_only(self) -> frozenset[str]:
        """The fallback branches that never vote otherwise (weight 0, no fusion model): :meth:`predict` runs
        them only on the photos where no weighted branch speaks, and reports them as silent elsewhere."""
        if self.fusion_model is not None:
            return frozenset()
        regime = self.regime
        fallbacks = [*self.fallback, *(regime.fallback if regime else ())]
        return frozenset(n for n in fallbacks if self.weights[n] == 0 and not self.branches[n].is_face
                         and (regime is None or (regime.weights.get(n, 0.0) == 0 and n != regime.reads)))

    def _predict(self, photos: Sequence[Photo], branches: Mapping[str, Branch], raw: bool,
                 lazy: frozenset[str] = frozenset()) -> list[GroupResult]:
        """:meth:`predict` on decoded photos, the batch through each model together; the ``lazy`` (fallback-only)
        branches only on the photos where no branch with a weight spoke."""
        arrays = [ph.pixels for ph in photos]
        faces_per = self.detector.detect(arrays)
        counts = [len(f) for f in faces_per]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        per_branch: dict[str, np.ndarray] = {}
        crowd = np.zeros(len(arrays))
        if self.regime is not None:  # the gate and its branch read one trunk pass
            reads = branches[self.regime.reads]
            feats = reads.features(np.concatenate([reads.crops(img, []) for img in arrays]))
            per_branch[self.regime.reads] = reads.scores_from_features(feats)
            crowd = self.regime.crowd_probs(feats)
        for group in shared_trunks(branches):  # one trunk pass, each branch's own head
            lead = branches[group[0]]
            parts = [lead.crops(img, faces) for img, faces in zip(arrays, faces_per) if faces]
            feats = lead.features(np.concatenate(parts)) if parts else None
            for name in group:
                per_branch[name] = (branches[name].scores_from_features(feats) if feats is not None
                                    else np.zeros((0, len(GROUP_CLASSES))))
        for name, br in branches.items():
            if name in per_branch or name in lazy:
                continue
            if br.is_face:
                parts = [br.crops(img, faces) for img, faces in zip(arrays, faces_per) if faces]
            else:
                parts = [br.crops(img, []) for img in arrays]
            per_branch[name] = br.scores(np.concatenate(parts)) if parts else np.zeros((0, len(GROUP_CLASSES)))
        face_probs, pooled = [], []
        for i, faces in enumerate(faces_per):
            face_probs.append({n: per_branch[n][offsets[i]:offsets[i + 1]] for n, br in branches.items() if br.is_face})
            pooled.append({})
            for n, br in branches.items():
                if br.is_face:
                    pooled[i][n] = pool(face_probs[i][n], [f.area for f in faces], br.top_k)
                    if pooled[i][n].spoke and len(faces) < self.min_faces:  # abstains; the faces keep their scores
                        pooled[i][n] = Pooled.abstain()
                elif n not in lazy:
                    pooled[i][n] = Pooled(per_branch[n][i], True, ())
        for name in lazy:
            regimes = [self.weights] if name in self.fallback else []
            if self.regime is not None and name in self.regime.fallback:
                regimes.append(self.regime.weights)
            need = [i for i, p in enumerate(pooled)
                    if any(not any(r.spoke and w.get(n, 0.0) > 0 for n, r in p.items()) for w in regimes)]
            br = branches[name]
            got = dict(zip(need, br.scores(np.concatenate([br.crops(arrays[i], []) for i in need])))) if need else {}
            for i, p in enumerate(pooled):
                p[name] = Pooled(got[i], True, ()) if i in got else Pooled.abstain()
        results = []
        for i, (photo, faces) in enumerate(zip(photos, faces_per)):
            raw_pooled = {n: pooled[i][n] for n in branches}  # in branch order
            calibrated = {n: Pooled(self.branches[n].calibration.apply(p.probs), True, p.faces) if p.spoke else p
                          for n, p in raw_pooled.items()}
            fused = self._fuse(calibrated, faces, photo.pixels.shape[:2], float(crowd[i]))
            own = [f.scaled(*photo.scale) for f in faces]  # in the photo's own coordinates
            results.append(self._result((photo.height, photo.width), own, face_probs[i],
                                        raw_pooled if raw else calibrated, fused,
                                        float(crowd[i]) if self.regime is not None else None))
        return results

    def decode_short_side(self, all_branches: bool = False) -> int | None:
        """The fewest pixels on a photo's shorter side that give every model what it needs; None: all of them.

        MTCNN's smallest face is ``min_face_frac`` of the shorter side, and no input cut from a face
        is larger than the largest face input (O-Net's 48 px, a face branch's crop); the global branch
        needs its recipe's ``resize`` (256 px). So a photo decoded with ``max(256, largest face input /
        min_face_frac)`` pixels on its shorter side (960 for the shipped bundle, whose aligned 112x96
        branch does not vote) gives the smallest face every pixel its crops use. A smallest face in
        pixels (``min_face_px``) needs the full size.
        """
        cfg = self.detector.settings
        if cfg.min_face_px is not None or cfg.min_face_frac <= 0:
            return None
        branches = self.active_branches(all_branches).values()
        face_px = max([48, *(max(b.input_size) for b in branches if b.is_face)])
        need = max([face_px / cfg.min_face_frac, *(b.info.resize for b in branches if not b.is_face)])
        return int(math.ceil(need))

    def _fuse(self, pooled: Mapping[str, Pooled], faces: Sequence[Face], size: tuple[int, int],
              crowd: float = 0.0) -> Fused:
        """The bundle's fusion of one photo's calibrated branches: weighted average, the two regimes' weighted
        averages mixed by the gate's ``crowd`` probability, or fusion model.

        ``faces`` and ``size`` (height, width) are in one coordinate system (decoded pixels).
        """
        fused = fuse(pooled, self.weights, fallback=self.fallback)
        if self.regime is not None:
            return mix(fused, fuse(pooled, self.regime.weights, fallback=self.regime.fallback), crowd)
        if self.fusion_model is None:
            return fused
        fracs = [f.area / float(size[0] * size[1]) for f in faces]
        x = self.fusion_model.features({n: p.probs for n, p in pooled.items()},
                                       {n: p.spoke for n, p in pooled.items()}, len(faces), fracs)
        probs = self.fusion_model.predict_proba(x)
        i = int(np.argmax(probs))
        return Fused(GROUP_CLASSES[i], i, probs, fused.weights, fused.spoke)

    def predict_one(self, image: ImageLike) -> GroupResult:
        """Label one photo (an RGB array, a PIL image or a path) and return its result itself, not a list."""
        return self.predict([image])[0]

    def bundle_weights(self, crowd: float | None = None) -> dict[str, float]:
        """Each branch's configured weight; with a regime gate, the regimes' weights mixed by the ``crowd``
        probability."""
        if self.regime is None or crowd is None:
            return dict(self.weights)
        return {n: (1.0 - crowd) * w + crowd * self.regime.weights.get(n, 0.0) for n, w in self.weights.items()}

    def _result(self, size: tuple[int, int], faces: Sequence[Face], face_probs: Mapping[str, np.ndarray],
                pooled: Mapping[str, Pooled], fused: Fused, crowd: float | None = None) -> GroupResult:
        """One photo's result; ``size`` is its (height, width), the coordinates of ``faces``."""
        weights = self.bundle_weights(crowd)
        face_w = {n: weights[n] for n in face_probs}
        total = sum(face_w.values())
        face_w = {n: (w / total if total > 0 else 1.0 / len(face_w)) for n, w in face_w.items()}
        face_results = []
        for k, f in enumerate(faces):
            bp = {n: face_probs[n][k] for n in face_probs}
            if bp:
                probs = sum((face_w[n] * bp[n] for n in bp), np.zeros(len(GROUP_CLASSES)))
                label = GROUP_CLASSES[int(np.argmax(probs))]
            else:  # no face branch: the face is shown but not scored
                probs, label = np.full(len(GROUP_CLASSES), 1.0 / len(GROUP_CLASSES)), ABSTAIN
            face_results.append(FaceResult(np.asarray(f.box, dtype=np.float64), float(f.score),
                                           np.asarray(f.landmarks, dtype=np.float64), label, probs, bp,
                                           tuple(n for n in face_probs if k in pooled[n].faces)))
        branches = {n: BranchResult(pooled[n].probs, weights[n], fused.weights[n], pooled[n].spoke,
                                    pooled[n].faces, pooling_name(br.top_k) if br.is_face else "image", br.family)
                    for n, br in self.branches.items() if n in pooled}
        return GroupResult(fused.label, fused.probs, branches, face_results, not faces, fused.abstained,
                           int(size[1]), int(size[0]), crowd=crowd)


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


def _pooling_overrides(pooling: str | Mapping[str, str] | None,
                       branches: Mapping[str, Branch]) -> dict[str, int | None]:
    if pooling is None:
        return {}
    if isinstance(pooling, Mapping):
        unknown = sorted(set(pooling) - set(branches))
        if unknown:
            raise ConfigError(f"pooling names unknown branch(es) {', '.join(unknown)}; branches: {', '.join(branches)}")
        return {n: parse_pooling(v) for n, v in pooling.items()}
    k = parse_pooling(pooling)
    return {n: k for n, br in branches.items() if br.is_face}
