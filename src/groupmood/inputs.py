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

__all__ = ["center_crop_array", "normalize_array", "resized_size"]


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``short`` and the longer one scaled and truncated (torchvision's rule)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def center_crop_array(img: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo -> the (h, w, 3) uint8 input of whole-image model ``info`` (resize + centre crop)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    if not info.resize:
        raise ValueError(f"model {info.name} has no 'resize' in its recipe; a centre crop needs one")
    nh, nw = resized_size(img.shape[0], img.shape[1], int(info.resize))
    out = img
    if (nh, nw) != img.shape[:2]:
        out = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))
    ch, cw = int(info.input_size[0]), int(info.input_size[1])
    if ch > nh or cw > nw:  # torchvision pads a crop larger than the image with zeros
        dh, dw = max(0, ch - nh), max(0, cw - nw)
        out = np.pad(out, ((dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)))
        nh, nw = out.shape[:2]
    top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
    return np.ascontiguousarray(out[top:top + ch, left:left + cw])


def normalize_array(x: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(N, H, W, C) pixels in 0..255 -> (N, C, H, W) float32 network input, ``(x - mean) / std`` per channel."""
    if x.shape[-1] != len(info.mean):
        raise ValueError(f"{info.name} inputs have {len(info.mean)} channel(s), got a batch of shape {x.shape}")
    mean = np.asarray(info.mean, np.float32)
    std = np.asarray(info.std, np.float32)
    return np.ascontiguousarray(((x.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2))
