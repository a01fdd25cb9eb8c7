"""The MTCNN cascade, batched over images of different sizes.

Every resampling is the reference's own area averaging (``interpolate(mode="area")``, i.e.
adaptive average pooling: the same bins), read from each image's summed-area table in four
lookups per output pixel, whatever the size of the region: the pyramid levels as well as the
candidates' crops. The means are correctly rounded; PyTorch's pooling kernel differs from them by
one unit in the last place on some pixels, which moves boxes by at most about 1e-4 pixel.

Stage 1 on a GPU packs every pyramid level of every image into one canvas (shelf packing, even
offsets so that P-Net's stride-2 grid lines up with each tile) and runs P-Net once per canvas
instead of once per scale per image; on a CPU, where the canvas' gaps cost as much as pixels and
many small calls cost nothing, P-Net runs on each level alone. A P-Net output cell sees exactly a
12x12 window, so a cell whose window lies inside one tile scores the same as on that tile alone.
Stages 2 and 3 crop every candidate of every image (no per-box torch call) and run R-Net / O-Net
in chunks, each image's crops apart, and NMS is per image (and per scale in stage 1), one group at a
time: a photo's detections are the same bit for bit whatever photos share its batch (on a CPU).

Box conventions follow the reference MTCNN (1-based inclusive pixel boxes in the regression and
landmark formulas), so detections match the original implementation.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import nms

from .nets import ONet, PNet, RNet

CELL = 12
STRIDE = 2


@dataclass(frozen=True)
class CascadeSettings:
    """Detector settings; the defaults are the EmotiW 2017 authors' (facts.md)."""

    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9)
    factor: float = 0.709
    min_face_frac: float = 0.05
    min_face_px: float | None = None
    min_face_floor: float = 12.0
    nms_thresholds: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)
    max_canvas_pixels: int = 4_000_000
    chunk_size: int = 1024

    def min_face(self, h: int, w: int) -> float:
        """Smallest face size searched in an image of h x w pixels."""
        if self.min_face_px is not None:
            return float(self.min_face_px)
        return max(self.min_face_frac * min(h, w), self.min_face_floor)


