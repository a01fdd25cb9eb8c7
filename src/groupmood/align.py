"""Face crops for the two face branches.

* Aligned: least-squares similarity transform of the 5 MTCNN landmarks onto the SphereFace
  template, warped with OpenCV to 112 high x 96 wide RGB (facts.md; width first in OpenCV's
  dsize, which is where public ports transpose the crop).
* Non-aligned: the detection box made square (optional margin), cropped with edge replication
  and area-resized to 48x48 grey.
"""
from __future__ import annotations

import cv2
import numpy as np

#: SphereFace 5-point template (x, y) for a 96 wide x 112 high crop.
SPHEREFACE_TEMPLATE = np.array([
    [30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041],
], dtype=np.float64)
ALIGNED_SIZE = (112, 96)  # (height, width)
NONALIGNED_SIZE = 48


def similarity_transform(src: np.ndarray, dst: np.ndarray = SPHEREFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points to dst.

    Umeyama's method without reflection: the warp that puts a face's landmarks on the template.

    Args:
        src: (5, 2) points, or (N, 5, 2) for N faces.
        dst: (5, 2) target points; the SphereFace template by default.

    Returns:
        A (2, 3) affine matrix for ``cv2.warpAffine``, or (N, 2, 3) for N faces.

    >>> m = similarity_transform(SPHEREFACE_TEMPLATE * 2 + 10)  # the template, twice as large, moved
    >>> np.allclose(m, [[0.5, 0, -5], [0, 0.5, -5]])
    True
    """
    src = np.asarray(src, dtype=np.float64)
    single = src.ndim == 2
    s = src[None] if single else src
    d = np.broadcast_to(np.asarray(dst, dtype=np.float64), s.shape)
    mu_s, mu_d = s.mean(1, keepdims=True), d.mean(1, keepdims=True)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc ** 2).sum(axis=(1, 2)) / s.shape[1]
    cov = np.einsum("npi,npj->nij", dc, sc) / s.shape[1]
    u, sig, vt = np.linalg.svd(cov)
    det = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    e = np.ones((len(s), 2))
    e[:, 1] = det
    rot = u @ (e[:, :, None] * vt)
    scale = (sig * e).sum(1) / np.maximum(var_s, 1e-12)
    a = scale[:, None, None] * rot
    t = mu_d[:, 0, :, None] - a @ mu_s[:, 0, :, None]
    m = np.concatenate([a, t], axis=2)
    return m[0] if single else m


def align_faces(image: np.ndarray, landmarks: np.ndarray,
                size: tuple[int, int] = ALIGNED_SIZE) -> np.ndarray:
    """Aligned face crops: each face's 5 landmarks warped onto the SphereFace template.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (N, 5, 2) landmarks (x, y) of N faces, as :class:`~groupmood.detect.Face` has them.
        size: (height, width) of the crops.

    Returns:
        (N, height, width, 3) uint8 crops; (0, height, width, 3) for no face.

    >>> from groupmood import FaceDetector, load_image, sample_path
    >>> image = load_image(sample_path("group"))
    >>> faces = FaceDetector.from_pretrained(auto_fetch=True).detect_one(image)
    >>> align_faces(image, np.stack([f.landmarks for f in faces])).shape
    (5, 112, 96, 3)
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    h, w = size
    out = np.empty((len(lm), h, w, 3), np.uint8)
    if len(lm) == 0:
        return out
    template = SPHEREFACE_TEMPLATE * np.array([w / 96.0, h / 112.0])
    for k, m in enumerate(similarity_transform(lm, template)):
        out[k] = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out


def square_boxes(boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Square integer boxes around each box's centre, side = longer side * (1 + margin).

    Args:
        boxes: (N, 4) boxes (x1, y1, x2, y2) in pixels.
        margin: extra side length, as a fraction of the longer side.

    Returns:
        (N, 4) int64 square boxes (x1, y1, x2, y2).

    >>> square_boxes([[10, 20, 30, 60]]).tolist()
    [[0, 20, 40, 60]]
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * (1.0 + margin)
    side = np.maximum(np.round(side), 1)
    x1, y1 = np.round(cx - side / 2), np.round(cy - side / 2)
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(np.int64)


def square_crops(image: np.ndarray, boxes: np.ndarray, size: int = NONALIGNED_SIZE,
                 margin: float = 0.0, grey: bool = True) -> np.ndarray:
    """Non-aligned face crops: each box made square, cropped (edges replicated) and resized.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        boxes: (N, 4) face boxes (x1, y1, x2, y2) in pixels.
        size: side of the crops in pixels.
        margin: extra side length around each box (:func:`square_boxes`).
        grey: grey crops (the non-aligned branch's input) instead of RGB.

    Returns:
        (N, size, size) uint8 grey crops, or (N, size, size, 3) RGB with ``grey=False``.

    >>> from groupmood import load_image, sample_path
    >>> image = load_image(sample_path("group"))
    >>> square_crops(image, [[686, 292, 789, 420]]).shape
    (1, 48, 48)
    >>> square_crops(image, [[686, 292, 789, 420]], size=64, grey=False).shape
    (1, 64, 64, 3)
    """
    sq = square_boxes(boxes, margin)
    shape = (len(sq), size, size) if grey else (len(sq), size, size, 3)
    out = np.empty(shape, np.uint8)
    if len(sq) == 0:
        return out
    h, w = image.shape[:2]
    pad = int(max(0, -sq[:, :2].min(), (sq[:, 2] - w).max(), (sq[:, 3] - h).max()))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
    for k, (x1, y1, x2, y2) in enumerate(sq + pad):
        crop = padded[y1:y2, x1:x2]
        interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=interp)
        out[k] = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if grey else crop
    return out
