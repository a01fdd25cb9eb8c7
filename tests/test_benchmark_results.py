"""benchmarks/_common.py: RESULTS.md keeps one current section per measurement, replaced in place."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(BENCH))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCH))
    return _common


def test_write_result_section_replaces_only_its_own_section(tmp_path, common):
    path = tmp_path / "RESULTS.md"
    first = {"command": "python a.py", "machine": "CPU | 2 cores", "path": path, "commit": "abc1234"}
    common.write_result_section("Alpha", "| x |\n|---|\n| 1 |", when="2026-01-01 10:00 UTC", **first)
    common.write_result_section("Beta", "beta body", when="2026-01-01 11:00 UTC", **first)
    legacy = "\n## Old log entry — 2025-12-31\n\nkept as it is\n"
    path.write_text(path.read_text() + legacy)
    common.write_result_section("Alpha", "| x |\n|---|\n| 2 |", when="2026-01-02 09:00 UTC",
                                **{**first, "commit": "def5678"})
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert text.count("## Alpha") == 1 and "| 1 |" not in text and "| 2 |" in text
    assert "| 2026-01-02 09:00 UTC | def5678 | CPU \\| 2 cores | `python a.py` |" in text
    assert text.index("## Alpha") < text.index("## Beta") < text.index("## Old log entry")  # order kept
    assert "beta body" in text and "kept as it is" in text
    common.write_result_section("Gamma", "gamma body", when="2026-01-03 09:00 UTC", **first)
    text = path.read_text()
    assert text.index("## Beta") < text.index("## Gamma") < text.index("## Old log entry")


def test_shipped_results_have_one_section_per_measurement(common):
    chunks = common.split_result_sections(common.RESULTS.read_text())
    names = [n for n, _ in chunks if n is not None]
    assert names and len(names) == len(set(names))
    for name, lines in chunks:
        if name is not None:
            assert lines[1] == f"## {name}" and lines[3] == "| date | commit | machine | command |"
