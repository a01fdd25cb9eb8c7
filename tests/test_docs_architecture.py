"""docs/architecture.md stays true to the code: every module it names exists, and every ``module.py:name`` it
names is defined there (``name`` may be ``Class.method``). A bare file name (``bundle.py`` in the ``pipeline/``
row) is the one file of that name in the package."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "groupmood"
DOC = REPO / "docs" / "architecture.md"
#: `folder/module.py` or `module.py`, optionally followed by `:Name` or `:Class.attr`
REF = re.compile(r"`((?:[a-z_]+/)*[a-z_]+\.py)(?::([A-Za-z_][A-Za-z0-9_.]*))?`")


def references() -> list[tuple[str, str | None]]:
    return sorted(set(REF.findall(DOC.read_text(encoding="utf-8"))), key=str)


def test_the_document_names_modules_and_functions():
    refs = references()
    assert len(refs) >= 30 and sum(1 for _, name in refs if name) >= 20


@pytest.mark.parametrize("module,name", references())
def test_each_reference_exists(module, name):
    path = PACKAGE / module
    if not path.is_file():  # a bare file name in a folder's row: the one file of that name
        found = sorted(PACKAGE.rglob(module))
        assert len(found) == 1, f"docs/architecture.md names {module}: {len(found)} such files in src/groupmood"
        path = found[0]
    if not name:
        return
    dotted = "groupmood." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    obj = importlib.import_module(dotted)
    for part in name.split("."):
        assert hasattr(obj, part), f"docs/architecture.md names {module}:{name}; {part} is not there"
        obj = getattr(obj, part)
