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
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DatasetError
from ..linear import LinearHead, fit_softmax_regression

__all__ = ["LinearHead", "fit_group_head", "fit_softmax_regression"]


def fit_group_head(faces: Sequence[np.ndarray], labels: Sequence[int] | np.ndarray, c: float,
                   num_classes: int = 3) -> LinearHead:
    """Fit the head on the face embeddings of labelled photos (photos without faces are skipped).

    ``faces[i]`` is the (n_i, D) embeddings of photo i, ``labels[i]`` its class index.
    """
    y = np.asarray(labels, dtype=np.int64)
    if len(faces) != len(y):
        raise ValueError(f"{len(faces)} photos of faces but {len(y)} labels")
    keep = [i for i, f in enumerate(faces) if len(f)]
    if not keep:
        raise DatasetError("no photo of the training set has a face; a group-face head needs faces")
    photo_y = y[keep]
    per_class = np.bincount(photo_y, minlength=num_classes).astype(np.float64)
    class_w = np.divide(len(keep), num_classes * per_class, out=np.zeros(num_classes), where=per_class > 0)
    xs, ys, ws = [], [], []
    for i in keep:
        f = np.asarray(faces[i], dtype=np.float64)
        xs.append(f)
        ys.append(np.full(len(f), y[i]))
        ws.append(np.full(len(f), class_w[y[i]] / len(f)))
    w = np.concatenate(ws)
    return fit_softmax_regression(np.concatenate(xs), np.concatenate(ys), c, num_classes, w * len(w) / w.sum())
