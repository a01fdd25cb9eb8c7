"""A group-class head on a frozen face trunk, fitted on the faces of labelled group photos.

Group photos are labelled per photo, not per face (multiple-instance data). Every face of a photo
takes the photo's class; each photo counts once, whatever its number of faces (its faces share
the photo's weight), and the classes count equally (photo counts per class balanced). The head is
an L2-regularised multinomial logistic regression on the trunk's standardised embeddings::

    minimise  C * sum_i w_i * CE(W z_i + b, y_photo(i)) + ||W||^2 / 2,    z = (x - mean) / std

with the face weights ``w`` scaled to mean 1, fitted with L-BFGS (float64, deterministic). The
standardisation is folded into the returned linear layer, so the head reads raw embeddings and
drops into the net in place of its expression head: at inference a photo's score is the mean of
its faces' softmax probabilities (the pipeline's ``all`` pooling).

Extra photos (``extra_faces``, e.g. image-sentiment photos with several faces: a proxy for group
valence) can join the training side with a photo-weight multiplier ``extra_weight``: each extra
photo first weighs ``extra_weight`` times an average labelled group photo (the group photos keep
their class-balanced weights), its weight shared by its faces; then the classes are balanced over
the union, each class's total (group and extra photos together) scaled to the classes' mean total,
which leaves the overall total unchanged. That keeps the head's class prior flat although the extra
photos have no Neutral and lean Positive (balancing the group and extra photos separately instead
lets the extra Negative / Positive mass crowd Neutral out of the head's recall on multiemova-dev). The extra photos add to the data term without
rescaling the rest (more data: relatively weaker regularisation, as in any logistic regression).
The standardisation is taken over every face fitted on. ``extra_weight`` 0 (or no extra photos) is
the plain fit, bit for bit.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DatasetError
from ..fusion.linear import LinearHead, class_balanced_weights, fit_softmax_regression

__all__ = ["LinearHead", "fit_group_head", "fit_softmax_regression"]


def fit_group_head(faces: Sequence[np.ndarray], labels: Sequence[int] | np.ndarray, c: float,
                   num_classes: int = 3, extra_faces: Sequence[np.ndarray] | None = None,
                   extra_labels: Sequence[int] | np.ndarray | None = None, extra_weight: float = 0.0) -> LinearHead:
    """Fit the head on the face embeddings of labelled photos (photos without faces are skipped).

    ``faces[i]`` is the (n_i, D) embeddings of photo i, ``labels[i]`` its class index.
    ``extra_faces`` / ``extra_labels``: photos added to the training side only, each weighing
    ``extra_weight`` times an average photo of ``faces`` (see the module docstring).
    """
    y = np.asarray(labels, dtype=np.int64)
    if len(faces) != len(y):
        raise ValueError(f"{len(faces)} photos of faces but {len(y)} labels")
    if not extra_weight >= 0:
        raise ValueError(f"extra_weight must be >= 0, got {extra_weight}")
    keep = [i for i, f in enumerate(faces) if len(f)]
    if not keep:
        raise DatasetError("no photo of the training set has a face; a group-face head needs faces")
    class_w = class_balanced_weights(y[keep], num_classes)
    xs, ys, ws = [], [], []
    for i in keep:
        f = np.asarray(faces[i], dtype=np.float64)
        xs.append(f)
        ys.append(np.full(len(f), y[i]))
        ws.append(np.full(len(f), class_w[y[i]] / len(f)))
    w = np.concatenate(ws)
    w = w * len(w) / w.sum()
    x, t = np.concatenate(xs), np.concatenate(ys)
    if extra_faces is not None and extra_weight > 0:
        ex, et, ew = _extra_side(extra_faces, extra_labels,
                                 extra_weight * len(w) / len(keep))  # an average group photo weighs len(w) / len(keep)
        if len(ex):
            x, t, w = np.concatenate([x, ex]), np.concatenate([t, et]), np.concatenate([w, ew])
            totals = np.bincount(t, weights=w, minlength=num_classes)
            present = totals > 0
            scale = np.divide(totals[present].mean(), totals, out=np.zeros(num_classes), where=present)
            w = w * scale[t]
    return fit_softmax_regression(x, t, c, num_classes, w)


def _extra_side(faces: Sequence[np.ndarray], labels: Sequence[int] | np.ndarray | None,
                photo_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces, labels and weights of the extra photos: ``photo_weight`` per photo, shared by its faces."""
    y = np.asarray(labels, dtype=np.int64)
    if len(faces) != len(y):
        raise ValueError(f"{len(faces)} extra photos of faces but {len(y)} extra labels")
    keep = [i for i, f in enumerate(faces) if len(f)]
    if not keep:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros(0)
    xs = [np.asarray(faces[i], dtype=np.float64) for i in keep]
    return (np.concatenate(xs), np.concatenate([np.full(len(f), y[i]) for i, f in zip(keep, xs)]),
            np.concatenate([np.full(len(f), photo_weight / len(f)) for f in xs]))
