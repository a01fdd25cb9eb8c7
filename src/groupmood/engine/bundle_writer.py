"""A fitted stack as a bundle: its heads exported as model files beside the YAML, the YAML written through
the typed :class:`~groupmood.pipeline.Bundle`.

The heads :mod:`groupmood.engine.group_cv` fits (a group head on a face trunk, a scene head on a
whole-image trunk) become model files: the trunk's net with the head in place of its own, fp16
safetensors (:func:`export_head_model`). An existing file with the same tensors is kept byte for byte,
so fitting again on the same evidence reproduces a shipped bundle and its sha256 exactly.

The YAML is built as a :class:`~groupmood.pipeline.Bundle` (:class:`~groupmood.pipeline.BranchSpec`
per branch, :class:`~groupmood.pipeline.FusionSpec`) and written by :meth:`Bundle.dump`, which checks
it by reading it back and writes it atomically: the bundle format is written in one place
(:mod:`groupmood.pipeline.bundle`). :func:`write_group_bundle` writes a stack's bundle;
:func:`groupmood.engine.regime_cv.write_regime_bundle` a regime bundle with the helpers here.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import weights as store
from ..errors import DatasetError
from ..fusion.calibration import Calibration
from ..fusion.regime import RegimeGate
from ..labels import GROUP_CLASSES
from ..pipeline import BranchSpec, Bundle, FusionSpec
from .group_cv import GROUP_BRANCH, SCENE_BRANCH, Stack
from .group_head import LinearHead

__all__ = ["carried_branches", "export_group_model", "export_head_model", "export_scene_model", "head_branch",
           "save_gate", "save_kept", "write_bundle", "write_group_bundle"]


# --------------------------------------------------------------------------- model files

def _same_tensors(a: Path, b: Path, metadata: bool = False) -> bool:
    """Whether two safetensors files hold the same tensors and classes (their other metadata aside, unless
    ``metadata``: then all of it).

    fp16 tensors count as the same within one fp16 step of each value: a head refitted on evidence
    collected again (float32 noise of the order of 1e-7) rounds to the same fp16 numbers or a
    neighbour, and such a refit should keep the shipped file and its sha256.
    """
    from safetensors import safe_open
    from safetensors.numpy import load_file

    def close(x: np.ndarray, y: np.ndarray) -> bool:
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.dtype != np.float16:
            return bool(np.array_equal(x, y))
        step = np.spacing(np.maximum(np.abs(x), np.abs(y))).astype(np.float32)
        return bool((np.abs(x.astype(np.float32) - y.astype(np.float32)) <= step).all())

    ta, tb = load_file(str(a)), load_file(str(b))
    with safe_open(str(a), "np") as fa, safe_open(str(b), "np") as fb:
        ma, mb = fa.metadata() or {}, fb.metadata() or {}
    same_meta = ma == mb if metadata else ma.get("classes") == mb.get("classes")
    return same_meta and ta.keys() == tb.keys() and all(close(ta[k], tb[k]) for k in ta)


def save_kept(out: str | Path, save: Callable[[Path], Path], same: Callable[[Path, Path], bool]) -> Path:
    """Write a file with ``save(path)`` at ``out`` (atomically); an existing ``out`` that ``same`` finds equal to the
    new file is kept byte for byte, so its sha256 in a shipped bundle stays."""
    out = Path(out)
    if not out.is_file():
        return save(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        new = save(Path(tmp) / out.name)
        if not same(new, out):
            os.replace(new, out)
    return out


def export_head_model(head: LinearHead, trunk_model: str | Path, out: str | Path) -> Path:
    """A net (file ``trunk_model``) with ``head`` as its group-class head, as fp16 safetensors; an existing
    ``out`` with the same tensors and classes is kept byte for byte."""
    import torch

    from ..checkpoint import load_model, save_model

    largest = float(max(np.abs(head.weight).max(), np.abs(head.bias).max()))
    if not largest < float(np.finfo(np.float16).max):
        raise DatasetError(f"the fitted head's weights reach {largest:.3g}, beyond fp16 (the model files' format): "
                           f"the features of {trunk_model} are nearly constant or tiny; check the trunk's weights")
    model, meta = load_model(trunk_model, "cpu")
    model.reset_classifier(len(GROUP_CLASSES), head="softmax")
    with torch.no_grad():
        model.head.fc.weight.copy_(torch.from_numpy(head.weight))
        model.head.fc.bias.copy_(torch.from_numpy(head.bias))
    meta = {**meta, "classes": list(GROUP_CLASSES), "metric": None, "epoch": None}
    return save_kept(out, lambda path: save_model(model.eval(), meta, path), _same_tensors)


def save_gate(gate: RegimeGate, out: str | Path) -> Path:
    """A regime gate's file; an existing ``out`` with the same tensors and metadata (in any order) is kept byte
    for byte."""
    return save_kept(out, gate.save, lambda a, b: _same_tensors(a, b, metadata=True))


def export_group_model(stack: Stack, trunk_model: str | Path, out: str | Path) -> Path:
    """The trunk's net with the fitted group head in place of its expression head, as fp16 safetensors.

    An existing ``out`` with the same tensors and classes is kept byte for byte (its sha256 stays),
    so fitting again on the same photos reproduces a shipped bundle exactly.
    """
    if stack.head is None:
        raise DatasetError("this stack has no group head to export (fitted with head=False)")
    return export_head_model(stack.head, trunk_model, out)


def export_scene_model(stack: Stack, trunk_model: str | Path, out: str | Path) -> Path:
    """The whole-image net with the fitted scene head in place of its own head, as fp16 safetensors."""
    if stack.scene_head is None:
        raise DatasetError("this stack has no scene head to export (its evidence had no whole-image features)")
    return export_head_model(stack.scene_head, trunk_model, out)


# --------------------------------------------------------------------------- the YAML

def head_branch(name: str, model: Path, **options: Any) -> BranchSpec:
    """The branch of an exported head's model file, with its sha256 and ``options`` (BranchSpec fields)."""
    return BranchSpec(name, Path(model).resolve(), store.sha256_file(model), **options)


