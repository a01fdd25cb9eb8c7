"""groupmood: group-level emotion (Positive / Neutral / Negative) from photos.

The public API is imported lazily, so ``import groupmood`` is cheap and has no side effects:

    from groupmood import GroupEmotionRecognizer, FaceDetector, create_model
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "GroupEmotionRecognizer": "groupmood.pipeline",
    "GroupResult": "groupmood.pipeline",
    "FaceDetector": "groupmood.detect",
    "Face": "groupmood.detect",
    "create_model": "groupmood.models",
    "list_models": "groupmood.models",
    "load_image": "groupmood.images",
    "align_faces": "groupmood.align",
    "square_crops": "groupmood.align",
    "GROUP_CLASSES": "groupmood.labels",
    "sample_path": "groupmood.samples",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'groupmood' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
