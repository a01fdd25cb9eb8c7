"""FaceDetector: images in, a list of faces per image out (an empty list when there is none)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import weights
from .cascade import CascadeSettings, run_cascade
from .nets import ONet, PNet, RNet

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2) in pixels, MTCNN score, 5 landmarks (x, y)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def to_dict(self, ndigits: int = 2) -> dict:
        return {
            "box": [round(float(v), ndigits) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in self.landmarks],
        }


ImageLike = np.ndarray | Image.Image

#: What the batch entry points take: one image, a path, or a sequence of them (or an (N, H, W, C) array).
Images = ImageLike | str | os.PathLike | Sequence[ImageLike | str | os.PathLike]


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a PIL image or an array (grey, RGB or RGBA)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def as_rgb_list(images: Images) -> list[np.ndarray]:
    """A list of (H, W, 3) uint8 RGB arrays from one image or many.

    One array ((H, W) grey or (H, W, 3|4)), PIL image or path is one photo, not a batch: without this a
    single array would be read as a list of its rows. An (N, H, W, 3|4) array is N photos. Paths are
    read with :func:`groupmood.images.load_image` (an :class:`~groupmood.errors.ImageLoadError` names a
    bad file).
    """
    from ..images import load_image

    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            images = [images]
        elif images.ndim != 4:
            raise ValueError(f"expected one image (H, W) or (H, W, C), or a stack (N, H, W, C); got an array "
                             f"of shape {images.shape}")
    elif isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    return [load_image(im) if isinstance(im, (str, os.PathLike)) else as_rgb_array(im) for im in images]


class FaceDetector:
    """MTCNN with the original weights, batched over images of different sizes.

    Build it with :meth:`from_pretrained` (weights from the cache, sha256-checked) or pass the
    three nets yourself. The constructor never downloads anything.
    """

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, settings: CascadeSettings | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.settings = settings or CascadeSettings()
        # channels_last: 2-3x faster convolutions and pooling for these small nets on CPU
        self.pnet, self.rnet, self.onet = (
            n.to(self.device, memory_format=torch.channels_last).eval() for n in (pnet, rnet, onet))

    @classmethod
    def from_pretrained(cls, device: str | torch.device = "cpu", weights_dir: str | Path | None = None,
                        auto_fetch: bool = False, **settings) -> FaceDetector:
        """Load P/R/O-Net from the weight cache (or ``weights_dir`` holding pnet.pt, rnet.pt, onet.pt)."""
        nets = []
        for cls_, name in ((PNet, "mtcnn_pnet"), (RNet, "mtcnn_rnet"), (ONet, "mtcnn_onet")):
            src: str | Path = name
            if weights_dir is not None:
                src = Path(weights_dir) / weights.spec(name).filename
            sd = weights.load_state_dict(src, sha256=weights.spec(name).sha256, auto_fetch=auto_fetch)
            net = cls_()
            net.load_state_dict(sd)
            nets.append(net)
        return cls(*nets, settings=CascadeSettings(**settings), device=device)

    def with_settings(self, **changes) -> FaceDetector:
        """A detector sharing these nets with some settings changed."""
        return FaceDetector(self.pnet, self.rnet, self.onet, replace(self.settings, **changes), self.device)

    def detect(self, images: Images) -> list[list[Face]]:
        """Detect faces in each image (one image or path counts as a batch of one); faces of one image
        are sorted by score, highest first."""
        arrays = as_rgb_list(images)
        out = run_cascade(arrays, self.pnet, self.rnet, self.onet, self.settings, self.device)
        return [[Face(b, float(s), p) for b, s, p in zip(*r)] for r in out]

    def detect_one(self, image: ImageLike) -> list[Face]:
        """Detect faces in one image."""
        return self.detect([image])[0]
