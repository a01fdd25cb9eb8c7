"""The whole system: a bundle of models read into a recognizer that labels photos.

* :mod:`.bundle`: the bundle YAML as a frozen, checked :class:`Bundle` (branches, fusion, detector settings);
* :mod:`.branch`: a :class:`Branch`, one model with its input recipe, read as group-class scores;
* :mod:`.recognizer`: :class:`GroupEmotionRecognizer`, photos in, results out (detect, score, pool, fuse);
* :mod:`.results`: the frozen records it returns (:class:`GroupResult`, :class:`BranchResult`,
  :class:`FaceResult`).

Every public name is importable from :mod:`groupmood.pipeline` itself.
"""
from __future__ import annotations

from .branch import Branch, shared_trunks
from .bundle import (BUNDLE_FORMAT, SHIPPED_BUNDLE_HELP, SHIPPED_BUNDLES, BranchSpec, Bundle, FusionSpec, bundle_path,
                     default_bundle_path)
from .recognizer import GroupEmotionRecognizer
from .results import BranchResult, FaceResult, GroupResult

__all__ = ["BUNDLE_FORMAT", "SHIPPED_BUNDLES", "SHIPPED_BUNDLE_HELP", "Branch", "BranchResult", "BranchSpec", "Bundle",
           "FaceResult", "FusionSpec", "GroupEmotionRecognizer", "GroupResult", "bundle_path", "default_bundle_path",
           "shared_trunks"]
