"""One model registry: ``register_model`` / ``create_model`` / ``list_models`` (timm style)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to feed a model: its family, input size (H, W), channels, normalisation.

    ``mean`` / ``std`` (per channel, 0..255 pixel units) are the model's own input normalisation;
    None means the family's (:data:`groupmood.data.transforms.NORMALIZATION`).
    """

    name: str
    family: str  # "face_aligned" | "face_nonaligned" | "global"
    input_size: tuple[int, int]
    in_chans: int
    fn: Callable[..., nn.Module] = field(repr=False, compare=False)
    description: str = ""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(family: str, input_size: tuple[int, int], in_chans: int = 3, description: str = "",
                   mean: tuple[float, ...] | None = None,
                   std: tuple[float, ...] | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model constructor under its function name (``mean`` / ``std``: its input)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, family, tuple(input_size), in_chans, fn,
                                    description or (fn.__doc__ or "").strip().split("\n")[0],
                                    None if mean is None else tuple(mean), None if std is None else tuple(std))
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the model modules registers them; done lazily so that importing groupmood is cheap.
    from . import faceapi, global_cnns, resnet48, sphereface  # noqa: F401


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a shell pattern (and family), sorted."""
    _ensure_loaded()
    return sorted(n for n, info in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (family is None or info.family == family))


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its constructor (e.g. ``num_classes``)."""
    return model_info(name).fn(**kwargs)