def carried_branches(spec: Bundle, fitted: Sequence[str]) -> list[BranchSpec]:
    """The base bundle's branches other than the ``fitted`` ones, as they are (their calibration included)."""
    return [b for b in spec.branches if b.name not in fitted]


def write_bundle(out: str | Path, base: Bundle, branches: Sequence[BranchSpec], weights: Mapping[str, float],
                 calibration: Mapping[str, Calibration], chosen_on: Mapping[str, Any], *,
                 fusion: FusionSpec | None = None, fallback: Sequence[str] = (),
                 detector: Mapping[str, Any] | None = None) -> Path:
    """Write a bundle YAML at ``out`` (atomically, checked by reading it back) and return its path.

    ``calibration`` replaces the calibration of the branches it names (identity: none); branches get
    weight 0 where ``weights`` has none. The bundle keeps the base bundle's ``min_faces`` and detector
    settings, ``detector`` set over them. A ``chosen_on.fit_photos`` given as a relative path is read
    relative to ``out``'s folder.
    """
    out = Path(out).resolve()
    names = [b.name for b in branches]
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise DatasetError(f"weights for {', '.join(unknown)}, which the bundle {out} does not have "
                           f"(branches: {', '.join(names)})")
    branches = [dataclasses.replace(b, calibration=calibration[b.name]) if b.name in calibration else b
                for b in branches]
    overrides = {k: tuple(v) if k == "thresholds" else v
                 for k, v in {**base.detector_overrides(), **(detector or {})}.items()}
    chosen = dict(chosen_on)
    if isinstance(chosen.get("fit_photos"), str):
        chosen["fit_photos"] = str(out.parent / chosen["fit_photos"])
    bundle = Bundle(branches=tuple(branches),
                    weights={**{b: round(float(w), 4) for b, w in weights.items()},
                             **{n: 0.0 for n in names if n not in weights}},
                    fusion=fusion or FusionSpec(), detector=dataclasses.replace(base.detector, **overrides),
                    detector_keys=tuple(overrides), min_faces=base.min_faces, fallback=tuple(fallback),
                    chosen_on=chosen)
    return bundle.dump(out)


def write_group_bundle(stack: Stack, base: str | Path, out: str | Path, trunk: str, chosen_on: Mapping[str, Any],
                       group_model: str = "face_group.safetensors",
                       fusion_file: str = "fusion.safetensors", scene_trunk: str = "global",
                       scene_model: str = "global_scene.safetensors",
                       detector: Mapping[str, Any] | None = None) -> Path:
    """A bundle YAML at ``out``: the group branch (and the scene branch, on the whole-image branch
    ``scene_trunk``, when the stack has one), then the base bundle's other branches; the stack's
    calibration, weights (0 for the branches it left out), fallback and fusion.

    The group and scene models (and a fusion model, when chosen) are written next to the YAML; paths in
    it are relative to it, with their sha256. A branch the fit left out keeps the base bundle's
    calibration. ``detector``: detector settings over the base bundle's.
    """
    spec = Bundle.load(base)
    folder = Path(out).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    by_name = {b.name: b for b in spec.branches}
    if trunk not in by_name:
        raise DatasetError(f"the base bundle {base} has no branch {trunk!r} to carry the group head")
    branches = []
    if stack.head is not None:
        t = by_name[trunk]
        branches.append(head_branch(GROUP_BRANCH, export_group_model(stack, t.model, folder / group_model),
                                    tta_flip=t.tta_flip is not False, pooling="all", grey=True if t.grey else None))
    if stack.scene_head is not None:
        if scene_trunk not in by_name:
            raise DatasetError(f"the base bundle {base} has no branch {scene_trunk!r} to carry the scene head")
        s = by_name[scene_trunk]
        flip = None if s.tta_flip is None else bool(s.tta_flip)  # the flip its features were read with
        branches.append(head_branch(SCENE_BRANCH, export_scene_model(stack, s.model, folder / scene_model),
                                    tta_flip=flip))
    branches += carried_branches(spec, (GROUP_BRANCH, SCENE_BRANCH))
    fusion = FusionSpec()
    if stack.model is not None:
        fpath = stack.model.save(folder / fusion_file)
        fusion = FusionSpec("model", fpath.resolve(), store.sha256_file(fpath))
    return write_bundle(out, spec, branches, stack.weights, stack.calibration, chosen_on, fusion=fusion,
                        fallback=stack.fallback, detector=detector)