def pyramid_scales(h: int, w: int, min_face: float, factor: float) -> list[float]:
    """Scales at which the 12x12 P-Net window covers faces from ``min_face`` up to the image size."""
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


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _stage1(images: list[np.ndarray], tables: list[np.ndarray], pnet: PNet, cfg: CascadeSettings,
            device: torch.device, pack: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net on the pyramids (packed into canvases when ``pack``; default: on GPUs only).

    ``tables`` are the photos' summed-area tables (:func:`integral_image`).

    Returns boxes (N, 9: x1 y1 x2 y2 score reg4) and image indices.
    """
    tiles = [
        _Tile(i, s, int(img.shape[0] * s + 1), int(img.shape[1] * s + 1))
        for i, img in enumerate(images)
        for s in pyramid_scales(img.shape[0], img.shape[1], cfg.min_face(*img.shape[:2]), cfg.factor)
    ]
    empty = torch.zeros(0, 9, device=device), torch.zeros(0, dtype=torch.long, device=device)
    if not tiles:
        return empty
    # area averaging from the summed-area table: a cost per level pixel, where interpolate(mode="area")
    # reads every photo pixel for every level (and first needs a float copy of the photo)
    levels: list[torch.Tensor] = []
    for t in tiles:
        h, w = images[t.image].shape[:2]
        whole = np.array([[0, 0, w, h]])
        levels.append(torch.from_numpy(area_resize(tables[t.image], whole, t.h, t.w)).permute(0, 3, 1, 2))
    if not (device.type != "cpu" if pack is None else pack):
        # one level per P-Net call: packed canvases are ~40 % gaps, which a CPU pays for in full,
        # while it gains nothing from fewer, larger calls
        for i, t in enumerate(tiles):
            t.canvas = i
        canvases = levels
    else:
        sizes = _pack(tiles, cfg.max_canvas_pixels)
        canvases = [torch.zeros(1, 3, h, w) for h, w in sizes]
        for t, level in zip(tiles, levels):
            canvases[t.canvas][:, :, t.y:t.y + t.h, t.x:t.x + t.w] = level

    canvas_tiles: list[list[int]] = [[] for _ in canvases]
    for ti, t in enumerate(tiles):
        canvas_tiles[t.canvas].append(ti)
    tiles_y = torch.tensor([t.y // 2 for t in tiles], device=device)
    tiles_x = torch.tensor([t.x // 2 for t in tiles], device=device)
    scales = torch.tensor([t.scale for t in tiles], device=device, dtype=torch.float32)
    tile_image = torch.tensor([t.image for t in tiles], device=device)
    boxes, image_ids, tile_ids = [], [], []
    for c, canvas in enumerate(canvases):
        x = _normalise(canvas.to(device))
        reg, prob = pnet(x.contiguous(memory_format=torch.channels_last))
        reg, prob = reg[0], prob[0]
        ho, wo = prob.shape
        owner = torch.full((ho, wo), -1, dtype=torch.long, device=device)
        for ti in canvas_tiles[c]:
            t = tiles[ti]
            # cells whose 12x12 window starts inside the tile, as P-Net would give on the tile alone
            nh = max(0, math.ceil((t.h - 2) / 2) - 4)
            nw = max(0, math.ceil((t.w - 2) / 2) - 4)
            owner[t.y // 2:t.y // 2 + nh, t.x // 2:t.x // 2 + nw] = ti
        mask = (prob >= cfg.thresholds[0]) & (owner >= 0)
        rr, cc = mask.nonzero(as_tuple=True)
        if rr.numel() == 0:
            continue
        tid = owner[rr, cc]
        ly = (rr - tiles_y[tid]).float()
        lx = (cc - tiles_x[tid]).float()
        s = scales[tid]
        q1x = torch.floor((STRIDE * lx + 1) / s)
        q1y = torch.floor((STRIDE * ly + 1) / s)
        q2x = torch.floor((STRIDE * lx + CELL) / s)
        q2y = torch.floor((STRIDE * ly + CELL) / s)
        boxes.append(torch.stack([q1x, q1y, q2x, q2y, prob[rr, cc], *reg[:, rr, cc]], dim=1))
        tile_ids.append(tid)
        image_ids.append(tile_image[tid])
    if not boxes:
        return empty
    b = torch.cat(boxes)
    tid = torch.cat(tile_ids)
    img_ids = torch.cat(image_ids)
    keep = nms_per_group(b[:, :4], b[:, 4], tid, cfg.nms_thresholds[0])
    b, img_ids = b[keep], img_ids[keep]
    keep = nms_per_group(b[:, :4], b[:, 4], img_ids, cfg.nms_thresholds[1])
    b, img_ids = b[keep], img_ids[keep]
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    refined = torch.stack([b[:, 0] + b[:, 5] * w, b[:, 1] + b[:, 6] * h,
                           b[:, 2] + b[:, 7] * w, b[:, 3] + b[:, 8] * h, b[:, 4]], dim=1)
    return _square(refined), img_ids


def _square(b: torch.Tensor) -> torch.Tensor:
    """Make boxes square around their centre (side = the longer side)."""
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    x1 = b[:, 0] + w * 0.5 - side * 0.5
    y1 = b[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side, *b[:, 4:].T], dim=1)


def _regress(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply MTCNN box regression (offsets relative to the inclusive box size)."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    out = b.clone()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crop_regions(b: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer crop regions (pixel edges) of boxes clipped to their image; and a non-empty mask.

    Follows the reference: truncate, clip the 1-based box to [1, W] x [1, H], crop [x-1, ex).
    """
    t = b[:, :4].trunc()
    x = t[:, 0].clamp(min=1) - 1
    y = t[:, 1].clamp(min=1) - 1
    ex = torch.minimum(t[:, 2], sizes[:, 1])
    ey = torch.minimum(t[:, 3], sizes[:, 0])
    ok = (ex > x) & (ey > y)
    return torch.stack([x, y, ex, ey], dim=1), ok


def integral_image(img: np.ndarray) -> np.ndarray:
    """(H+1, W+1, C) summed-area table of an (H, W, C) uint8 image, in exact integers.

    int32 while every sum fits (H * W * 255 < 2**31, about 8.4 megapixels), else int64: half the
    memory and time of float64 for ordinary photos, and the same sums.
    """
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
    """
    x, y, ex, ey = (boxes[:, i].astype(np.int64) for i in range(4))
    r0, r1 = _bins(y, ey - y, out_h)
    c0, c1 = _bins(x, ex - x, out_w)
    stride = table.shape[1]
    flat = table.reshape(-1, table.shape[2])  # one flat gather per corner: 3-4x faster than 2-D indexing
    a, b = r0[:, :, None] * stride, r1[:, :, None] * stride
    c, d = c0[:, None, :], c1[:, None, :]

    def corner(index: np.ndarray) -> np.ndarray:
        return np.take(flat, index, axis=0)  # 2-3x faster than flat[index] for rows of 3 channels

    total = corner(b + d) - corner(a + d) - corner(b + c) + corner(a + c)  # exact: integer sums
    count = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :])[..., None]
    if int(count.max(initial=0)) * 255 < 2**24:
        # sums and counts are exact in float32, and one division rounds as the float64 one, cast down
        return total.astype(np.float32) / count.astype(np.float32)
    return (total / count).astype(np.float32)


def _crops(tables: list[np.ndarray], regions: torch.Tensor, img_ids: torch.Tensor,
           size: int, device: torch.device) -> torch.Tensor:
    """Area-resize every region of every image to size x size, in input order."""
    reg = regions.to(torch.int64).cpu().numpy()
    ids = img_ids.cpu().numpy()
    out = np.empty((len(reg), size, size, 3), np.float32)
    for i in np.unique(ids):
        sel = np.nonzero(ids == i)[0]
        out[sel] = area_resize(tables[i], reg[sel], size, size)
    return _normalise(torch.from_numpy(out).to(device).permute(0, 3, 1, 2))


def nms_per_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thr: float) -> torch.Tensor:
    """Indices kept by NMS within each group, by decreasing score (stable), as ``batched_nms`` returns them.

    Each group alone: ``batched_nms`` shifts boxes by a group offset that depends on the largest
    coordinate of the whole batch, so its rounding (and rarely its choices) could change with a
    photo's batch neighbours; here a photo's result never does.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep = []
    for g in torch.unique(groups):
        idx = torch.nonzero(groups == g).flatten()
        keep.append(idx[nms(boxes[idx], scores[idx], thr)])
    kept = torch.cat(keep)
    order = torch.sort(scores[kept], descending=True, stable=True).indices
    return kept[order]


def _chunked(net: Callable, x: torch.Tensor, chunk: int, img_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``net`` on the crops of each image apart (in chunks), outputs in input order.

    A photo's crops go through the net without its batch neighbours' crops, so that its scores
    are the same bit for bit whatever else is in the batch.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    ids = img_ids.cpu()
    outs: list[tuple[torch.Tensor, ...]] = []
    order = []
    for g in torch.unique(ids):
        idx = torch.nonzero(ids == g).flatten()
        xs = x[idx.to(x.device)]
        order.append(idx)
        outs.extend(net(xs[i:i + chunk]) for i in range(0, len(xs), chunk))
    cat = [torch.cat(parts) for parts in zip(*outs)]
    inverse = torch.argsort(torch.cat(order)).to(cat[0].device)
    return tuple(c[inverse] for c in cat)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thr: float) -> torch.Tensor:
    """Greedy NMS with intersection over the smaller box (reference MTCNN's final 'Min' NMS)."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    xx1 = torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    yy1 = torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    xx2 = torch.minimum(boxes[:, None, 2], boxes[None, :, 2])
    yy2 = torch.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = (xx2 - xx1 + 1).clamp(min=0) * (yy2 - yy1 + 1).clamp(min=0)
    overlap = inter / torch.minimum(area[:, None], area[None, :])
    overlap = torch.where(groups[:, None] == groups[None, :], overlap, torch.zeros_like(overlap))
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    over = (overlap > thr).cpu()
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


@torch.inference_mode()
def run_cascade(images: list[np.ndarray], pnet: PNet | Callable, rnet: RNet | Callable, onet: ONet | Callable,
                cfg: CascadeSettings,
                device: torch.device, pack: bool | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Detect faces in RGB uint8 images; per image return (boxes (N,4), scores (N,), landmarks (N,5,2)).

    ``pack`` packs the pyramid levels into canvases for P-Net (None: on GPUs only; same result).
    """
    n = len(images)
    results = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
               for _ in range(n)]
    if n == 0:
        return results
    tables = [integral_image(img) for img in images]
    boxes, img_ids = _stage1(images, tables, pnet, cfg, device, pack)
    if len(boxes) == 0:
        return results
    sizes_all = torch.tensor([img.shape[:2] for img in images], dtype=torch.float32, device=device)

    regions, ok = _crop_regions(boxes, sizes_all[img_ids])
    boxes, img_ids, regions = boxes[ok], img_ids[ok], regions[ok]
    if len(boxes):
        reg, prob = _chunked(rnet, _crops(tables, regions, img_ids, 24, device), cfg.chunk_size, img_ids)
        keep = prob > cfg.thresholds[1]
        boxes = torch.cat([boxes[keep, :4], prob[keep, None]], dim=1)
        img_ids, reg = img_ids[keep], reg[keep]
        keep = nms_per_group(boxes[:, :4], boxes[:, 4], img_ids, cfg.nms_thresholds[2])
        boxes = _square(_regress(boxes[keep], reg[keep]))
        img_ids = img_ids[keep]

    regions, ok = _crop_regions(boxes, sizes_all[img_ids])
    boxes, img_ids, regions = boxes[ok], img_ids[ok], regions[ok]
    if len(boxes) == 0:
        return results
    reg, lm, prob = _chunked(onet, _crops(tables, regions, img_ids, 48, device), cfg.chunk_size, img_ids)
    keep = prob > cfg.thresholds[2]
    boxes = torch.cat([boxes[keep, :4], prob[keep, None]], dim=1)
    img_ids, reg, lm = img_ids[keep], reg[keep], lm[keep]
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    points = torch.stack([w[:, None] * lm[:, :5] + boxes[:, 0:1] - 1,
                          h[:, None] * lm[:, 5:] + boxes[:, 1:2] - 1], dim=2)
    boxes = _regress(boxes, reg)
    keep = _nms_min(boxes[:, :4], boxes[:, 4], img_ids, cfg.nms_thresholds[3])
    boxes, img_ids, points = boxes[keep].cpu().numpy(), img_ids[keep].cpu().numpy(), points[keep].cpu().numpy()
    for i in range(n):
        sel = img_ids == i
        order = np.argsort(-boxes[sel, 4], kind="stable")
        results[i] = (boxes[sel, :4][order].astype(np.float32), boxes[sel, 4][order].astype(np.float32),
                      points[sel][order].astype(np.float32))
    return results
