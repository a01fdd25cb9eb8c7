"""FaceDetector: images in, a list of faces per image out (an empty list when there is none)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import weights
from ..checkpoint import read_state_dict
from ..images import Photo
from .cascade import CascadeSettings, run_cascade
from .nets import ONet, PNet, RNet



def box_area(box: np.ndarray) -> float:
    """Area of an (x1, y1, x2, y2) box in pixels (0 for an empty one): face size for pooling and statistics."""
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2) in pixels, MTCNN score, 5 landmarks (x, y)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return box_area(self.box)

    def scaled(self, sx: float, sy: float) -> Face:
        """This face in coordinates scaled by (sx, sy): from decoded pixels to the photo's own."""
        if sx == 1.0 and sy == 1.0:
            return self
        return Face(self.box * np.array([sx, sy, sx, sy], self.box.dtype), self.score,
                    self.landmarks * np.array([sx, sy], self.landmarks.dtype))

    def to_dict(self, ndigits: int = 2) -> dict:
        return {
            "box": [round(float(v), ndigits) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in self.landmarks],
        }


ImageLike = np.ndarray | Image.Image

#: What the batch entry points take: one image, a path, or a sequence of them (or an (N, H, W, C) array).
Images = ImageLike | Photo | str | os.PathLike | Sequence[ImageLike | Photo | str | os.PathLike]


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

    One array ((H, W) grey or (H, W, 3|4)), PIL image, :class:`~groupmood.images.Photo` or path is one
    photo, not a batch: without this a single array would be read as a list of its rows. An
    (N, H, W, 3|4) array is N photos. Paths are read with :func:`groupmood.images.load_image` (an
    :class:`~groupmood.errors.ImageLoadError` names a bad file); a Photo gives its pixels.
    """
    return [p.pixels for p in as_photo_list(images)]


def as_photo_list(images: Images, min_short_side: int | None = None) -> list[Photo]:
    """:class:`~groupmood.images.Photo` objects from one image or many (as :func:`as_rgb_list` reads them).

    Paths are decoded at a reduced size keeping ``min_short_side`` pixels on the shorter side
    (:func:`groupmood.images.load_photo`); arrays and PIL images are taken at their size.
    """
    from ..images import load_photo

    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            images = [images]
        elif images.ndim != 4:
            raise ValueError(f"expected one image (H, W) or (H, W, C), or a stack (N, H, W, C); got an array "
                             f"of shape {images.shape}")
    elif isinstance(images, (str, os.PathLike, Image.Image, Photo)):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, (str, os.PathLike)):
            out.append(load_photo(im, min_short_side=min_short_side))
        elif isinstance(im, Photo):
            out.append(Photo(as_rgb_array(im.pixels), im.width, im.height))
        else:
            out.append(Photo.of(as_rgb_array(im)))
    return out


class FaceDetector:
    """MTCNN with the original weights, batched over images of different sizes.

    Build it with :meth:`from_pretrained` (weights from the cache, sha256-checked) or pass the
    three nets yourself. The constructor never downloads anything.
    """

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, settings: CascadeSettings | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.settings = settings or CascadeSettings()
        self.backend = "torch"
        # channels_last: 2-3x faster convolutions and pooling for these small nets on CPU
        self.pnet, self.rnet, self.onet = (
            n.to(self.device, memory_format=torch.channels_last).eval() for n in (pnet, rnet, onet))
        #: what runs P-, R- and O-Net: the nets themselves, or their ONNX Runtime models (:meth:`with_backend`)
        self.runners: tuple[Callable, Callable, Callable] = (self.pnet, self.rnet, self.onet)

    @classmethod
    def from_pretrained(cls, device: str | torch.device = "cpu", weights_dir: str | Path | None = None,
                        auto_fetch: bool = False, **settings) -> FaceDetector:
        """Load P/R/O-Net from the weight cache (or ``weights_dir`` holding pnet.pt, rnet.pt, onet.pt)."""
        nets = []
        for cls_, name in ((PNet, "mtcnn_pnet"), (RNet, "mtcnn_rnet"), (ONet, "mtcnn_onet")):
            src: str | Path = name
            if weights_dir is not None:
                src = Path(weights_dir) / weights.spec(name).filename
            sd = read_state_dict(src, sha256=weights.spec(name).sha256, auto_fetch=auto_fetch)
            net = cls_()
            net.load_state_dict(sd)
            nets.append(net)
        return cls(*nets, settings=CascadeSettings(**settings), device=device)

    def with_settings(self, **changes) -> FaceDetector:
        """A detector sharing these nets (and backend) with some settings changed."""
        other = FaceDetector(self.pnet, self.rnet, self.onet, replace(self.settings, **changes), self.device)
        other.backend, other.runners = self.backend, self.runners
        return other

    def with_backend(self, backend: str, parity_photos: Callable[[], list[np.ndarray]] | None = None) -> FaceDetector:
        """A detector with the same nets and settings run by ``backend`` (``torch`` or ``onnxruntime``).

        For ONNX Runtime, P-, R- and O-Net are exported once into the cache
        (:func:`groupmood.runtime.onnx.export_onnx`), checked against PyTorch on the inputs each net
        gets while this detector runs on ``parity_photos`` (default: the ``group`` sample photo).
        """
        other = FaceDetector(self.pnet, self.rnet, self.onet, self.settings, self.device)
        if backend == "torch":
            return other
        if backend != "onnxruntime":
            raise ValueError(f"unknown backend {backend!r}; use torch or onnxruntime")
        from ..runtime.onnx import TorchFacade, export_onnx, parity_photos as default_photos

        recorded: dict[str, list[torch.Tensor]] = {}

        def inputs(name: str) -> list[torch.Tensor]:
            if not recorded:
                recorded.update(_record_inputs(self, (parity_photos or default_photos)()))
            return recorded[name]

        nets = []
        for name, net, outs, size, dyn in (("mtcnn_pnet", self.pnet, ("reg", "prob"), (12, 12), True),
                                           ("mtcnn_rnet", self.rnet, ("reg", "prob"), (24, 24), False),
                                           ("mtcnn_onet", self.onet, ("reg", "landmarks", "prob"), (48, 48), False)):
            model = export_onnx(net.cpu(), name, outs, torch.zeros(1, 3, *size), lambda n=name: inputs(n),
                                dynamic_hw=dyn)
            nets.append(TorchFacade(model))
        other.backend = "onnxruntime"
        other.runners = tuple(nets)
        return other

    def detect(self, images: Images) -> list[list[Face]]:
        """Detect faces in each image (one image or path counts as a batch of one); faces of one image
        are sorted by score, highest first."""
        arrays = as_rgb_list(images)
        out = run_cascade(arrays, *self.runners, self.settings, self.device)
        return [[Face(b, float(s), p) for b, s, p in zip(*r)] for r in out]

    def detect_one(self, image: ImageLike) -> list[Face]:
        """Detect faces in one image."""
        return self.detect([image])[0]


class _Recorder:
    """Calls a net and keeps a copy of every input it got (the real inputs an export is checked on)."""

    def __init__(self, net: Callable) -> None:
        self.net = net
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> Any:
        self.inputs.append(torch.from_numpy(x.detach().cpu().contiguous().numpy().copy()))
        return self.net(x)


def _record_inputs(detector: FaceDetector, photos: Sequence[np.ndarray]) -> dict[str, list[torch.Tensor]]:
    """The inputs P-, R- and O-Net get while the PyTorch cascade runs on ``photos`` with the authors' settings
    (whatever the detector's thresholds, each net gets inputs); P-Net: its 2 largest and 2 smallest levels."""
    rec = [_Recorder(n) for n in (detector.pnet, detector.rnet, detector.onet)]
    run_cascade([as_rgb_array(p) for p in photos], *rec, CascadeSettings(), detector.device)
    pnet = sorted(rec[0].inputs, key=lambda t: -t.shape[2] * t.shape[3])
    return {"mtcnn_pnet": pnet[:2] + pnet[-2:], "mtcnn_rnet": rec[1].inputs, "mtcnn_onet": rec[2].inputs}
