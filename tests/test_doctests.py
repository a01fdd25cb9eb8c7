"""The ``>>>`` examples in the docstrings run as written: each module's examples pass, and none has lost them.

Examples run on CPU without network: the photos are the ``group`` sample and the MTCNN weights come from the
test run's weight cache (seeded from the user's, see conftest.py); whatever they write goes to a temporary
folder.
"""
from __future__ import annotations

import doctest
import importlib
import io

import pytest

#: Modules whose docstrings hold examples; each must keep at least one.
MODULES = [
    "groupmood.align",
    "groupmood.checkpoint",
    "groupmood.config",
    "groupmood.errors",
    "groupmood.images",
    "groupmood.inputs",
    "groupmood.io",
    "groupmood.labels",
    "groupmood.losses",
    "groupmood.mathops",
    "groupmood.paths",
    "groupmood.metrics",
    "groupmood.report",
    "groupmood.samples",
    "groupmood.shard",
    "groupmood.weights",
    "groupmood.detect.cascade",
    "groupmood.detect.detector",
    "groupmood.detect.nets",
    "groupmood.detect.nms",
    "groupmood.fusion.calibration",
    "groupmood.fusion.core",
    "groupmood.fusion.linear",
    "groupmood.fusion.plan",
    "groupmood.fusion.pooling",
    "groupmood.fusion.presets",
    "groupmood.fusion.scores",
    "groupmood.fusion.search",
    "groupmood.fusion.tables",
    "groupmood.models.bn_fold",
    "groupmood.models.catalog",
    "groupmood.models.heads",
    "groupmood.models.pretrained",
    "groupmood.models.registry",
    "groupmood.models.tta",
    "groupmood.pipeline.branch",
    "groupmood.pipeline.bundle",
    "groupmood.pipeline.recognizer",
    "groupmood.pipeline.results",
    "groupmood.runtime.export",
    "groupmood.runtime.graph",
    "groupmood.runtime.session",
    "groupmood.serve.app",
]

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, one_thread) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} has no >>> examples left"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed:\n{report.getvalue()}"
