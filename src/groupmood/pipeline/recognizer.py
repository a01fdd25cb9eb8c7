"""GroupEmotionRecognizer: photos in, a group label (Negative / Neutral / Positive) with its evidence out.

The whole system of Tan et al. (EmotiW 2017) in one object, one photo in a straight line:

1. **detect**: MTCNN finds the faces (:class:`groupmood.detect.FaceDetector`);
2. **score**: each whole-image branch scores the photo (the regime gate reads the same trunk pass), each
   face branch its faces (aligned 112x96 crops or square 48x48 ones; face branches on one trunk share
   one pass, :func:`~groupmood.pipeline.branch.shared_trunks`);
3. **pool**: each face branch's face scores become one vector per photo (all faces or the k largest;
   fewer than ``min_faces`` faces: the face branch abstains), and each branch is calibrated;
4. **fuse**: the bundle's :class:`~groupmood.fusion.plan.FusionPlan` gives the label, and decides where
   the whole-image fallback is needed (it runs only there).

On a GPU a batch of photos goes through each model together; on a CPU each photo goes through on its
own (its result never depends on its batch neighbours), under ONNX Runtime one photo per core at once.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import weights as weight_store
from ..detect import Face, FaceDetector
from ..detect.cascade import ONET_SIZE
from ..detect.detector import ImageLike, Images, as_photo_list
from ..errors import ConfigError, WeightsError
from ..fusion import ABSTAIN, Fused, Pooled, parse_pooling, pool, pooling_name
from ..fusion.model import FusionModel
from ..fusion.plan import FusionPlan
from ..fusion.regime import RegimeGate
from ..images import Photo
from ..labels import GROUP_CLASSES
from ..runtime.session import device_type, photo_workers, resolve_backend
from .branch import Branch, shared_trunks
from .bundle import Bundle, BranchSpec, default_bundle_path, is_count
from .results import BranchResult, FaceResult, GroupResult

__all__ = ["GroupEmotionRecognizer"]

_NO_SCORES = np.zeros((0, len(GROUP_CLASSES)))


class GroupEmotionRecognizer:
    """Detector + branches + fusion: ``predict(photos) -> list[GroupResult]``.

    Args:
        detector: the face detector.
        branches: the models by name, in the order records list them.
        weights: non-negative fusion weight per branch; a branch left out has weight 0 (it is run and
            reported with ``all_branches`` but does not vote).
        pooling: overrides the face branches' own pooling: ``"all"``, ``"top3"``, or branch -> pooling.
        min_faces: the face branches vote only on photos with at least this many faces (one face is not a
            group: the whole-image branches decide).
        fallback: branches (equal weights) that label a photo on which no branch with a weight spoke.
        fusion_model, regime: a learned fusion or a regime gate instead of the plain weighted average.
        workers: photos worked on at once (default: :meth:`photo_workers`).

    >>> from groupmood import sample_path
    >>> rec = GroupEmotionRecognizer.default()
    >>> result = rec.predict_one(sample_path("group"))
    >>> result.label, len(result.faces)
    ('Positive', 5)
    """

    def __init__(self, detector: FaceDetector, branches: Mapping[str, Branch], weights: Mapping[str, float],
                 pooling: str | Mapping[str, str] | None = None, device: Any = "cpu",
                 chosen_on: Mapping[str, Any] | None = None, fusion_model: FusionModel | None = None,
                 min_faces: int = 1, workers: int | None = None, fallback: Sequence[str] = (),
                 regime: RegimeGate | None = None, unloaded: Mapping[str, Callable[[], Branch]] | None = None) -> None:
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
        #: branches of the bundle not loaded yet (:meth:`from_bundle` with ``load="voting"``): loaded by
        #: :meth:`active_branches` when asked for
        self._unloaded = {n: load for n, load in (unloaded or {}).items() if n not in self.branches}
        self._order = [*self.branches, *self._unloaded]
        self._lock = threading.Lock()
        self.fusion = FusionPlan(weights, tuple(fallback), regime, fusion_model, tuple(self._order))
        self.chosen_on = dict(chosen_on or {})
        if not is_count(min_faces):
            raise ConfigError(f"min_faces must be a whole number >= 1, got {min_faces!r}")
        self.min_faces = min_faces
        if workers is not None and not is_count(workers):
            raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")
        self.workers = workers
        if regime is not None:
            if self.branches[regime.reads].is_face:
                raise ConfigError(f"the regime gate reads branch {regime.reads!r}, a face branch; it reads a "
                                  "whole-image branch's trunk")
            self.branches = _on_gate_trunk(self.branches, regime.reads)

    def __repr__(self) -> str:
        return f"GroupEmotionRecognizer(branches={self.branches}, weights={self.weights}, device={self.device})"

    @property
    def weights(self) -> dict[str, float]:
        """The photo regime's fusion weight of each branch."""
        return dict(self.fusion.weights)

    @property
    def fallback(self) -> tuple[str, ...]:
        return self.fusion.fallback

    @property
    def regime(self) -> RegimeGate | None:
        return self.fusion.regime

    @property
    def fusion_model(self) -> FusionModel | None:
        return self.fusion.model

    @classmethod
    def from_bundle(cls, bundle: str | Path | Bundle, device: Any = "cpu", detector: FaceDetector | None = None,
                    weights: Mapping[str, float] | None = None, pooling: str | Mapping[str, str] | None = None,
                    backend: str = "torch", workers: int | None = None, load: str = "all") -> GroupEmotionRecognizer:
        """The recognizer of a bundle (a :class:`Bundle`, a YAML path or a shipped bundle's name).

        Args:
            detector: default: MTCNN with the bundle's settings (weights fetched once).
            weights: other fusion weights (the bundle's fusion model or regime gate is then not used).
            backend: ``onnxruntime`` (or ``auto`` on a CPU) runs every model from the ONNX cache and, once the
                cache holds them (``groupmood export --format onnx``, or the first such run, which exports
                them), never imports PyTorch.
            load: ``all`` branches, or ``voting``: only those the fusion reads; the others load when
                :meth:`predict` is asked for ``all_branches``.
        """
        if load not in ("all", "voting"):
            raise ValueError(f"load must be 'all' or 'voting', got {load!r}")
        spec = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        backend = resolve_backend(backend, device)
        fusion_model = regime = None
        if weights is None and spec.fusion.file is not None and spec.fusion.sha256:
            weight_store.verify(spec.fusion.file, spec.fusion.sha256)
        if weights is None and spec.fusion.kind == "model" and spec.fusion.file is not None:
            fusion_model = FusionModel.load(spec.fusion.file)
        if weights is None and spec.fusion.kind == "regime" and spec.fusion.file is not None:
            regime = RegimeGate.load(spec.fusion.file, spec.fusion.crowd_weights, spec.fusion.crowd_fallback,
                                     reads=str(spec.fusion.reads))
        weights = dict(spec.weights) if weights is None else dict(weights)
        plan = FusionPlan(weights, spec.fallback, regime, fusion_model, tuple(spec.names))
        wanted = [b for b in spec.branches if load == "all" or b.name in plan.reads()]
        branches = _load_branches(wanted, device, backend, regime)
        if detector is None:
            detector = FaceDetector.from_pretrained(device=device, auto_fetch=True, backend=backend,
                                                    **spec.detector_overrides())
        unloaded = {b.name: partial(_torch_branch, b, device) for b in spec.branches if b.name not in branches}
        rec = cls(detector, branches, weights, pooling, device, spec.chosen_on, fusion_model, spec.min_faces,
                  workers, spec.fallback, regime, unloaded)
        rec._order = spec.names
        return rec.with_backend(backend)

    @classmethod
    def default(cls, device: Any = "cpu", backend: str = "auto", **kwargs: Any) -> GroupEmotionRecognizer:
        """The shipped bundle (``groupmood/assets/bundle.yaml``), run as ``groupmood predict`` runs it: ``backend``
        ``auto`` is ONNX Runtime on a CPU and PyTorch on a GPU. Other keyword arguments go to :meth:`from_bundle`."""
        path = default_bundle_path()
        if not path.is_file():
            raise WeightsError(f"the default bundle {path} is missing (this install ships no trained models); "
                               "pass a bundle YAML with --bundle / from_bundle(path)")
        return cls.from_bundle(path, device, backend=backend, **kwargs)

    def _with(self, detector: FaceDetector, branches: Mapping[str, Branch], weights: Mapping[str, float] | None = None,
              pooling: str | Mapping[str, str] | None = None) -> GroupEmotionRecognizer:
        """A recognizer on ``detector`` and ``branches`` with this one's settings; other ``weights`` drop the
        fusion model and the regime gate."""
        same = weights is None
        rec = GroupEmotionRecognizer(detector, branches, self.weights if weights is None else weights, pooling, self.device,
                                     self.chosen_on, self.fusion_model if same else None, self.min_faces, self.workers,
                                     self.fallback, self.regime if same else None, self._unloaded)
        rec._order = self._order
        return rec

    def with_fusion(self, weights: Mapping[str, float] | None = None,
                    pooling: str | Mapping[str, str] | None = None) -> GroupEmotionRecognizer:
        """A recognizer sharing this one's models with other fusion weights and / or pooling."""
        if weights is not None:
            self._load(set(weights))
        return self._with(self.detector, self.branches, weights, pooling)

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
        detector = (self.detector if self.detector.backend == backend
                    else self.detector.with_backend(backend, parity_photos))
        return self._with(detector, self._branches_on(backend, self.branches, parity_photos))

    def _branches_on(self, backend: str, branches: Mapping[str, Branch],
                     parity_photos: Callable[[], list[np.ndarray]] | None = None) -> dict[str, Branch]:
        """``branches`` run by ``backend``; an export is checked on the faces PyTorch's MTCNN finds on
        ``parity_photos``."""
        found: list[tuple[np.ndarray, list[Face]]] = []

        def photos_faces() -> list[tuple[np.ndarray, list[Face]]]:
            if not found:
                from ..runtime.export import parity_photos as default_photos

                photos = (parity_photos or default_photos)()
                # PyTorch MTCNN with the authors' settings: the faces do not depend on a bundle's thresholds
                probe = FaceDetector(*self.detector.torch_nets(), device=self.device)
                found.extend(zip(photos, probe.detect(photos)))
            return found

        def parity(br: Branch) -> Callable[[], list[Any]]:
            return lambda: br.parity_inputs(photos_faces())

        return {n: br if br.backend == backend else br.with_backend(backend, parity(br)) for n, br in branches.items()}

    def _load(self, names: set[str]) -> None:
        """Load the branches among ``names`` that :meth:`from_bundle` left unloaded, in bundle order."""
        with self._lock:
            todo = [n for n in self._order if n in names and n in self._unloaded]
            if not todo:
                return
            loaded = self._branches_on(self.backend, {n: self._unloaded[n]() for n in todo})
            for n in todo:
                del self._unloaded[n]
            merged = {**self.branches, **loaded}
            self.branches = {n: merged[n] for n in self._order if n in merged}

    def active_branches(self, all_branches: bool = False) -> dict[str, Branch]:
        """The branches that vote (weight > 0, a fallback, read by the gate or the fusion model); every branch with
        ``all_branches`` (those not loaded yet are loaded now)."""
        if all_branches:
            self._load(set(self._unloaded))
        read = self.fusion.reads()
        return {n: br for n, br in self.branches.items() if all_branches or n in read}

    def photo_workers(self) -> int:
        """How many photos :meth:`predict` works on at once: ``workers``, else the CPUs under ONNX Runtime, else 1."""
        return self.workers if self.workers is not None else photo_workers(self.backend)

    def predict(self, images: Images, all_branches: bool = False) -> list[GroupResult]:
        """Label photos (RGB arrays, PIL images or paths; one of them is a batch of one); one result per
        photo, in order.

        Only the branches that vote are run (a weight-0 branch changes no label and costs time), a
        fallback branch only on the photos where the fusion needs it (:meth:`FusionPlan.needs`).

        On a CPU each photo goes through the detector and the models on its own, so a photo's result
        never depends on its batch neighbours; under ONNX Runtime :meth:`photo_workers` photos are
        worked on at once, one per thread (ONNX Runtime runs its sessions concurrently and releases
        the GIL). On a GPU the batch goes through each model together.

        Args:
            images: the photos.
            all_branches: run and report every branch on every photo, weight-0 ones included.

        Returns:
            One :class:`GroupResult` per photo, in order.
        """
        branches = self.active_branches(all_branches)
        fallback_only = frozenset() if all_branches else self.fallback_only()
        photos = as_photo_list(images, self.decode_short_side(all_branches))
        if not photos:
            return []
        workers = min(self.photo_workers(), len(photos))
        if device_type(self.device) != "cpu":
            return self._predict(photos, branches, fallback_only)
        if workers <= 1:
            return [r for ph in photos for r in self._predict([ph], branches, fallback_only)]
        with ThreadPoolExecutor(workers, thread_name_prefix="groupmood-photo") as threads:
            return [r for rs in threads.map(lambda ph: self._predict([ph], branches, fallback_only), photos)
                    for r in rs]

    def fallback_only(self) -> frozenset[str]:
        """The whole-image fallback branches that vote nowhere else: :meth:`predict` runs them only on the photos
        where the fusion needs them (:meth:`FusionPlan.fallback_only`)."""
        return self.fusion.fallback_only([n for n, br in self.branches.items() if not br.is_face])

    def predict_one(self, image: ImageLike) -> GroupResult:
        """Label one photo (an RGB array, a PIL image or a path) and return its result itself, not a list."""
        return self.predict([image])[0]

    def _predict(self, photos: Sequence[Photo], branches: Mapping[str, Branch],
                 fallback_only: frozenset[str]) -> list[GroupResult]:
        """:meth:`predict` on decoded photos, the batch through each model together: detect, score, pool, fuse."""
        arrays = [ph.pixels for ph in photos]
        faces_per = self.detector.detect(arrays)
        crowd, image_scores, ready = self._score_images(arrays, branches, fallback_only)
        face_scores = self._score_faces(arrays, faces_per, branches)
        pooled = [self._pool(faces, {n: s[i] for n, s in face_scores.items()}, {n: s[i] for n, s in image_scores.items()})
                  for i, faces in enumerate(faces_per)]
        self._run_fallbacks(arrays, pooled, branches, fallback_only, ready)
        results = []
        for i, (photo, faces) in enumerate(zip(photos, faces_per)):
            calibrated = {n: Pooled(self.branches[n].calibration.apply(p.probs), True, p.faces) if p.spoke else p
                          for n, p in pooled[i].items()}
            area = float(arrays[i].shape[0] * arrays[i].shape[1])
            fused = self.fusion.fuse(calibrated, [f.area / area for f in faces], 0.0 if crowd is None else float(crowd[i]))
            results.append(self._result(photo, faces, {n: s[i] for n, s in face_scores.items()}, pooled[i], calibrated,
                                        fused, None if crowd is None else float(crowd[i])))
        return results

    def _score_images(self, arrays: Sequence[np.ndarray], branches: Mapping[str, Branch], fallback_only: frozenset[str]
                      ) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The regime gate's crowd probability per photo (None without a gate), each whole-image branch's (N, 3)
        scores, and those of the fallback-only branches that share a trunk pass (used where the fusion needs
        them). Whole-image branches on one trunk share one pass, the gate's branch among them."""
        image = {n: br for n, br in branches.items() if not br.is_face}
        groups = shared_trunks(image)
        if self.regime is not None and not any(self.regime.reads in g for g in groups):
            groups.append([self.regime.reads])
        scores: dict[str, np.ndarray] = {}
        ready: dict[str, np.ndarray] = {}
        crowd = None
        for group in groups:
            lead = image[group[0]]
            feats = lead.features(np.concatenate([lead.crops(img, []) for img in arrays]))
            if self.regime is not None and self.regime.reads in group:
                crowd = self.regime.crowd_probs(feats)
            for name in group:
                (ready if name in fallback_only else scores)[name] = image[name].scores_from_features(feats)
        for name, br in image.items():
            if name not in scores and name not in ready and name not in fallback_only:
                scores[name] = br.scores(np.concatenate([br.crops(img, []) for img in arrays]))
        return crowd, scores, ready

    def _score_faces(self, arrays: Sequence[np.ndarray], faces_per: Sequence[Sequence[Face]],
                     branches: Mapping[str, Branch]) -> dict[str, list[np.ndarray]]:
        """Each face branch's (faces, 3) scores per photo; branches on one trunk share one pass."""
        flat: dict[str, np.ndarray] = {}
        with_faces = [(img, faces) for img, faces in zip(arrays, faces_per) if faces]
        for group in shared_trunks({n: br for n, br in branches.items() if br.is_face}):
            lead = branches[group[0]]
            feats = lead.features(np.concatenate([lead.crops(img, f) for img, f in with_faces])) if with_faces else None
            for name in group:
                flat[name] = branches[name].scores_from_features(feats) if feats is not None else _NO_SCORES
        for name, br in branches.items():
            if br.is_face and name not in flat:
                flat[name] = br.scores(np.concatenate([br.crops(img, f) for img, f in with_faces])) if with_faces \
                    else _NO_SCORES
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in faces_per])]).astype(int)
        return {n: [flat[n][offsets[i]:offsets[i + 1]] for i in range(len(faces_per))]
                for n in branches if n in flat}  # in branch order

    def _pool(self, faces: Sequence[Face], face_scores: Mapping[str, np.ndarray],
              image_scores: Mapping[str, np.ndarray]) -> dict[str, Pooled]:
        """One photo's branches pooled, in branch order, before calibration; a face branch abstains on a photo with
        fewer than ``min_faces`` faces (the faces keep their scores)."""
        out: dict[str, Pooled] = {}
        areas = [f.area for f in faces]
        for name, br in self.branches.items():
            if name in face_scores:
                p = pool(face_scores[name], areas, br.top_k)
                out[name] = Pooled.abstain() if p.spoke and len(faces) < self.min_faces else p
            elif name in image_scores:
                out[name] = Pooled(image_scores[name], True, ())
        return out

    def _run_fallbacks(self, arrays: Sequence[np.ndarray], pooled: list[dict[str, Pooled]],
                       branches: Mapping[str, Branch], fallback_only: frozenset[str],
                       ready: Mapping[str, np.ndarray]) -> None:
        """Score each fallback-only branch on the photos where the fusion needs it (or take its scores from a
        shared trunk pass, ``ready``); it abstains on the others."""
        for name in (n for n in branches if n in fallback_only):
            need = [i for i, p in enumerate(pooled) if self.fusion.needs(name, p)]
            br = branches[name]
            if name in ready:
                scores = ready[name][need]
            else:
                scores = br.scores(np.concatenate([br.crops(arrays[i], []) for i in need])) if need else _NO_SCORES
            by_photo = dict(zip(need, scores))
            for i, p in enumerate(pooled):
                p[name] = Pooled(by_photo[i], True, ()) if i in by_photo else Pooled.abstain()
        if fallback_only:
            for i, p in enumerate(pooled):  # back in branch order
                pooled[i] = {n: p[n] for n in self.branches if n in p}

    def decode_short_side(self, all_branches: bool = False) -> int | None:
        """The fewest pixels on a photo's shorter side that give every model what it needs; None: all of them.

        MTCNN's smallest face is ``min_face_frac`` of the shorter side, and no input cut from a face
        is larger than the largest face input (O-Net's 48 px, a face branch's crop); the global branch
        needs its recipe's ``resize``. So a photo decoded with ``max(resize, largest face input /
        min_face_frac)`` pixels on its shorter side gives the smallest face every pixel its crops use. A
        smallest face in pixels (``min_face_px``) needs the full size.
        """
        cfg = self.detector.settings
        if cfg.min_face_px is not None or cfg.min_face_frac <= 0:
            return None
        branches = self.active_branches(all_branches).values()
        face_px = max([ONET_SIZE, *(max(b.input_size) for b in branches if b.is_face)])
        need = max([face_px / cfg.min_face_frac, *(b.info.resize or 0 for b in branches if not b.is_face)])
        return int(math.ceil(need))

    def _result(self, photo: Photo, faces: Sequence[Face], face_scores: Mapping[str, np.ndarray],
                pooled: Mapping[str, Pooled], calibrated: Mapping[str, Pooled], fused: Fused,
                crowd: float | None) -> GroupResult:
        """One photo's result, its faces in the photo's own coordinates; branch probabilities calibrated."""
        weights = self.fusion.weights_at(crowd)
        face_w = {n: weights[n] for n in face_scores}
        total = sum(face_w.values())
        face_w = {n: (w / total if total > 0 else 1.0 / len(face_w)) for n, w in face_w.items()}
        face_results = []
        for k, f in enumerate(faces):
            bp = {n: face_scores[n][k] for n in face_scores}
            if bp:
                probs = sum((face_w[n] * bp[n] for n in bp), np.zeros(len(GROUP_CLASSES)))
                label = GROUP_CLASSES[int(np.argmax(probs))]
            else:  # no face branch: the face is shown but not scored
                probs, label = np.full(len(GROUP_CLASSES), 1.0 / len(GROUP_CLASSES)), ABSTAIN
            face_results.append(FaceResult(f.scaled(*photo.scale), label, probs, bp,
                                           tuple(n for n in face_scores if k in pooled[n].faces)))
        branches = {}
        for n, p in calibrated.items():
            br = self.branches[n]
            branches[n] = BranchResult(p.probs, weights[n], fused.weights[n], p.spoke, p.faces,
                                       pooling_name(br.top_k) if br.is_face else "image", br.family,
                                       None if br.calibration.is_identity or not p.spoke else pooled[n].probs)
        return GroupResult(fused.label, fused.probs, branches, face_results, not faces, fused.abstained,
                           int(photo.width), int(photo.height), crowd=crowd)


