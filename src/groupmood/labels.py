"""Class vocabularies: the three group classes, facial expressions, and expression -> valence maps.

The group class order is the one of the authors' score files (facts.md): 0 Negative, 1 Neutral,
2 Positive. Every score vector in groupmood uses it.

>>> GROUP_CLASSES
('Negative', 'Neutral', 'Positive')
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

GROUP_CLASSES: tuple[str, ...] = ("Negative", "Neutral", "Positive")

#: The 8 FERPlus emotions, in the column order of FERPlus ``label.csv``.
FERPLUS_EMOTIONS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)

#: Common spellings of the same expressions in other datasets (CK+, JAFFE, ExpW, lfw legend).
EXPRESSION_ALIASES: dict[str, str] = {
    "happy": "happiness", "ha": "happiness", "joy": "happiness",
    "sad": "sadness", "sa": "sadness",
    "angry": "anger", "an": "anger",
    "disgusted": "disgust", "di": "disgust",
    "fearful": "fear", "fe": "fear",
    "surprised": "surprise", "su": "surprise",
    "ne": "neutral", "calm": "neutral",
}

_NEGATIVE = ("sadness", "anger", "disgust", "fear", "contempt")


def canonical_expression(name: str) -> str:
    """Lower-case an expression label and map known aliases to the FERPlus spelling.

    Args:
        name: an expression label as a dataset spells it (``"Happy"``, ``"SA"``, ``"fearful"``).

    Returns:
        The FERPlus spelling (:data:`FERPLUS_EMOTIONS`); an unknown label lower-cased as it is.

    >>> canonical_expression(" Happy "), canonical_expression("SA")
    ('happiness', 'sadness')
    """
    key = name.strip().lower()
    return EXPRESSION_ALIASES.get(key, key)


def valence_map(surprise: str = "Positive") -> dict[str, str]:
    """The default expression -> group-class map.

    Args:
        surprise: the group class surprise counts as (one of :data:`GROUP_CLASSES`).

    Returns:
        A dict from FERPlus expression to group class.

    >>> valence_map()["sadness"], valence_map(surprise="Neutral")["surprise"]
    ('Negative', 'Neutral')
    """
    if surprise not in GROUP_CLASSES:
        raise ValueError(f"surprise must be one of {GROUP_CLASSES}, got {surprise!r}")
    mapping = {"happiness": "Positive", "neutral": "Neutral", "surprise": surprise}
    mapping.update({e: "Negative" for e in _NEGATIVE})
    return mapping


def valence_array(classes: Sequence[str], mapping: Mapping[str, str] | None = None) -> np.ndarray:
    """A 0/1 array that sums expression probabilities into group-class probabilities.

    numpy only, for inference without torch; :func:`valence_matrix` is the same as a torch tensor.

    Args:
        classes: the expression classes, in the model's output order (aliases allowed).
        mapping: expression -> group class; :func:`valence_map` by default.

    Returns:
        A (len(classes), 3) float32 array; the identity when ``classes`` are the group classes.

    >>> valence_array(["neutral", "happy", "sad"])
    array([[0., 1., 0.],
           [0., 0., 1.],
           [1., 0., 0.]], dtype=float32)
    """
    if tuple(classes) == GROUP_CLASSES:
        return np.eye(3, dtype=np.float32)
    mapping = dict(mapping or valence_map())
    m = np.zeros((len(classes), len(GROUP_CLASSES)), dtype=np.float32)
    for i, c in enumerate(classes):
        target = mapping.get(canonical_expression(c))
        if target is None:
            raise KeyError(f"expression {c!r} has no group class in the map {mapping}")
        m[i, GROUP_CLASSES.index(target)] = 1.0
    return m


def valence_matrix(classes: Sequence[str], mapping: Mapping[str, str] | None = None) -> torch.Tensor:
    """:func:`valence_array` as a torch tensor.

    Args:
        classes: the expression classes, in the model's output order.
        mapping: expression -> group class; :func:`valence_map` by default.

    Returns:
        A (len(classes), 3) float32 0/1 tensor.

    >>> valence_matrix(FERPLUS_EMOTIONS).shape
    torch.Size([8, 3])
    """
    import torch

    return torch.from_numpy(valence_array(classes, mapping))


def to_valence(probs: torch.Tensor, classes: Sequence[str],
               mapping: Mapping[str, str] | None = None) -> torch.Tensor:
    """Sum expression probabilities into group-class probabilities (Negative, Neutral, Positive).

    Args:
        probs: (..., len(classes)) expression probabilities.
        classes: the expression classes of the last axis.
        mapping: expression -> group class; :func:`valence_map` by default.

    Returns:
        (..., 3) group-class probabilities, in the dtype and on the device of ``probs``.

    >>> import torch
    >>> to_valence(torch.tensor([[0.5, 0.3, 0.2]]), ["neutral", "happiness", "sadness"])
    tensor([[0.2000, 0.5000, 0.3000]])
    """
    return probs @ valence_matrix(classes, mapping).to(probs)
