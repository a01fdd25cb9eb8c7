"""Bundles: the YAML that names a recognizer's model files, their calibration, the fusion and the detector.

A bundle is read once into a frozen :class:`Bundle` (checked there, naming the file and the key in every
error) and written back by :meth:`Bundle.dump`. Model paths in the YAML are relative to it::

    format: groupmood-bundle-1
    branches:
      - name: aligned
        model: aligned.safetensors      # a .safetensors export or a .pt checkpoint, or store:NAME
                                        # (a third-party net converted on first use: models.pretrained)
        sha256: 3f1c...                 # optional; checked before loading
        tta_flip: true                  # optional; default: the model's recipe
        pooling: all                    # optional; all | topK; default: the model's recipe
        grey: true                      # optional; feed a 3-channel model grey crops
      - name: nonaligned
        model: nonaligned.safetensors
        margin: 0.0                     # optional; extra margin of the square crop (fraction of side)
      - name: global
        model: global.safetensors
        calibration: {temperature: 2.4}  # optional; see groupmood.fusion.calibration
    weights: {aligned: 3.0, global: 0.5, nonaligned: 0.5}
    fusion: {kind: weighted}            # optional; or {kind: model, model: fusion.safetensors, sha256: ...}
                                        # or {kind: regime, gate: gate.safetensors, sha256: ..., reads: scene,
                                        #     crowd: {weights: {...}, fallback: [...]}}: see groupmood.fusion.regime
    detector: {thresholds: [0.6, 0.7, 0.9], factor: 0.709, min_face_frac: 0.05}   # optional
    min_faces: 2    # optional (default 1): face branches vote only on photos with at least this many faces
    fallback: [global]  # optional: branches (equal weights) that label a photo on which no branch with a
                        # positive weight spoke; without it such a photo abstains
    chosen_on:                          # free-form record of where the weights come from
      data: GAF 2.0 validation, 2068 photos
      fit_photos: fit_photos.tsv        # optional: sha256 of each fitting photo (evaluate-groups names the overlap)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..fusion.calibration import Calibration
from ..detect.cascade import CascadeSettings
from ..errors import ConfigError, WeightsError
from ..fusion import parse_pooling
from ..io import atomic_write_text
from ..labels import GROUP_CLASSES
from ..models.pretrained import converted_model, store_name

__all__ = ["BUNDLE_FORMAT", "SHIPPED_BUNDLES", "BranchSpec", "Bundle", "FusionSpec", "bundle_path",
           "default_bundle_path", "is_count"]

BUNDLE_FORMAT = "groupmood-bundle-1"

#: The bundles shipped in the package, by the name ``--bundle`` takes, and what each is for. Each bundle's
#: ``chosen_on`` says how it was fitted.
SHIPPED_BUNDLES: dict[str, str] = {"default": "bundle.yaml", "photo": "bundle_photo.yaml", "crowd": "bundle_crowd.yaml"}
SHIPPED_BUNDLE_HELP: dict[str, str] = {
    "default": "group photos and crowds: a photo regime and a crowd regime mixed by a gate",
    "photo": "the photo regime alone: faces, for photos of a few people",
    "crowd": "one fusion fitted on crowds and group photos together",
}

_BRANCH_KEYS = ("name", "model", "sha256", "tta_flip", "pooling", "margin", "grey", "calibration")
_BUNDLE_KEYS = ("format", "name", "description", "classes", "branches", "weights", "detector", "chosen_on", "fusion",
                "min_faces", "fallback")
#: Each fusion kind and the keys its ``fusion`` section may have.
_FUSION_KINDS = {"weighted": {"kind"}, "model": {"kind", "model", "sha256"},
                 "regime": {"kind", "gate", "sha256", "reads", "crowd"}}
_DETECTOR_KEYS = ("thresholds", "factor", "min_face_frac", "min_face_px")


def default_bundle_path() -> Path:
    """Where the shipped default bundle lives: ``groupmood/assets/bundle.yaml``."""
    return bundle_path(None)


def bundle_path(bundle: str | Path | None) -> Path:
    """The YAML of a bundle given as a path, as the name of a shipped bundle (:data:`SHIPPED_BUNDLES`), or None
    (the default).

    >>> bundle_path("crowd").name
    'bundle_crowd.yaml'
    """
    name = "default" if bundle is None else str(bundle)
    if name in SHIPPED_BUNDLES:
        return Path(__file__).resolve().parent.parent / "assets" / SHIPPED_BUNDLES[name]
    return Path(str(bundle))


def is_count(value: Any) -> bool:
    """Whether ``value`` is a whole number >= 1 (a bool is not): a face count, a number of workers."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class BranchSpec:
    """One branch of a bundle: its model file (absolute) and the options that override the model's recipe.

    ``None`` options take the model's stored recipe (flip, pooling, grey). ``store`` is the weight-store name
    when the YAML named ``store:NAME`` (the model is then the converted file in the cache).
    """

    name: str
    model: Path
    sha256: str | None = None
    tta_flip: bool | None = None
    pooling: str | None = None
    margin: float = 0.0
    grey: bool | None = None
    calibration: Calibration = field(default_factory=Calibration)
    store: str | None = None

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The YAML mapping of this branch; its model path relative to ``relative_to`` where it lies below it."""
        model = f"store:{self.store}" if self.store else _relative(self.model, relative_to)
        out: dict[str, Any] = {"name": self.name, "model": model}
        for key in ("sha256", "tta_flip", "pooling", "grey"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.margin:
            out["margin"] = self.margin
        if not self.calibration.is_identity:
            out["calibration"] = self.calibration.to_dict()
        return out


@dataclass(frozen=True)
class FusionSpec:
    """How a bundle fuses its calibrated branches.

    ``weighted``: the weighted average of :attr:`Bundle.weights`. ``model``: a learned fusion model
    (``file``, :class:`groupmood.fusion.model.FusionModel`). ``regime``: a gate (``file``,
    :class:`groupmood.fusion.regime.RegimeGate`) reading the trunk of branch ``reads`` mixes the bundle's
    weighted fusion (the photo regime) with ``crowd_weights`` / ``crowd_fallback`` (the crowd regime).
    """

    kind: str = "weighted"
    file: Path | None = None
    sha256: str | None = None
    reads: str | None = None
    crowd_weights: Mapping[str, float] = field(default_factory=dict)
    crowd_fallback: tuple[str, ...] = ()

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The YAML mapping of this section (files relative to ``relative_to`` where they lie below it)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "weighted":
            return out
        out["model" if self.kind == "model" else "gate"] = _relative(self.file, relative_to)
        if self.sha256:
            out["sha256"] = self.sha256
        if self.kind == "regime":
            out["reads"] = self.reads
            out["crowd"] = {"weights": dict(self.crowd_weights), "fallback": list(self.crowd_fallback)}
        return out


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: branches, fusion weights and section, detector settings, ``min_faces``, fallback.

    ``path`` is the YAML it was read from (None for one built in code); ``detector`` holds the authors'
    MTCNN settings overridden by the bundle's ``detector:`` section, ``detector_keys`` which keys it set.

    >>> bundle = Bundle.load("default")
    >>> bundle.branch("group").pooling, bundle.min_faces
    ('all', 2)
    """

    branches: tuple[BranchSpec, ...]
    weights: Mapping[str, float]
    fusion: FusionSpec = field(default_factory=FusionSpec)
    detector: CascadeSettings = field(default_factory=CascadeSettings)
    detector_keys: tuple[str, ...] = ()
    min_faces: int = 1
    fallback: tuple[str, ...] = ()
    chosen_on: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    description: str | None = None
    path: Path | None = None

    @property
    def names(self) -> list[str]:
        """The branch names, in bundle order."""
        return [b.name for b in self.branches]

    def branch(self, name: str) -> BranchSpec:
        """The branch called ``name``."""
        for b in self.branches:
            if b.name == name:
                return b
        raise ConfigError(f"{self.path or 'bundle'}: no branch {name!r}; branches: {', '.join(self.names)}")

    def detector_overrides(self) -> dict[str, Any]:
        """The detector settings the bundle sets (its ``detector:`` section), as keyword arguments."""
        return {k: getattr(self.detector, k) for k in self.detector_keys}

    @classmethod
    def load(cls, bundle: str | Path | None = None) -> Bundle:
        """Read and check a bundle YAML.

        Args:
            bundle: a path, the name of a shipped bundle (:data:`SHIPPED_BUNDLES`), or None for the default.

        Returns:
            The checked bundle, its model paths absolute. A missing file is a :class:`WeightsError`, a bad
            key or value a :class:`ConfigError`, each naming the file and the key.
        """
        p = bundle_path(bundle)
        if not p.is_file():
            raise WeightsError(f"bundle file {p} does not exist; pass --bundle with a bundle YAML or the name of a "
                               f"shipped one ({', '.join(SHIPPED_BUNDLES)}) (see groupmood.pipeline.bundle for the "
                               "format)")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
        return cls.from_dict(raw, p)

    @classmethod
    def from_dict(cls, raw: Any, path: Path) -> Bundle:
        """Check a bundle's YAML mapping; ``path`` is where it lives (relative files are read beside it, errors
        name it)."""
        p = Path(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a bundle is a mapping with 'branches' and 'weights'")
        _no_unknown(p, "bundle key", raw, _BUNDLE_KEYS)
        if raw.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
            raise ConfigError(f"{p}: bundle format {raw.get('format')!r} is not {BUNDLE_FORMAT!r}; "
                              "upgrade groupmood or rewrite the bundle")
        if raw.get("classes", list(GROUP_CLASSES)) != list(GROUP_CLASSES):
            raise ConfigError(f"{p}: classes must be {list(GROUP_CLASSES)} (the score order), got {raw.get('classes')}")
        branches = _read_branches(p, raw.get("branches"))
        names = {b.name for b in branches}
        w = raw.get("weights")
        if not isinstance(w, dict) or not w:
            raise ConfigError(f"{p}: 'weights' must map branch names to numbers, e.g. {{aligned: 3.0, global: 0.5}}")
        unknown_w = sorted(set(w) - names)
        if unknown_w:
            raise ConfigError(f"{p}: weights name unknown branch(es) {', '.join(unknown_w)}; branches: {sorted(names)}")
        det = raw.get("detector") or {}
        if not isinstance(det, dict):
            raise ConfigError(f"{p}: 'detector' must be a mapping of {', '.join(_DETECTOR_KEYS)}")
        _no_unknown(p, "detector key", det, _DETECTOR_KEYS)
        det = {k: (tuple(v) if k == "thresholds" else v) for k, v in det.items()}
        try:
            detector = CascadeSettings(**det)
        except TypeError as exc:
            raise ConfigError(f"{p}: detector: {exc}") from None
        fallback = raw.get("fallback") or []
        if not isinstance(fallback, list) or not all(isinstance(b, str) and b in names for b in fallback):
            raise ConfigError(f"{p}: fallback must be a list of branch names (the branches that label a photo on "
                              f"which no weighted branch spoke), got {fallback!r}; branches: {sorted(names)}")
        min_faces = raw.get("min_faces", 1)
        if not is_count(min_faces):
            raise ConfigError(f"{p}: min_faces must be a whole number >= 1 (faces a photo needs before the face "
                              f"branches vote), got {min_faces!r}")
        chosen_on = dict(raw.get("chosen_on") or {})
        if isinstance(chosen_on.get("fit_photos"), str):  # the list of fitting photos, beside the bundle
            chosen_on["fit_photos"] = str((p.parent / chosen_on["fit_photos"]).resolve())
        return cls(branches=branches, weights={k: _number(p, f"weights.{k}", v) for k, v in w.items()},
                   fusion=_read_fusion(p, raw.get("fusion"), names), detector=detector, detector_keys=tuple(det),
                   min_faces=min_faces, fallback=tuple(fallback), chosen_on=chosen_on, name=raw.get("name"),
                   description=raw.get("description"), path=p.resolve())

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The YAML mapping of this bundle; files relative to ``relative_to`` (default: the bundle's folder)."""
        base = relative_to if relative_to is not None else (self.path.parent if self.path else None)
        out: dict[str, Any] = {"format": BUNDLE_FORMAT}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["branches"] = [b.to_dict(base) for b in self.branches]
        out["weights"] = dict(self.weights)
        if self.detector_keys:
            out["detector"] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in self.detector_overrides().items()}
        if self.min_faces != 1:
            out["min_faces"] = self.min_faces
        if self.fallback:
            out["fallback"] = list(self.fallback)
        if self.fusion.kind != "weighted":
            out["fusion"] = self.fusion.to_dict(base)
        chosen = dict(self.chosen_on)
        if isinstance(chosen.get("fit_photos"), str):
            chosen["fit_photos"] = _relative(Path(chosen["fit_photos"]), base)
        if chosen:
            out["chosen_on"] = chosen
        return out

    def dump(self, path: str | Path) -> Path:
        """Write this bundle as YAML to ``path`` (atomically), files relative to its folder; checked by reading
        it back."""
        p = Path(path).resolve()
        text = yaml.safe_dump(self.to_dict(p.parent), sort_keys=False, allow_unicode=True)
        Bundle.from_dict(yaml.safe_load(text), p)
        atomic_write_text(p, text)
        return p


def _relative(path: Path | None, base: Path | None) -> str:
    if path is None:
        raise ConfigError("a bundle file entry has no path")
    if base is not None:
        try:
            return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _no_unknown(p: Path, what: str, mapping: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ConfigError(f"{p}: unknown {what}(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")


def _number(p: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{p}: {key} must be a number, got {value!r}")
    return float(value)


def _read_branches(p: Path, branches: Any) -> tuple[BranchSpec, ...]:
    if not isinstance(branches, list) or not branches:
        raise ConfigError(f"{p}: 'branches' must be a non-empty list of {{name, model}} entries")
    seen: set[str] = set()
    out = []
    for i, b in enumerate(branches):
        if not isinstance(b, dict) or not isinstance(b.get("name"), str) or not isinstance(b.get("model"), str):
            raise ConfigError(f"{p}: branch {i} must be a mapping with a string 'name' and 'model', got {b!r}")
        where = f"branch {b['name']!r}"
        _no_unknown(p, f"{where} key", b, _BRANCH_KEYS)
        if b["name"] in seen:
            raise ConfigError(f"{p}: branch name {b['name']!r} is used twice")
        seen.add(b["name"])
        store = store_name(b["model"])
        if store is None:
            model = (p.parent / b["model"]).resolve()
        else:
            try:
                model = Path(converted_model(store, auto_fetch=True))
            except WeightsError as exc:
                raise WeightsError(f"{p}: {where}: {exc}") from None
        pooling = b.get("pooling")
        if pooling is not None:
            parse_pooling(pooling)
        try:
            calibration = Calibration.from_dict(b.get("calibration"))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{p}: {where} calibration: {exc}") from None
        out.append(BranchSpec(b["name"], model, b.get("sha256"), b.get("tta_flip"),
                              None if pooling is None else str(pooling),
                              _number(p, f"{where} margin", b.get("margin", 0.0)), b.get("grey"), calibration, store))
    return tuple(out)


def _read_fusion(p: Path, raw: Any, branches: set[str]) -> FusionSpec:
    """A bundle's checked ``fusion`` section, its files made absolute."""
    fusion = dict(raw or {"kind": "weighted"})
    kind = fusion.get("kind", "weighted")
    if kind not in _FUSION_KINDS or set(fusion) - _FUSION_KINDS[kind]:
        raise ConfigError(f"{p}: fusion must be {{kind: weighted}}, {{kind: model, model: FILE, sha256: ...}} or "
                          "{kind: regime, gate: FILE, sha256: ..., reads: BRANCH, crowd: {weights: {...}, "
                          f"fallback: [...]}}}}, got {fusion}")
    if kind == "weighted":
        return FusionSpec()
    if kind == "model":
        if not isinstance(fusion.get("model"), str):
            raise ConfigError(f"{p}: fusion kind 'model' needs 'model: FILE' (a fusion model safetensors)")
        return FusionSpec("model", (p.parent / fusion["model"]).resolve(), fusion.get("sha256"))
    crowd = fusion.get("crowd")
    if not isinstance(fusion.get("gate"), str) or fusion.get("reads") not in branches or not isinstance(crowd, dict):
        raise ConfigError(f"{p}: fusion kind 'regime' needs 'gate: FILE', 'reads: BRANCH' (a whole-image branch "
                          f"of the bundle: {sorted(branches)}) and 'crowd: {{weights: ..., fallback: ...}}'")
    weights, fallback = crowd.get("weights"), crowd.get("fallback") or []
    if (set(crowd) - {"weights", "fallback"} or not isinstance(weights, dict) or set(weights) - branches
            or not isinstance(fallback, list) or set(fallback) - branches):
        raise ConfigError(f"{p}: fusion.crowd must be {{weights: {{BRANCH: NUMBER}}, fallback: [BRANCH]}} over the "
                          f"bundle's branches ({sorted(branches)}), got {crowd}")
    return FusionSpec("regime", (p.parent / fusion["gate"]).resolve(), fusion.get("sha256"), fusion["reads"],
                      {k: _number(p, f"fusion.crowd.weights.{k}", v) for k, v in weights.items()}, tuple(fallback))