def _on_gate_trunk(branches: Mapping[str, Branch], reads: str) -> dict[str, Branch]:
    """``branches`` with the gate's branch ``reads`` and the whole-image branches on its trunk read apart
    (:meth:`Branch.with_trunk`): one trunk pass serves the gate and all of them."""
    out = dict(branches)
    out[reads] = out[reads].with_trunk()
    for name, br in out.items():
        if not br.is_face and name != reads:
            other = br.with_trunk(required=False)
            if other.share_key() is not None and other.share_key() == out[reads].share_key():
                out[name] = other
    return out


def _torch_branch(spec: BranchSpec, device: Any) -> Branch:
    """A bundle branch from its model file (PyTorch): how a branch left unloaded is loaded when asked for."""
    branch = Branch.from_spec(spec, device, "torch")
    if branch is None:
        raise WeightsError(f"{spec.model}: branch {spec.name!r} could not be loaded")
    return branch


def _load_branches(specs: Sequence[BranchSpec], device: Any, backend: str,
                   regime: RegimeGate | None) -> dict[str, Branch]:
    """The bundle's branches: from the ONNX cache under ``onnxruntime`` when every one (and every shared trunk)
    is there, else from their files (:meth:`GroupEmotionRecognizer.with_backend` then exports them)."""
    if backend == "onnxruntime":
        cached = {b.name: Branch.from_spec(b, device, backend) for b in specs}
        if all(br is not None for br in cached.values()):
            branches = {n: br for n, br in cached.items() if br is not None}
            shared = [branches[n] for group in shared_trunks(branches) for n in group]
            if regime is not None and regime.reads in branches:
                branches = _on_gate_trunk(branches, regime.reads)
                shared += [br for br in branches.values() if not br.is_face and br.trunk_sha256 is not None]
            if all(br.features_from_cache() for br in shared):
                return branches
    return {b.name: _torch_branch(b, device) for b in specs}


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
