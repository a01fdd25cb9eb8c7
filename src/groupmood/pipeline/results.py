"""What :meth:`GroupEmotionRecognizer.predict` returns: frozen, typed records of one photo and its evidence.

Every probability vector is over :data:`groupmood.labels.GROUP_CLASSES` (Negative, Neutral, Positive).
A face's probabilities are what each face branch's model says about that face (uncalibrated); a branch's
are its faces pooled and then calibrated (``uncalibrated`` keeps them before calibration), which is
why a branch can be surer than any of its faces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..detect import Face, box_area
from ..labels import GROUP_CLASSES

__all__ = ["BranchResult", "FaceResult", "GroupResult"]


def _probs_dict(p: np.ndarray, ndigits: int) -> dict[str, float]:
    return {c: round(float(v), ndigits) for c, v in zip(GROUP_CLASSES, p)}


@dataclass(frozen=True)
class FaceResult:
    """One detected face (in the photo's own pixel coordinates), its face-level label and each face branch's
    probabilities.

    ``probs`` is the mean of the face branches' (uncalibrated) probabilities weighted by their fusion
    weights; ``pooled`` names the branches whose pooling used this face.

    >>> face = Face(np.array([10.0, 20.0, 50.0, 70.0]), 0.99, np.zeros((5, 2)))
    >>> FaceResult(face, "Neutral", np.array([0.2, 0.5, 0.3]), {}, ()).to_dict()["area"]
    2000.0
    """

    face: Face
    label: str
    probs: np.ndarray
    branch_probs: dict[str, np.ndarray]
    pooled: tuple[str, ...]

    @property
    def box(self) -> np.ndarray:
        """(x1, y1, x2, y2) in pixels."""
        return self.face.box

    @property
    def score(self) -> float:
        """MTCNN's face score."""
        return float(self.face.score)

    @property
    def landmarks(self) -> np.ndarray:
        """(5, 2) landmarks (eyes, nose, mouth corners) in pixels."""
        return self.face.landmarks

    @property
    def area(self) -> float:
        """The box's area in pixels."""
        return box_area(np.asarray(self.face.box, dtype=np.float64))

    @property
    def probs_by_class(self) -> dict[str, float]:
        """This face's probabilities named by group class."""
        return dict(zip(GROUP_CLASSES, map(float, self.probs)))

    def to_dict(self, ndigits: int = 4) -> dict[str, Any]:
        return {
            **self.face.to_dict(),
            "area": round(self.area, 1),
            "label": self.label,
            "probs": _probs_dict(self.probs, ndigits),
            "branches": {b: _probs_dict(p, ndigits) for b, p in self.branch_probs.items()},
            "pooled_in": list(self.pooled),
        }


@dataclass(frozen=True)
class BranchResult:
    """One branch on one photo: its pooled and calibrated probabilities, configured and effective weight,
    whether it spoke, the faces it pooled; ``uncalibrated`` is the pooled probabilities before calibration
    (None where the branch was not calibrated)."""

    probs: np.ndarray
    weight: float
    effective_weight: float
    spoke: bool
    faces: tuple[int, ...]
    pooling: str
    family: str
    uncalibrated: np.ndarray | None = None

    @property
    def before_calibration(self) -> np.ndarray:
        """The pooled probabilities before calibration: what calibration and fusion are fitted on."""
        return self.probs if self.uncalibrated is None else self.uncalibrated

    def to_dict(self, ndigits: int = 4) -> dict[str, Any]:
        out = {"probs": _probs_dict(self.probs, ndigits), "weight": round(self.weight, ndigits),
               "effective_weight": round(self.effective_weight, ndigits), "spoke": self.spoke,
               "faces": list(self.faces), "pooling": self.pooling, "family": self.family}
        if self.uncalibrated is not None:
            out["uncalibrated"] = _probs_dict(self.uncalibrated, ndigits)
        return out


@dataclass(frozen=True)
class GroupResult:
    """The group decision for one photo and the evidence behind it.

    ``no_face`` is True when the detector found no face (the face branches then abstain);
    ``abstained`` is True when no branch spoke at all (label :data:`groupmood.fusion.ABSTAIN`).
    ``crowd`` is the regime gate's probability that the photo is a crowd (None: the bundle has no gate),
    which mixed the photo and crowd fusions (:mod:`groupmood.fusion.regime`).

    >>> scene = BranchResult(np.array([0.1, 0.2, 0.7]), 1.0, 1.0, True, (), "image", "global")
    >>> result = GroupResult("Positive", scene.probs, {"scene": scene}, [], True, False, 640, 480)
    >>> result.probs_by_class["Positive"], result.to_dict()["branches"]["scene"]["spoke"]
    (0.7, True)
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
