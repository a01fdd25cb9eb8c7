"""The model registry's entries: ``register_model`` and each model's input recipe (timm style).

Each entry holds the model's whole input recipe (timm's ``pretrained_cfg``): input size, channels,
mean / std, how the input is cut from a photo, test-time flip, default face pooling and, for
pretrained heads, the class order. :data:`FAMILY_RECIPES` is each family's recipe; a registration
states only what differs. The same recipe is written into every exported weight file
(:func:`groupmood.checkpoint.save_model`) and read back by
:func:`groupmood.models.catalog.resolve_recipe`, so the transforms of training, evaluation and
inference all derive from this one place.

This module imports no model module: the model modules import it to register themselves, and the
lookups that need every model registered (``create_model``, ``list_models``, ``model_info``) live in
:mod:`groupmood.models.catalog`, which imports them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["CROPS", "FAMILY_RECIPES", "IMAGENET_MEAN", "IMAGENET_STD", "RECIPE_KEYS", "ModelInfo", "family_info",
           "register_model", "registered"]

#: ImageNet RGB mean / std in 0..255 pixel units (torchvision's constants).
IMAGENET_MEAN: tuple[float, ...] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD: tuple[float, ...] = (0.229 * 255, 0.224 * 255, 0.225 * 255)

#: How a model's input is cut from a photo: ``aligned`` (5-point SphereFace alignment of each face),
#: ``square`` (square box crop of each face), ``center`` (whole photo: shorter side to ``resize``,
#: centre crop of ``input_size``).
CROPS = ("aligned", "square", "center")

#: The input recipe of each model family; a registration overrides what differs for its model.
FAMILY_RECIPES: dict[str, dict[str, Any]] = {
    # RGB 112 high x 96 wide SphereFace crops, (x - 127.5) / 128; flip averaged; every face pooled
    "face_aligned": {"input_size": (112, 96), "in_chans": 3, "mean": (127.5, 127.5, 127.5), "std": (128.0, 128.0, 128.0), "crop": "aligned",
                     "resize": None, "tta_flip": True, "pooling": "all", "grey": False},
    # grey 48 x 48 square crops, (x - 127.5) / 127.5; no flip; the 3 largest faces pooled (the authors')
    "face_nonaligned": {"input_size": (48, 48), "in_chans": 1, "mean": (127.5,), "std": (127.5,), "crop": "square", "resize": None, "tta_flip": False,
                        "pooling": "top3", "grey": False},
    # RGB whole photos, shorter side 256 then centre 224 x 224, ImageNet mean / std; centre crop + flip
    "global": {"input_size": (224, 224), "in_chans": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop": "center", "resize": 256, "tta_flip": True,
               "pooling": "all", "grey": False},
}

#: The recipe fields, as stored in a weight file's ``recipe`` metadata.
RECIPE_KEYS = ("family", "input_size", "in_chans", "mean", "std", "crop", "resize", "tta_flip", "pooling", "grey",
               "classes")


@dataclass(frozen=True)
class ModelInfo:
    """A registered model and its input recipe: what a caller needs to feed it.

    ``input_size`` is (height, width); ``mean`` / ``std`` are per channel in 0..255 pixel units;
    ``crop`` one of :data:`CROPS` (``resize``: the shorter side before a ``center`` crop);
    ``tta_flip`` whether test time averages the input and its mirror image; ``pooling`` the default
    face pooling (``all`` or ``topK``); ``grey`` feeds a 3-channel model grey crops (a model trained
    on grey photos); ``classes`` the output order of a pretrained head (None: set by training data).
    """

    name: str
    family: str  # "face_aligned" | "face_nonaligned" | "global"
    input_size: tuple[int, int]
    in_chans: int
    fn: Callable[..., nn.Module] | None = field(repr=False, compare=False)  # None: a family's recipe only
    description: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    crop: str = "square"
    resize: int | None = None
    tta_flip: bool = False
    pooling: str = "all"
    grey: bool = False
    classes: tuple[str, ...] | None = None

    def recipe(self, classes: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
        """The recipe as plain JSON-ready values (``classes`` replaces the entry's own)."""
        out = {k: getattr(self, k) for k in RECIPE_KEYS}
        chosen = classes or self.classes
        out["classes"] = None if chosen is None else list(chosen)
        for k in ("input_size", "mean", "std"):
            out[k] = list(out[k])
        return out

    def with_recipe(self, recipe: Mapping[str, Any], where: str = "") -> ModelInfo:
        """This entry with a stored recipe's values (a weight file's), checked; ``where`` names the file."""
        unknown = sorted(set(recipe) - set(RECIPE_KEYS))
        if unknown:
            raise ValueError(f"{where or 'recipe'}: unknown recipe key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(RECIPE_KEYS)}")
        if recipe.get("family", self.family) != self.family:
            raise ValueError(f"{where or 'recipe'}: family {recipe['family']!r} does not match model {self.name} "
                             f"({self.family})")
        values = {k: recipe[k] for k in RECIPE_KEYS if k in recipe and k != "family"}
        for k in ("input_size", "mean", "std"):
            if k in values:
                values[k] = tuple(values[k])
        if values.get("classes") is not None:
            values["classes"] = tuple(values["classes"])
        return _checked(dataclasses.replace(self, **values))


def _checked(info: ModelInfo) -> ModelInfo:
    """``info`` after checking that its recipe is consistent (channels, crop, sizes)."""
    problems = []
    if info.crop not in CROPS:
        problems.append(f"crop {info.crop!r} is not one of {', '.join(CROPS)}")
    if len(info.mean) != info.in_chans or len(info.std) != info.in_chans:
        problems.append(f"mean / std need {info.in_chans} value(s), got {info.mean} / {info.std}")
    if info.crop == "center" and not info.resize:
        problems.append("a centre crop needs 'resize' (the shorter side before cropping)")
    if info.crop == "square" and info.input_size[0] != info.input_size[1]:
        problems.append(f"square crops need a square input, got {info.input_size}")
    if info.pooling != "all" and not (info.pooling.startswith("top") and info.pooling[3:].isdigit()):
        problems.append(f"pooling {info.pooling!r} is not 'all' or 'topK'")
    if problems:
        raise ValueError(f"model {info.name}: " + "; ".join(problems))
    return info


_REGISTRY: dict[str, ModelInfo] = {}


def family_info(family: str) -> ModelInfo:
    """A family's recipe as a ModelInfo without a model (``name`` is the family).

    Args:
        family: a key of :data:`FAMILY_RECIPES`.

    Returns:
        The :class:`ModelInfo`.

    >>> info = family_info("global")
    >>> info.input_size, info.resize, info.crop
    ((224, 224), 256, 'center')
    """
    try:
        values = FAMILY_RECIPES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILY_RECIPES)}") from None
    info = ModelInfo(family, family, tuple(values["input_size"]), values["in_chans"], None)
    return info.with_recipe({k: v for k, v in values.items() if k not in ("input_size", "in_chans")}, family)


