"""Image transforms derived from each model's input recipe (timm's ``resolve_data_config`` idea).

A model's recipe (:class:`~groupmood.models.registry.ModelInfo`: input size, channels, mean / std,
crop, resize, flip; stored once in the registry entry and in every exported weight file) is the only
source of these transforms: pass the ModelInfo, or a family name for the family's recipe
(:data:`~groupmood.models.registry.FAMILY_RECIPES`):

- ``face_aligned``: RGB 112 high x 96 wide SphereFace crops, pixels ``(x - 127.5) / 128``.
- ``face_nonaligned``: grey 48 x 48 crops, mean 0.5 / std 0.5 on [0, 1], i.e. ``(x - 127.5) / 127.5``.
- ``global``: RGB whole images, 224 x 224 crops of images whose shorter side is 256; ImageNet
  mean / std unless the model registers its own (EfficientNet-Lite: ``(x - 127) / 128``).

Face datasets are fitted to the model's size once, at load time (:func:`fit_face`), so training
works on uint8 arrays already at size. The FERPlus reference augmentation (shift 8 %, zoom 1.05,
rotation 20 degrees, skew 0.05, horizontal flip) exists twice: :class:`BatchAffine` draws one
affine per sample and warps the whole batch with one ``grid_sample`` (one batched warp instead of
one per image, on the training device), and :func:`train_transform` is the same recipe as
torchvision ``v2.RandomAffine`` + ``v2.RandomHorizontalFlip`` for one image at a time.
Normalisation is a batch operation on the device (:func:`normalize`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from ..inputs import center_crop_array
from ..models.registry import ModelInfo, family_info

__all__ = ["BatchAffine", "CenterCrop", "batch_augment", "center_crop", "eval_transform", "fit_all_faces", "fit_face",
           "global_eval_views", "input_stats", "normalize", "recipe_of", "seeded_call", "train_transform"]

Spec = ModelInfo | str


def recipe_of(spec: Spec) -> ModelInfo:
    """The input recipe of a ModelInfo (itself) or of a family name (the family's recipe)."""
    return family_info(spec) if isinstance(spec, str) else spec


def input_stats(spec: Spec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) in 0..255 units of a model's recipe (a ModelInfo, or a family name)."""
    info = recipe_of(spec)
    return tuple(info.mean), tuple(info.std)


def normalize(x: Tensor, spec: Spec) -> Tensor:
    """(B, C, H, W) pixels in 0..255 (uint8 or float) -> float32 network input.

    ``spec`` is a model's ModelInfo (its recipe's mean / std) or a family name.
    """
    info = recipe_of(spec)
    mean, std = info.mean, info.std
    if x.shape[1] != len(mean):
        raise ValueError(f"{info.name} inputs have {len(mean)} channel(s), got a batch of shape {tuple(x.shape)}")
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() - m) / s


