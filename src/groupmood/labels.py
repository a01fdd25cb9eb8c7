"""Class vocabularies: the three group classes, facial expressions, and expression -> valence maps.

The group class order is the one of the authors' score files (facts.md): 0 Negative, 1 Neutral,
2 Positive. Every score vector in groupmood uses it.
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
    """Lower-case an expression label and map known aliases to the FERPlus spelling."""
    key = name.strip().lower()
    return EXPRESSION_ALIASES.get(key, key)


def valence_map(surprise: str = "Positive") -> dict[str, str]:
    """The default expression -> group-class map; ``surprise`` picks where surprise goes."""
    if surprise not in GROUP_CLASSES:
        raise ValueError(f"surprise must be one of {GROUP_CLASSES}, got {surprise!r}")
    mapping = {"happiness": "Positive", "neutral": "Neutral", "surprise": surprise}
    mapping.update({e: "Negative" for e in _NEGATIVE})
    return mapping


def valence_array(classes: Sequence[str], mapping: Mapping[str, str] | None = None) -> np.ndarray:
    """A (len(classes), 3) float32 0/1 array that sums expression probabilities into group classes.

    When ``classes`` already are the group classes the array is the identity. numpy only, for
    inference without torch; :func:`valence_matrix` is the same as a torch tensor.
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
    """A (len(classes), 3) float32 0/1 tensor that sums expression probabilities into group classes.

    When ``classes`` already are the group classes the matrix is the identity.
    """
    import torch

    return torch.from_numpy(valence_array(classes, mapping))


def to_valence(probs: torch.Tensor, classes: Sequence[str],
               mapping: Mapping[str, str] | None = None) -> torch.Tensor:
    """Sum (..., len(classes)) expression probabilities into (..., 3) group-class probabilities."""
    return probs @ valence_matrix(classes, mapping).to(probs)
