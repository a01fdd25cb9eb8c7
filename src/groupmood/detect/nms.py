"""Non-maximum suppression for the MTCNN cascade, in numpy: torchvision's greedy IoU NMS bit for bit, per image,
and the reference MTCNN's final intersection-over-the-smaller-box NMS."""
from __future__ import annotations

import numpy as np

__all__ = ["group_indices", "nms", "nms_min", "nms_per_group"]

_EMPTY_IDS = np.zeros(0, np.int64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS, the same choices as ``torchvision.ops.nms`` (its CPU kernel) bit for bit.

    Boxes (N, 4) x1 y1 x2 y2 and scores in float32; visits boxes by decreasing score (a stable sort:
    ties in index order), keeps a box and drops every later one whose IoU with it exceeds
    ``iou_threshold``. The IoU is torchvision's: areas (x2 - x1) * (y2 - y1) and
    inter / (area_i + area_j - inter), in float32, compared with the threshold in double precision.

    Args:
        boxes: (N, 4) boxes x1 y1 x2 y2.
        scores: (N,) scores.
        iou_threshold: the IoU above which a lower-scored box is dropped.

    Returns:
        The kept indices (int64), by decreasing score.

    >>> boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    >>> nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
    [0, 2]
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    n = len(boxes)
    if n <= 1:
        return np.zeros(n, np.int64)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = np.ascontiguousarray(boxes[order].T)
    areas = (x2 - x1) * (y2 - y1)
    thr = float(iou_threshold)
    zero = np.float32(0)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        if n <= _NMS_MATRIX:
            # every pair at once (the same float32 operations per pair), then the greedy pass over rows
            w = np.maximum(zero, np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]))
            h = np.maximum(zero, np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]))
            inter = w * h
            over = (inter / (areas[:, None] + areas[None] - inter)).astype(np.float64) > thr
            removed = np.zeros(n, bool)
            for i in range(n):
                if not removed[i]:
                    keep.append(i)
                    removed |= over[i]
        else:
            rest = np.arange(n)
            while rest.size:
                i = rest[0]
                keep.append(i)
                rest = rest[1:]
                w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
                h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
                inter = w * h
                rest = rest[~((inter / (areas[i] + areas[rest] - inter)).astype(np.float64) > thr)]
    return order[np.array(keep, np.int64)]


#: Up to this many boxes :func:`nms` computes every pair's IoU at once (a few MB), beyond it row by row.
_NMS_MATRIX = 1024


def group_indices(groups: np.ndarray) -> list[np.ndarray]:
    """Indices of each group's members (ascending), groups in increasing order: ``nonzero(groups == g)`` for each
    of ``unique(groups)``, in one sort."""
    order = np.argsort(groups, kind="stable")
    cuts = np.flatnonzero(np.diff(groups[order])) + 1
    return np.split(order, cuts)


def nms_per_group(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, thr: float) -> np.ndarray:
    """Indices kept by NMS within each group, by decreasing score (stable), as ``batched_nms`` returns them.

    Each group alone: ``batched_nms`` shifts boxes by a group offset that depends on the largest
    coordinate of the whole batch, so its rounding (and rarely its choices) could change with a
    photo's batch neighbours; here a photo's result never does.

    Args:
        boxes: (N, 4) boxes x1 y1 x2 y2.
        scores: (N,) scores.
        groups: (N,) group ids (e.g. the image of each box).
        thr: the IoU threshold.

    Returns:
        The kept indices (int64), by decreasing score.

    >>> boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    >>> nms_per_group(boxes, np.array([0.9, 0.8], np.float32), np.array([0, 1]), 0.5).tolist()  # two images
    [0, 1]
    """
    if len(boxes) == 0:
        return _EMPTY_IDS
    kept = np.concatenate([idx[nms(boxes[idx], scores[idx], thr)] for idx in group_indices(groups)])
    return kept[np.argsort(-scores[kept], kind="stable")]


def nms_min(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, thr: float) -> np.ndarray:
    """Greedy NMS with intersection over the smaller box (reference MTCNN's final 'Min' NMS)."""
    if len(boxes) == 0:
        return _EMPTY_IDS
    one, zero = np.float32(1), np.float32(0)
    area = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
    xx1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    yy1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    xx2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    yy2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.maximum(xx2 - xx1 + one, zero) * np.maximum(yy2 - yy1 + one, zero)
    with np.errstate(invalid="ignore", divide="ignore"):
        overlap = inter / np.minimum(area[:, None], area[None, :])
    # the threshold in float32, as PyTorch compared a float32 tensor with a Python float
    over = (overlap > np.float32(thr)) & (groups[:, None] == groups[None, :])
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in np.argsort(-scores, kind="stable").tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return np.array(keep, np.int64)
