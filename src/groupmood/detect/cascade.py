"""The MTCNN cascade, batched over images of different sizes.

Every resampling is the reference's own area averaging (``interpolate(mode="area")``, i.e.
adaptive average pooling: the same bins), read from each image's summed-area table in four
lookups per output pixel, whatever the size of the region: the pyramid levels as well as the
candidates' crops. The means are correctly rounded; PyTorch's pooling kernel differs from them by
one unit in the last place on some pixels, which moves boxes by at most about 1e-4 pixel. Each level
and each image's crops are averaged straight into their net's normalised input, in the layout the net
takes (channels first for ONNX Runtime, channels last for a ``channels_last`` runner): the same values
as averaging, normalising and transposing apart, with fewer passes over the pixels.

Stage 1 on a GPU packs every pyramid level of every image into one canvas (shelf packing, even
offsets so that P-Net's stride-2 grid lines up with each tile) and runs P-Net once per canvas
instead of once per scale per image; on a CPU, where the canvas' gaps cost as much as pixels and
many small calls cost nothing, P-Net runs on each level alone. A P-Net output cell sees exactly a
12x12 window, so a cell whose window lies inside one tile scores the same as on that tile alone.
Stages 2 and 3 crop every candidate of every image (no per-box net call) and run R-Net / O-Net
in chunks, each image's crops apart, and NMS is per image (and per scale in stage 1), one group at a
time: a photo's detections are the same bit for bit whatever photos share its batch (on a CPU).

Everything here is numpy: the nets are plain callables, ``(N, 3, H, W)`` float32 C-contiguous
array in, a tuple of float32 arrays out (P-Net: regression (1, 4, h, w), probability (1, h, w);
R-Net: regression (N, 4), probability (N,); O-Net: regression (N, 4), landmarks (N, 10),
probability (N,)): ONNX Runtime sessions, or PyTorch nets behind :class:`~groupmood.detect.nets.TorchRunner`
(which moves the input to its device). The arithmetic is float32 in a fixed order and the NMS is
torchvision's greedy NMS (:func:`nms`), so on a CPU the detections match the recorded reference
(``tests/data/mtcnn_cascade_golden.npz``) bit for bit.

Box conventions follow the reference MTCNN (1-based inclusive pixel boxes in the regression and
landmark formulas), so detections match the original implementation.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..runtime.session import device_type
from .nms import group_indices, nms_min, nms_per_group

#: P-Net's window (its receptive field) and stride on each pyramid level, in pixels.
CELL = 12
STRIDE = 2
#: The square crops R-Net and O-Net read, in pixels.
RNET_SIZE = 24
ONET_SIZE = 48


@dataclass(frozen=True)
class CascadeSettings:
    """Detector settings; the defaults are the EmotiW 2017 authors' (facts.md).

    >>> CascadeSettings().min_face(667, 1000)  # 5% of the shorter side
    33.35
    """

    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9)
    factor: float = 0.709
    min_face_frac: float = 0.05
    min_face_px: float | None = None
    min_face_floor: float = 12.0
    nms_thresholds: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)
    max_canvas_pixels: int = 4_000_000
    #: R-/O-Net crops per call; None: 64 on a CPU (small batches stay in cache and keep ONNX Runtime's buffers
    #: small; docs/performance.md), 1024 elsewhere
    chunk_size: int | None = None

    def chunk(self, device: Any) -> int:
        """R-/O-Net crops per call.

        Args:
            device: where the nets run.

        Returns:
            ``chunk_size``, else 64 on a CPU and 1024 elsewhere.
        """
        if self.chunk_size is not None:
            return self.chunk_size
        return 64 if device_type(device) == "cpu" else 1024

    def min_face(self, h: int, w: int) -> float:
        """Smallest face size searched in an image.

        Args:
            h: the image's height in pixels.
            w: the image's width in pixels.

        Returns:
            ``min_face_px``, else ``min_face_frac`` of the shorter side, at least ``min_face_floor``.
        """
        if self.min_face_px is not None:
            return float(self.min_face_px)
        return max(self.min_face_frac * min(h, w), self.min_face_floor)


def pyramid_scales(h: int, w: int, min_face: float, factor: float) -> list[float]:
    """Scales at which the 12x12 P-Net window covers faces from ``min_face`` up to the image size.

    Args:
        h: the image's height in pixels.
        w: the image's width in pixels.
        min_face: the smallest face searched, in pixels.
        factor: the ratio of one pyramid level to the one before.

    Returns:
        The scales, largest first.

    >>> [round(s, 3) for s in pyramid_scales(100, 100, min_face=20, factor=0.709)]
    [0.6, 0.425, 0.302, 0.214, 0.152]
    """
    m = CELL / min_face
    minl = min(h, w) * m
    scales = []
    s = m
    while minl >= CELL:
        scales.append(s)
        s *= factor
        minl *= factor
    return scales


@dataclass
class _Tile:
    image: int
    scale: float
    h: int
    w: int
    y: int = 0
    x: int = 0
    canvas: int = 0


def _pack(tiles: list[_Tile], max_pixels: int, gap: int = 2) -> list[tuple[int, int]]:
    """Shelf-pack tiles into canvases (even offsets); set tile.y/x/canvas; return canvas sizes."""
    order = sorted(range(len(tiles)), key=lambda i: -tiles[i].h)
    total = sum((t.h + gap) * (t.w + gap) for t in tiles)
    widest = max(t.w for t in tiles) + gap
    width = max(widest, int(math.sqrt(min(total, max_pixels)) * 1.15))
    width += width % 2
    sizes: list[tuple[int, int]] = []
    canvas, x, y, shelf_h = 0, 0, 0, 0
    for i in order:
        t = tiles[i]
        tw, th = t.w + gap + (t.w + gap) % 2, t.h + gap + (t.h + gap) % 2
        if x + tw > width:
            x, y, shelf_h = 0, y + shelf_h, 0
        if (y + th) * width > max_pixels and (x or y):
            sizes.append((y + shelf_h, width))
            canvas, x, y, shelf_h = canvas + 1, 0, 0, 0
        t.y, t.x, t.canvas = y, x, canvas
        x += tw
        shelf_h = max(shelf_h, th)
    sizes.append((y + shelf_h, width))
    return sizes


#: A net of the cascade: (N, 3, H, W) float32 C-contiguous array in, a tuple (or list) of float32 arrays out.
#: A runner with a true ``channels_last`` attribute (:class:`~groupmood.detect.nets.TorchRunner`) gets the
#: same values as an (N, 3, H, W) view of (N, H, W, 3) memory instead (no copy on either side).
Runner = Callable[[np.ndarray], Sequence[np.ndarray]]

_EMPTY_BOXES = np.zeros((0, 9), np.float32)
_EMPTY_IDS = np.zeros(0, np.int64)
_EMPTY_BOXES.flags.writeable = _EMPTY_IDS.flags.writeable = False


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x - np.float32(127.5)) * np.float32(0.0078125)


def _channels_last(net: Runner) -> bool:
    """Whether ``net`` takes an (N, C, H, W) view of (N, H, W, C) memory (a ``channels_last`` runner)."""
    return bool(getattr(net, "channels_last", False))


def _net_input(x: np.ndarray, net: Runner) -> np.ndarray:
    """A net's (N, C, H, W) input from normalised (N, H, W, C) values: C-contiguous, or a view for a
    ``channels_last`` runner."""
    view = x.transpose(0, 3, 1, 2)
    return view if _channels_last(net) else np.ascontiguousarray(view)


def _as_net_input(x: np.ndarray, net: Runner) -> np.ndarray:
    """A net's input from :func:`_area_input`'s output made for it (``channels_first`` = not :func:`_channels_last`)."""
    return x.transpose(0, 3, 1, 2) if _channels_last(net) else x


def _stage1(images: list[np.ndarray], tables: list[np.ndarray], pnet: Runner, cfg: CascadeSettings,
            device: Any = "cpu", pack: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """P-Net on the pyramids (packed into canvases when ``pack``; default: off a CPU only).

    ``tables`` are the photos' summed-area tables (:func:`integral_image`).

    Returns boxes (N, 9: x1 y1 x2 y2 score reg4) float32 and image indices (N,) int64.
    """
    tiles = [
        _Tile(i, s, int(img.shape[0] * s + 1), int(img.shape[1] * s + 1))
        for i, img in enumerate(images)
        for s in pyramid_scales(img.shape[0], img.shape[1], cfg.min_face(*img.shape[:2]), cfg.factor)
    ]
    if not tiles:
        return _EMPTY_BOXES, _EMPTY_IDS
    if pack is None:
        pack = device_type(device) != "cpu"
    scales = np.array([t.scale for t in tiles], np.float32)
    tile_image = np.array([t.image for t in tiles], np.int64)
    thr = np.float32(cfg.thresholds[0])
    boxes, tile_ids = [], []
    for reg, prob, rr, cc, tid in (_pnet_packed(images, tables, tiles, pnet, cfg, thr) if pack
                                   else _pnet_levels(images, tables, tiles, pnet, thr)):
        ly = rr.astype(np.float32)  # cells of the tile's own grid
        lx = cc.astype(np.float32)
        s = scales[tid]
        q1x = np.floor((np.float32(STRIDE) * lx + np.float32(1)) / s)
        q1y = np.floor((np.float32(STRIDE) * ly + np.float32(1)) / s)
        q2x = np.floor((np.float32(STRIDE) * lx + np.float32(CELL)) / s)
        q2y = np.floor((np.float32(STRIDE) * ly + np.float32(CELL)) / s)
        boxes.append(np.stack([q1x, q1y, q2x, q2y, prob, *reg], axis=1).astype(np.float32))
        tile_ids.append(tid)
    if not boxes:
        return _EMPTY_BOXES, _EMPTY_IDS
    b = np.concatenate(boxes)
    tid = np.concatenate(tile_ids)
    img_ids = tile_image[tid]
    keep = nms_per_group(b[:, :4], b[:, 4], tid, cfg.nms_thresholds[0])
    b, img_ids = b[keep], img_ids[keep]
    keep = nms_per_group(b[:, :4], b[:, 4], img_ids, cfg.nms_thresholds[1])
    b, img_ids = b[keep], img_ids[keep]
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    refined = np.stack([b[:, 0] + b[:, 5] * w, b[:, 1] + b[:, 6] * h,
                        b[:, 2] + b[:, 7] * w, b[:, 3] + b[:, 8] * h, b[:, 4]], axis=1)
    return _square(refined), img_ids


#: What stage 1 takes from one P-Net call: per candidate cell, its regression (4, n) and probability (n,), its
#: row and column in its tile's own output grid, and its tile.
_Cells = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _pnet_levels(images: list[np.ndarray], tables: list[np.ndarray], tiles: list[_Tile], pnet: Runner,
                 thr: np.float32) -> Iterator[_Cells]:
    """P-Net on each pyramid level alone (a CPU: packed canvases are ~40 % gaps, which a CPU pays for in full,
    while it gains nothing from fewer, larger calls); the cells at or above ``thr``.

    Each level is area-averaged from its photo's summed-area table (a cost per level pixel, where
    ``interpolate(mode="area")`` reads every photo pixel for every level) straight into P-Net's
    normalised input layout.
    """
    channels_first = not _channels_last(pnet)
    for ti, t in enumerate(tiles):
        h, w = images[t.image].shape[:2]
        x = _area_input(tables[t.image], np.array([[0, 0, w, h]]), t.h, t.w, channels_first)
        reg, prob = _outputs(pnet(_as_net_input(x, pnet)))
        rr, cc = np.nonzero(prob[0] >= thr)
        if rr.size:
            yield reg[0][:, rr, cc], prob[0][rr, cc], rr, cc, np.full(rr.size, ti, np.int64)


def _pnet_packed(images: list[np.ndarray], tables: list[np.ndarray], tiles: list[_Tile], pnet: Runner,
                 cfg: CascadeSettings, thr: np.float32) -> Iterator[_Cells]:
    """P-Net once per canvas of packed pyramid levels; each tile's cells at or above ``thr``."""
    levels = [area_resize(tables[t.image], np.array([[0, 0, images[t.image].shape[1], images[t.image].shape[0]]]),
                          t.h, t.w) for t in tiles]  # (1, h, w, 3) each
    sizes = _pack(tiles, cfg.max_canvas_pixels)
    canvases = [np.zeros((1, h, w, 3), np.float32) for h, w in sizes]
    for t, level in zip(tiles, levels):
        canvases[t.canvas][:, t.y:t.y + t.h, t.x:t.x + t.w] = level
    canvas_tiles: list[list[int]] = [[] for _ in canvases]
    for ti, t in enumerate(tiles):
        canvas_tiles[t.canvas].append(ti)
    tiles_y = np.array([t.y // 2 for t in tiles], np.int64)
    tiles_x = np.array([t.x // 2 for t in tiles], np.int64)
    for c, canvas in enumerate(canvases):
        reg, prob = _outputs(pnet(_net_input(_normalise(canvas), pnet)))
        reg, prob = reg[0], prob[0]
        owner = np.full(prob.shape, -1, np.int64)
        for ti in canvas_tiles[c]:
            t = tiles[ti]
            # cells whose 12x12 window starts inside the tile, as P-Net would give on the tile alone
            nh = max(0, math.ceil((t.h - 2) / 2) - 4)
            nw = max(0, math.ceil((t.w - 2) / 2) - 4)
            owner[t.y // 2:t.y // 2 + nh, t.x // 2:t.x // 2 + nw] = ti
        rr, cc = np.nonzero((prob >= thr) & (owner >= 0))
        if rr.size:
            tid = owner[rr, cc]
            yield reg[:, rr, cc], prob[rr, cc], rr - tiles_y[tid], cc - tiles_x[tid], tid


def _outputs(out: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(o, dtype=np.float32) for o in out]


def _square(b: np.ndarray) -> np.ndarray:
    """Make boxes square around their centre (side = the longer side)."""
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    half = np.float32(0.5)
    x1 = b[:, 0] + w * half - side * half
    y1 = b[:, 1] + h * half - side * half
    return np.stack([x1, y1, x1 + side, y1 + side, *b[:, 4:].T], axis=1)


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply MTCNN box regression (offsets relative to the inclusive box size)."""
    w = b[:, 2] - b[:, 0] + np.float32(1)
    h = b[:, 3] - b[:, 1] + np.float32(1)
    out = b.copy()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crop_regions(b: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer crop regions (pixel edges) of boxes clipped to their image; and a non-empty mask.

    Follows the reference: truncate, clip the 1-based box to [1, W] x [1, H], crop [x-1, ex).
    """
    t = np.trunc(b[:, :4])
    x = np.maximum(t[:, 0], np.float32(1)) - np.float32(1)
    y = np.maximum(t[:, 1], np.float32(1)) - np.float32(1)
    ex = np.minimum(t[:, 2], sizes[:, 1])
    ey = np.minimum(t[:, 3], sizes[:, 0])
    ok = (ex > x) & (ey > y)
    return np.stack([x, y, ex, ey], axis=1), ok


def integral_image(img: np.ndarray) -> np.ndarray:
    """(H+1, W+1, C) summed-area table of an (H, W, C) uint8 image, in exact integers.

    int32 while every sum fits (H * W * 255 < 2**31, about 8.4 megapixels), else int64: half the
    memory of float64 for ordinary photos, and the same sums.

    Args:
        img: (H, W, C) uint8 image.

    Returns:
        The (H+1, W+1, C) table; entry (y, x) is the sum of the pixels above and left of it.

    >>> integral_image(np.ones((4, 4, 3), np.uint8))[-1, -1].tolist()
    [16, 16, 16]
    """
    if img.shape[0] * img.shape[1] * 255 < 2**31 and img.dtype == np.uint8:
        return cv2.integral(np.ascontiguousarray(img), sdepth=cv2.CV_32S)  # the same sums in one pass
    dtype = np.int32 if img.shape[0] * img.shape[1] * 255 < 2**31 else np.int64
    s = np.zeros((img.shape[0] + 1, img.shape[1] + 1, img.shape[2]), dtype)
    np.cumsum(img, axis=0, dtype=dtype, out=s[1:, 1:])
    np.cumsum(s[1:, 1:], axis=1, out=s[1:, 1:])
    return s


def _bins(start: np.ndarray, length: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pooling bin edges [floor(k n/o), ceil((k+1) n/o)) offset by start; (K, n_out)."""
    k = np.arange(n_out)
    lo = (k[None] * length[:, None]) // n_out
    hi = -((-(k[None] + 1) * length[:, None]) // n_out)
    return start[:, None] + lo, start[:, None] + hi


def area_resize(table: np.ndarray, boxes: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-resize integer regions (x, y, ex, ey) of one image to (K, out_h, out_w, C) float32.

    Each output pixel is the mean of its bin (the bins of ``interpolate(mode="area")``, adaptive
    average pooling), correctly rounded, read from the summed-area table in four lookups whatever
    the region size.

    Args:
        table: the image's summed-area table (:func:`integral_image`).
        boxes: (K, 4) integer regions (x, y, ex, ey), end exclusive.
        out_h: output height.
        out_w: output width.

    Returns:
        (K, out_h, out_w, C) float32 means.

    >>> img = np.repeat(np.arange(16, dtype=np.uint8).reshape(4, 4, 1), 3, axis=2)
    >>> area_resize(integral_image(img), np.array([[0, 0, 4, 4]]), 2, 2)[0, :, :, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    total, count = _area_sums(table, boxes, out_h, out_w)
    if int(count.max(initial=0)) * 255 < 2**24:
        # sums and counts are exact in float32, and one division rounds as the float64 one, cast down
        return total.astype(np.float32) / count.astype(np.float32)
    return (total / count).astype(np.float32)


def _area_input(table: np.ndarray, boxes: np.ndarray, out_h: int, out_w: int, channels_first: bool) -> np.ndarray:
    """A net's input from regions of one image: ``_normalise(area_resize(...))``, the same values, made in fewer
    passes and laid out (K, C, out_h, out_w) C-contiguous when ``channels_first``, else (K, out_h, out_w, C)."""
    total, count = _area_sums(table, boxes, out_h, out_w)
    if int(count.max(initial=0)) * 255 >= 2**24:
        x = _normalise((total / count).astype(np.float32))
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x
    if channels_first:
        total, count = total.transpose(0, 3, 1, 2), count.transpose(0, 3, 1, 2)
    out = np.empty(total.shape, np.float32)
    # float32(sum) / float32(count) as area_resize divides, then _normalise's two steps, each in place
    np.divide(total, count, out=out, dtype=np.float32)
    out -= np.float32(127.5)
    out *= np.float32(0.0078125)
    return out


def _area_sums(table: np.ndarray, boxes: np.ndarray, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Each output pixel's integer sum over its bin (K, out_h, out_w, C) and the bin's pixel count
    (K, out_h, out_w, 1), for :func:`area_resize`."""
    x, y, ex, ey = (boxes[:, i].astype(np.int64) for i in range(4))
    r0, r1 = _bins(y, ey - y, out_h)
    c0, c1 = _bins(x, ex - x, out_w)
    count = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :])[..., None]
    stride, ch = table.shape[1], table.shape[2]
    if len(boxes) == 1 and stride <= 2 * out_w:
        # one region at half its table's width or more (a pyramid level of a small photo): whole rows of the
        # table gathered and differenced first, then the columns: fewer gathers than four corners per pixel
        rows = (np.take(table, r1[0], axis=0) - np.take(table, r0[0], axis=0)).reshape(out_h, stride * ch)
        cols = np.arange(ch)
        hi, lo = (c1[0][:, None] * ch + cols).reshape(-1), (c0[0][:, None] * ch + cols).reshape(-1)
        total = np.take(rows, hi, axis=1) - np.take(rows, lo, axis=1)
        return total.reshape(1, out_h, out_w, ch), count
    flat = table.reshape(-1, ch)  # one flat gather per corner, cheaper than 2-D fancy indexing
    a, b = r0[:, :, None] * stride, r1[:, :, None] * stride
    c, d = c0[:, None, :], c1[:, None, :]

    def corner(index: np.ndarray) -> np.ndarray:
        return np.take(flat, index, axis=0)  # np.take gathers rows of 3 channels faster than flat[index]

    total = corner(b + d) - corner(a + d) - corner(b + c) + corner(a + c)  # exact: integer sums
    return total, count


def _crops(tables: list[np.ndarray], regions: np.ndarray, img_ids: np.ndarray, size: int,
           channels_first: bool = False) -> np.ndarray:
    """Area-resize every region of every image to size x size, in input order, normalised: (N, size, size, 3),
    or (N, 3, size, size) C-contiguous when ``channels_first`` (:func:`_area_input`)."""
    reg = regions.astype(np.int64)
    groups = group_indices(img_ids)
    if len(groups) == 1:  # one photo (every call on a CPU): its crops are the whole output, in order
        return _area_input(tables[img_ids[0]], reg, size, size, channels_first)
    shape = (len(reg), 3, size, size) if channels_first else (len(reg), size, size, 3)
    out = np.empty(shape, np.float32)
    for sel in groups:
        out[sel] = _area_input(tables[img_ids[sel[0]]], reg[sel], size, size, channels_first)
    return out


def _chunked(net: Runner, x: np.ndarray, chunk: int, img_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """``net`` on the crops of each image apart (in chunks), outputs in input order.

    A photo's crops go through the net without its batch neighbours' crops, so that its scores
    are the same bit for bit whatever else is in the batch. ``x``: the normalised crops as
    :func:`_crops` made them for this net (channels first unless the net is ``channels_last``).
    """
    outs: list[list[np.ndarray]] = []
    order = group_indices(img_ids)
    for idx in order:
        xs = x if len(order) == 1 else x[idx]  # one photo: its crops in order already
        outs.extend(_outputs(net(_as_net_input(xs[i:i + chunk], net))) for i in range(0, len(xs), chunk))
    cat = [np.concatenate(parts) for parts in zip(*outs)]
    if len(order) == 1:
        return tuple(cat)
    inverse = np.argsort(np.concatenate(order))
    return tuple(c[inverse] for c in cat)


def run_cascade(images: list[np.ndarray], pnet: Runner, rnet: Runner, onet: Runner, cfg: CascadeSettings,
                device: Any = "cpu", pack: bool | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The MTCNN cascade on a batch of images (:class:`~groupmood.detect.FaceDetector` calls it).

    Args:
        images: (H, W, 3) uint8 RGB images.
        pnet: P-Net, a :data:`Runner` (numpy in, numpy out; a PyTorch module is wrapped in a
            :class:`~groupmood.detect.nets.TorchRunner` on ``device``).
        rnet: R-Net, likewise.
        onet: O-Net, likewise.
        cfg: the settings.
        device: where the nets run.
        pack: pack the pyramid levels into canvases for P-Net (None: off a CPU only; same result).

    Returns:
        Per image: boxes (N, 4), scores (N,), landmarks (N, 5, 2), float32, highest score first.

    >>> from groupmood import FaceDetector, load_image, sample_path
    >>> nets = FaceDetector.from_pretrained(auto_fetch=True).runners
    >>> [(boxes, scores, landmarks)] = run_cascade([load_image(sample_path("group"))], *nets, CascadeSettings())
    >>> boxes.shape, scores.shape, landmarks.shape
    ((5, 4), (5,), (5, 5, 2))
    """
    pnet, rnet, onet = (_as_runner(net, device) for net in (pnet, rnet, onet))
    n = len(images)
    results = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
               for _ in range(n)]
    if n == 0:
        return results
    tables = [integral_image(img) for img in images]
    boxes, img_ids = _stage1(images, tables, pnet, cfg, device, pack)
    if len(boxes) == 0:
        return results
    sizes_all = np.array([img.shape[:2] for img in images], np.float32).reshape(n, 2)

    regions, ok = _crop_regions(boxes, sizes_all[img_ids])
    boxes, img_ids, regions = boxes[ok], img_ids[ok], regions[ok]
    if len(boxes):
        reg, prob = _chunked(rnet, _crops(tables, regions, img_ids, RNET_SIZE, not _channels_last(rnet)), cfg.chunk(device),
                             img_ids)
        keep = prob > np.float32(cfg.thresholds[1])
        boxes = np.concatenate([boxes[keep, :4], prob[keep, None]], axis=1)
        img_ids, reg = img_ids[keep], reg[keep]
        keep = nms_per_group(boxes[:, :4], boxes[:, 4], img_ids, cfg.nms_thresholds[2])
        boxes = _square(_regress(boxes[keep], reg[keep]))
        img_ids = img_ids[keep]

    regions, ok = _crop_regions(boxes, sizes_all[img_ids])
    boxes, img_ids, regions = boxes[ok], img_ids[ok], regions[ok]
    if len(boxes) == 0:
        return results
    reg, lm, prob = _chunked(onet, _crops(tables, regions, img_ids, ONET_SIZE, not _channels_last(onet)), cfg.chunk(device),
                             img_ids)
    keep = prob > np.float32(cfg.thresholds[2])
    boxes = np.concatenate([boxes[keep, :4], prob[keep, None]], axis=1)
    img_ids, reg, lm = img_ids[keep], reg[keep], lm[keep]
    one = np.float32(1)
    w = boxes[:, 2] - boxes[:, 0] + one
    h = boxes[:, 3] - boxes[:, 1] + one
    points = np.stack([w[:, None] * lm[:, :5] + boxes[:, 0:1] - one,
                       h[:, None] * lm[:, 5:] + boxes[:, 1:2] - one], axis=2)
    boxes = _regress(boxes, reg)
    keep = nms_min(boxes[:, :4], boxes[:, 4], img_ids, cfg.nms_thresholds[3])
    boxes, img_ids, points = boxes[keep], img_ids[keep], points[keep]
    for i in range(n):
        sel = img_ids == i
        order = np.argsort(-boxes[sel, 4], kind="stable")
        results[i] = (boxes[sel, :4][order].astype(np.float32), boxes[sel, 4][order].astype(np.float32),
                      points[sel][order].astype(np.float32))
    return results


def _as_runner(net: Runner, device: Any) -> Runner:
    """A PyTorch module as a :data:`Runner` (a :class:`~groupmood.detect.nets.TorchRunner`); any other callable as it is."""
    torch = sys.modules.get("torch")  # a module can only be one if torch is imported already
    if torch is not None and isinstance(net, torch.nn.Module):
        from .nets import TorchRunner

        return TorchRunner(net, device)
    return net
