"""Model inputs cut from a photo at test time, in numpy only (no PyTorch): what inference feeds each branch.

Face crops are :mod:`groupmood.align`'s. A whole-image model gets the photo with its shorter side
resized to the recipe's ``resize`` (antialiased bilinear, PIL's: torchvision's
``Resize(antialias=True)`` on uint8 is the same filter and agrees within one grey level on under
1 % of the pixels) and the centre ``input_size`` cut out, as torchvision's ``CenterCrop`` cuts it.
Normalisation is ``(x - mean) / std`` per channel in float32, the recipe's mean and std in 0..255
units, as :func:`groupmood.data.transforms.normalize` computes it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .models.registry import ModelInfo

__all__ = ["MAX_RESIZED_PIXELS", "center_crop_array", "normalize_array", "resized_size"]

#: Above this many pixels in the resized photo, only the centre crop is resampled (see :func:`center_crop_array`).
MAX_RESIZED_PIXELS = 4_000_000


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """The size of a photo resized to a shorter side of ``short`` (torchvision's ``Resize`` rule).

    Args:
        height: the photo's height.
        width: the photo's width.
        short: the new shorter side.

    Returns:
        (height, width), the longer side scaled and truncated.

    >>> resized_size(667, 1000, 256)
    (256, 383)
    """
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def center_crop_array(img: np.ndarray, info: ModelInfo) -> np.ndarray:
    """A whole-image model's input cut from a photo: the shorter side resized, then the centre crop.

    When the resized photo would exceed :data:`MAX_RESIZED_PIXELS` (a strip: 1 x 80000 would become
    256 x 20480000), only the pixels the crop keeps are resampled (PIL's ``resize`` with a source
    ``box``: the same filter, within one grey level), so the work is bounded by the crop whatever
    the aspect ratio.

    Args:
        img: (H, W, 3) uint8 RGB photo.
        info: the model's recipe (``resize``, ``input_size``).

    Returns:
        The (h, w, 3) uint8 crop.

    >>> from groupmood.models import model_info
    >>> center_crop_array(np.zeros((667, 1000, 3), np.uint8), model_info("efficientnet_lite0")).shape
    (224, 224, 3)
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"expected an image with at least one pixel, got shape {img.shape}")
    if not info.resize:
        raise ValueError(f"model {info.name} has no 'resize' in its recipe; a centre crop needs one")
    h, w = int(img.shape[0]), int(img.shape[1])
    nh, nw = resized_size(h, w, int(info.resize))
    ch, cw = int(info.input_size[0]), int(info.input_size[1])
    # the crop in resized coordinates; torchvision pads a crop larger than the image with zeros
    top = int(round((nh - ch) / 2.0)) if ch <= nh else -((ch - nh) // 2)
    left = int(round((nw - cw) / 2.0)) if cw <= nw else -((cw - nw) // 2)
    y0, y1 = max(0, top), min(nh, top + ch)
    x0, x1 = max(0, left), min(nw, left + cw)
    if (nh, nw) == (h, w):
        kept = img[y0:y1, x0:x1]
    elif nh * nw <= MAX_RESIZED_PIXELS:
        kept = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))[y0:y1, x0:x1]
    else:
        sy, sx = h / nh, w / nw
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        kept = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((x1 - x0, y1 - y0), Image.BILINEAR,
                                                                             box=box))
    out = np.zeros((ch, cw, 3), np.uint8)
    out[y0 - top:y1 - top, x0 - left:x1 - left] = kept
    return out


def normalize_array(x: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Pixels to network input: ``(x - mean) / std`` per channel, channels first.

    Args:
        x: (N, H, W, C) pixels in 0..255.
        info: the model's recipe (``mean``, ``std``).

    Returns:
        (N, C, H, W) float32, C-contiguous.

    >>> from groupmood.models import model_info
    >>> normalize_array(np.full((1, 48, 48, 1), 255, np.uint8), model_info("resnet_tiny_48"))[0, 0, 0, :2]
    array([1., 1.], dtype=float32)
    """
    if x.shape[-1] != len(info.mean):
        raise ValueError(f"{info.name} inputs have {len(info.mean)} channel(s), got a batch of shape {x.shape}")
    mean = np.asarray(info.mean, np.float32)
    std = np.asarray(info.std, np.float32)
    return np.ascontiguousarray(((x.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2))
