"""The HTTP API's response models: what ``/v1/predict``, ``/v1/health`` and ``/v1/bundle`` answer.

They mirror :meth:`groupmood.pipeline.GroupResult.to_dict` (the record ``groupmood predict`` writes), so the
API and the command line give one record format, and ``/openapi.json`` describes it.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BranchRecord", "FaceRecord", "Health", "PhotoRecord", "PredictResponse", "Probabilities"]


class Probabilities(BaseModel):
    """Probabilities over the three group classes (they sum to 1)."""

    model_config = ConfigDict(extra="forbid")

    Negative: float
    Neutral: float
    Positive: float


class FaceRecord(BaseModel):
    """One detected face, in the photo's own pixels: box, MTCNN score, landmarks, label, each face branch's
    (uncalibrated) probabilities, the branches whose pooling used it."""

    model_config = ConfigDict(extra="forbid")

    box: list[float] = Field(min_length=4, max_length=4)
    score: float
    landmarks: list[list[float]]
    area: float
    label: str
    probs: Probabilities
    branches: dict[str, Probabilities]
    pooled_in: list[str]


class BranchRecord(BaseModel):
    """One branch on one photo: calibrated probabilities (``uncalibrated``: before calibration, where it
    changed them), configured and effective weight, whether it spoke, the faces it pooled."""

    model_config = ConfigDict(extra="forbid")

    probs: Probabilities
    weight: float
    effective_weight: float
    spoke: bool
    faces: list[int]
    pooling: str
    family: str
    uncalibrated: Probabilities | None = None


class PhotoRecord(BaseModel):
    """One photo's group label and its evidence; ``crowd`` is the regime gate's crowd probability (bundles with
    a gate only)."""

    model_config = ConfigDict(extra="forbid")

    file: str
    label: str
    probs: Probabilities
    no_face: bool
    abstained: bool
    n_faces: int
    width: int
    height: int
    crowd: float | None = None
    branches: dict[str, BranchRecord]
    faces: list[FaceRecord]


class PredictResponse(BaseModel):
    """``/v1/predict``: one record per photo sent, in order."""

    records: list[PhotoRecord]


class Health(BaseModel):
    """``/v1/health``: whether the models are loaded, versions, the bundle, the limits and how busy it is."""

    status: str
    models_loaded: bool
    device: str | None
    branches: list[str]
    bundle: str
    versions: dict[str, str]
    limits: dict[str, Any]
    in_flight: int
    receiving: int
