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
    first, later = _overlapping_pairs(x1, y1, x2, y2, areas, float(iou_threshold))
    # the greedy pass: box k (by score) is kept unless a kept box before it suppressed it
    bounds = np.searchsorted(first, np.arange(n + 1))
    removed = np.zeros(n, bool)
    keep = []
    for k in range(n):
        if not removed[k]:
            keep.append(k)
            removed[later[bounds[k]:bounds[k + 1]]] = True
    return order[np.array(keep, np.int64)]


#: At most this many box pairs are measured at once by :func:`_overlapping_pairs` (a few tens of MB).
_PAIRS_PER_BLOCK = 1 << 20


def _overlapping_pairs(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, areas: np.ndarray,
                       thr: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j), i < j, of boxes (in score order) whose IoU exceeds ``thr``, sorted by i.

    Only pairs whose x-extents overlap are measured (a sweep over the boxes sorted by x1): any other pair
    has no intersection, an IoU of 0 (or NaN for two empty boxes), which never exceeds a threshold of 0 or
    more. A photo's candidates are mostly far apart, so this is a small share of all pairs. Each measured
    pair's IoU is computed with the same float32 operations as every pair at once would be (``areas[i] +
    areas[j]`` is commutative), so the choices are the same.
    """
    n = len(x1)
    if thr < 0:  # a pair that does not intersect exceeds it too: every pair is measured
        i, j = np.triu_indices(n, 1)
        over = _iou_over(x1, y1, x2, y2, areas, i, j, thr)
        return i[over], j[over]
    by_x = np.argsort(x1, kind="stable")
    # box by_x[p] overlaps in x the boxes by_x[p + 1:end[p]] (those that start before it ends)
    end = np.searchsorted(x1[by_x], x2[by_x], side="left")
    counts = np.maximum(end - np.arange(1, n + 1), 0)
    cum = np.concatenate([[0], np.cumsum(counts)])
    firsts, lasts = [], []
    p = 0
    while p < n:  # runs of boxes with at most _PAIRS_PER_BLOCK pairs in all (one box at least)
        q = max(p + 1, int(np.searchsorted(cum, cum[p] + _PAIRS_PER_BLOCK, side="right")) - 1)
        c = counts[p:q]
        total = int(cum[q] - cum[p])
        if total:
            a = np.repeat(by_x[p:q], c)
            b = by_x[np.repeat(np.arange(p + 1, q + 1) - (cum[p:q] - cum[p]), c) + np.arange(total)]
            i, j = np.minimum(a, b), np.maximum(a, b)
            over = _iou_over(x1, y1, x2, y2, areas, i, j, thr)
            firsts.append(i[over])
            lasts.append(j[over])
        p = q
    if not firsts:
        return _EMPTY_IDS, _EMPTY_IDS
    i, j = np.concatenate(firsts), np.concatenate(lasts)
    srt = np.argsort(i, kind="stable")
    return i[srt], j[srt]


def _iou_over(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, areas: np.ndarray, i: np.ndarray,
              j: np.ndarray, thr: float) -> np.ndarray:
    """Whether each pair's IoU exceeds ``thr``: torchvision's float32 IoU, compared in double precision."""
    zero = np.float32(0)
    w = np.maximum(zero, np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]))
    h = np.maximum(zero, np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        return (inter / (areas[i] + areas[j] - inter)).astype(np.float64) > thr


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