def register_model(family: str, input_size: tuple[int, int] | None = None, in_chans: int | None = None,
                   description: str = "", **recipe: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model constructor under its function name.

    Args:
        family: the model family (a key of :data:`FAMILY_RECIPES`).
        input_size: (height, width), when it differs from the family's.
        in_chans: input channels, when they differ from the family's.
        description: one line; the constructor's first docstring line by default.
        **recipe: other fields that differ from the family's: ``mean``, ``std``, ``crop``,
            ``resize``, ``tta_flip``, ``pooling``, ``grey``, ``classes``.

    Returns:
        The decorator; it returns the constructor unchanged.
    """
    if family not in FAMILY_RECIPES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILY_RECIPES)}")
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(RECIPE_KEYS)}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        values = {**FAMILY_RECIPES[family], **recipe}
        if input_size is not None:
            values["input_size"] = input_size
        if in_chans is not None:
            values["in_chans"] = in_chans
        _REGISTRY[name] = dataclasses.replace(family_info(family), name=name, fn=fn,
                                              description=description or (fn.__doc__ or "").strip().split("\n")[0])
        _REGISTRY[name] = _REGISTRY[name].with_recipe(values, name)
        return fn

    return deco


def registered() -> Mapping[str, ModelInfo]:
    """The entries registered so far, read-only: those of the model modules imported until now."""
    return MappingProxyType(_REGISTRY)
