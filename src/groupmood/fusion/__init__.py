"""Face pooling, weighted score fusion with abstention, weight search, the authors' score files.

The system's last step (Tan et al., EmotiW 2017), one module per concern:

* :mod:`.pooling`: a photo's face scores -> one vector per branch (all faces or the ``k`` largest),
  or an abstention.
* :mod:`.core`: weighted fusion of the branches that spoke (:func:`fuse`, :func:`fuse_rows`) and
  the authors' logits-or-probabilities rule (:func:`to_probabilities`).
* :mod:`.scores`: score files (the authors' and our CSV) and label files.
* :mod:`.tables`: score tables lined up by photo name, labels matched to names.
* :mod:`.search`: every weight set on a grid over the simplex, scored on a labelled split.
* :mod:`.presets`: the weights of the seven submissions, ``--weights`` strings.

Every public name is importable from :mod:`groupmood.fusion` itself.
"""
from __future__ import annotations

from .core import ABSTAIN, SUM_TOLERANCE, Fused, check_weights, fuse, fuse_rows, to_probabilities
from .pooling import Pooled, parse_pooling, pool, pooling_name
from .presets import PRESETS, Preset, parse_weights, preset_weights
from .scores import ScoreTable, read_labels, read_scores, write_scores
from .search import WeightSearch, search_weights, simplex_grid
from .tables import align_tables, match_labels

__all__ = ["ABSTAIN", "PRESETS", "SUM_TOLERANCE", "Fused", "Pooled", "Preset", "ScoreTable", "WeightSearch",
           "align_tables", "check_weights", "fuse", "fuse_rows", "match_labels", "parse_pooling", "parse_weights",
           "pool", "pooling_name", "preset_weights", "read_labels", "read_scores", "search_weights", "simplex_grid",
           "to_probabilities", "write_scores"]