def fit_face(img: np.ndarray, size: Sequence[int], in_chans: int,
             crop: Sequence[float] | None = None) -> np.ndarray:
    """Crop, convert and resize one face to (H, W[, C]) uint8.

    ``crop`` is an optional ``[left, top, right, bottom]`` box in fractions of the image's width and
    height (so one box fits images of any size), e.g. ``[0.07, 0, 0.93, 1]`` for the 96:112 middle
    of a square photo.

    ``size`` is (height, width), as in ``ModelInfo.input_size``; cv2 takes (width, height), and
    swapping them is the classic pitfall that transposes 112 x 96 SphereFace crops.
    """
    if crop is not None:
        h, w = img.shape[:2]
        left, top, right, bottom = (float(v) for v in crop)
        img = img[max(round(top * h), 0):round(bottom * h), max(round(left * w), 0):round(right * w)]
        if img.size == 0:
            raise ValueError(f"crop {list(crop)} leaves nothing of an image of shape {img.shape}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if in_chans == 1 and img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    elif in_chans == 3 and img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    height, width = int(size[0]), int(size[1])
    if img.shape[:2] != (height, width):
        shrink = img.shape[0] > height or img.shape[1] > width
        img = cv2.resize(np.ascontiguousarray(img), (width, height),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if in_chans == 3 and img.ndim == 2:
            img = img[:, :, None]
    return np.ascontiguousarray(img, dtype=np.uint8)


def fit_all_faces(images: np.ndarray, size: Sequence[int], in_chans: int) -> np.ndarray:
    """Faces (N, H, W[, C]) -> the model's (size, in_chans); unchanged when they already fit."""
    want = (int(size[0]), int(size[1])) + ((in_chans,) if in_chans > 1 else ())
    if images.shape[1:] == want:
        return images
    return np.stack([fit_face(img, size, in_chans).reshape(want) for img in images])


class BatchAffine:
    """The FERPlus reference augmentation, one random affine + flip per sample, on a whole batch.

    Per sample: rotation uniform in +-``degrees``, shift uniform in +-``translate`` of the width /
    height, zoom uniform in [1/``scale``, ``scale``], skew factors uniform in +-``shear``, and a
    horizontal flip with probability ``hflip``; all drawn from the given generator, so a batch's
    augmentation is a pure function of the generator's seed. Outside pixels are 0, as in torchvision.
    """

    def __init__(self, degrees: float = 20.0, translate: float = 0.08, scale: float = 1.05,
                 shear: float = 0.05, hflip: float = 0.5) -> None:
        if degrees < 0 or translate < 0 or scale < 1 or shear < 0 or not 0 <= hflip <= 1:
            raise ValueError("need degrees >= 0, translate >= 0, scale >= 1, shear >= 0 and 0 <= hflip <= 1, "
                             f"got {degrees}, {translate}, {scale}, {shear}, {hflip}")
        self.degrees, self.translate, self.scale = float(degrees), float(translate), float(scale)
        self.shear, self.hflip = float(shear), float(hflip)

    def __repr__(self) -> str:
        return (f"BatchAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
                f"shear={self.shear}, hflip={self.hflip})")

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw the parameters of ``n`` samples (CPU tensors)."""
        def u(lo: float, hi: float, *shape: int) -> Tensor:
            return lo + (hi - lo) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)

        return {
            "angle": u(-self.degrees, self.degrees),
            "translate": u(-self.translate, self.translate, 2),
            "scale": u(1.0 / self.scale, self.scale),
            "shear": u(-self.shear, self.shear, 2),
            "flip": torch.rand(n, generator=generator, dtype=torch.float64) < self.hflip,
        }

    @staticmethod
    def theta(params: Mapping[str, Tensor], height: int, width: int) -> Tensor:
        """(n, 2, 3) ``affine_grid`` matrices: output -> input in normalised coordinates.

        The forward map in pixel coordinates centred on the image is x' = R Sh S x + t; the grid
        needs its inverse, conjugated by D = diag(W/2, H/2) (``align_corners=False``).
        """
        a = params["angle"] * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        n = a.shape[0]
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        sh = torch.eye(2, dtype=a.dtype).repeat(n, 1, 1)
        sh[:, 0, 1], sh[:, 1, 0] = params["shear"][:, 0], params["shear"][:, 1]
        fwd = rot @ sh * params["scale"].view(n, 1, 1)
        d = torch.tensor([width / 2.0, height / 2.0], dtype=a.dtype)
        inv = torch.linalg.inv(fwd)
        lin = inv * d.view(1, 1, 2) / d.view(1, 2, 1)  # D^-1 A^-1 D
        shift = params["translate"] * torch.tensor([width, height], dtype=a.dtype)
        off = -(inv @ shift.unsqueeze(-1)).squeeze(-1) / d
        lin[:, :, 0] = torch.where(params["flip"].view(n, 1), -lin[:, :, 0], lin[:, :, 0])
        return torch.cat([lin, off.unsqueeze(-1)], dim=2).float()

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a (B, C, H, W) batch of 0..255 pixels; returns float32 pixels on x's device."""
        b, _, h, w = x.shape
        theta = self.theta(self.sample(b, generator), h, w).to(x.device)
        grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def batch_augment(aug: Mapping[str, Any]) -> BatchAffine | None:
    """The batch augmentation of the ``aug`` config section, or None when it is off or per-sample."""
    if not aug.get("enabled", True) or not aug.get("batched", True):
        return None
    return BatchAffine(aug["degrees"], aug["translate"], aug["scale"], aug["shear"], aug["hflip"])


def train_transform(spec: Spec, aug: Mapping[str, Any]) -> v2.Transform:
    """Per-image training transform on uint8 (C, H, W) tensors (torchvision v2), from the model's recipe.

    Faces: the FERPlus reference recipe as ``RandomAffine`` + ``RandomHorizontalFlip`` (the skew
    factor becomes a shear angle of atan(skew)). Whole images (``center`` crop): shorter side to the
    recipe's ``resize``, random crop of its input size, flip (the slides' recipe).
    """
    info = recipe_of(spec)
    if info.crop == "center":
        if aug.get("global_strong", False):  # scale and colour as well: for fine-tuning the whole trunk
            return v2.Compose([v2.Resize(info.resize, antialias=True),
                               v2.RandomResizedCrop(list(info.input_size), scale=(0.35, 1.0), antialias=True),
                               v2.RandomHorizontalFlip(),
                               v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03)])
        return v2.Compose([v2.Resize(info.resize, antialias=True), v2.RandomCrop(list(info.input_size)),
                           v2.RandomHorizontalFlip()])
    if not aug.get("enabled", True):
        return v2.Identity()
    shear = math.degrees(math.atan(float(aug["shear"])))
    return v2.Compose([
        v2.RandomAffine(degrees=float(aug["degrees"]), translate=(aug["translate"], aug["translate"]),
                        scale=(1.0 / aug["scale"], aug["scale"]), shear=(-shear, shear, -shear, shear),
                        interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomHorizontalFlip(float(aug["hflip"])),
    ])


def seeded_call(fn: Callable[[Tensor], Tensor], x: Tensor, seed: int, epoch: int, index: int) -> Tensor:
    """``fn(x)`` with torch's generator seeded by (seed, epoch, index), its state restored afterwards.

    Every dataset runs its per-image transform through this, so a sample's random crop and flip
    depend on those three numbers only, never on worker count or on where a run was resumed.
    """
    state = torch.get_rng_state()
    try:
        torch.default_generator.manual_seed(int(np.random.SeedSequence([seed, epoch, int(index)]).generate_state(1)[0]))
        return fn(x)
    finally:
        torch.set_rng_state(state)


class CenterCrop:
    """The recipe's resize and centre crop of a (3, H, W) uint8 tensor, cut by the function inference uses
    (:func:`groupmood.inputs.center_crop_array`): validation during training sees what prediction sees."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def __repr__(self) -> str:
        return f"CenterCrop(resize={self.info.resize}, size={tuple(self.info.input_size)})"

    def __call__(self, img: Tensor) -> Tensor:
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(img.shape)}")
        arr = img.permute(1, 2, 0).contiguous().numpy()
        return torch.from_numpy(center_crop_array(arr, self.info)).permute(2, 0, 1)


def eval_transform(spec: Spec) -> Callable[[Tensor], Tensor]:
    """Per-image evaluation transform: faces are already at size; whole images get the recipe's resize +
    centre crop (:class:`CenterCrop`: 256, then 224 x 224 for the global family)."""
    info = recipe_of(spec)
    if info.crop == "center":
        return CenterCrop(info)
    return v2.Identity()


def center_crop(img: np.ndarray | Tensor, spec: Spec = "global") -> Tensor:
    """The test input of a whole-image model: (3, H, W) uint8, the recipe's resize and centre crop.

    ``img`` is an (H, W, 3) uint8 RGB array (as :func:`groupmood.images.load_image` gives) or a (3, H, W)
    uint8 tensor; both are cut as inference cuts them (:func:`groupmood.inputs.center_crop_array`).
    """
    if isinstance(img, np.ndarray):
        return torch.from_numpy(center_crop_array(img, recipe_of(spec))).permute(2, 0, 1)
    return CenterCrop(recipe_of(spec))(img)


def global_eval_views(img: np.ndarray | Tensor, spec: Spec = "global") -> Tensor:
    """The authors' global test views of one image: centre crop (:func:`center_crop`) and its horizontal flip.

    Returns (2, 3, H, W) uint8 ((2, 3, 224, 224) for the global family), to be normalised and passed
    to :func:`groupmood.models.tta.average_view_logits` (logits averaged over the two).
    """
    crop = center_crop(img, spec)
    return torch.stack([crop, crop.flip(-1)])
