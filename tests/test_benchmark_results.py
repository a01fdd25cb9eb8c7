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


def test_a_renamed_section_takes_the_place_of_the_one_it_supersedes(tmp_path, common):
    path = tmp_path / "RESULTS.md"
    meta = {"command": "python a.py", "machine": "CPU", "path": path, "commit": "abc1234",
            "when": "2026-01-01 10:00 UTC"}
    for name in ("Alpha", "Old name", "Beta"):
        common.write_result_section(name, f"{name} body", **meta)
    common.write_result_section("New name", "new body", supersedes=("Old name",), **meta)
    text = path.read_text()
    assert "## Old name" not in text and "Old name body" not in text
    assert text.index("## Alpha") < text.index("## New name") < text.index("## Beta")
    common.write_result_section("New name", "newer body", supersedes=("Old name",), **meta)
    text = path.read_text()
    assert text.count("## New name") == 1 and "newer body" in text and "new body" not in text


def test_shipped_results_have_one_section_per_measurement(common):
    chunks = common.split_result_sections(common.RESULTS.read_text())
    names = [n for n, _ in chunks if n is not None]
    assert names and len(names) == len(set(names))
    for name, lines in chunks:
        if name is not None:
            assert lines[1] == f"## {name}" and lines[3] == "| date | commit | machine | command |"


def test_predict_benchmark_rounds_give_the_median_time_and_largest_rss():
    """benchmarks/predict.py --repeat: one tool's rounds become one row (median time, largest peak RSS); a tool
    whose faces or labels change between rounds is an error, not a number."""
    sys.path.insert(0, str(BENCH))
    try:
        import predict
    finally:
        sys.path.remove(str(BENCH))
    rounds = [{"s": 10.8, "rss": 5, "faces": 616, "labels": {"a": "Positive"}},
              {"s": 11.0, "rss": 9, "faces": 616, "labels": {"a": "Positive"}},
              {"s": 10.6, "rss": 7, "faces": 616, "labels": {"a": "Positive"}}]
    row = predict.median_run(rounds)
    assert row["s"] == 10.8 and row["rss"] == 9 and row["faces"] == 616
    assert predict.median_run(rounds[:1])["s"] == 10.8
    with pytest.raises(SystemExit, match="other faces or labels"):
        predict.median_run([*rounds, {**rounds[0], "labels": {"a": "Negative"}}])
    with pytest.raises(SystemExit):
        predict.main(["--repeat", "0"])


def test_profile_stage_times_are_each_stage_own_and_add_up():
    """benchmarks/profile_predict.py: a timed stage called inside another is counted once, in its own stage."""
    import time

    sys.path.insert(0, str(BENCH))
    try:
        import profile_predict
    finally:
        sys.path.remove(str(BENCH))
    timer = profile_predict.StageTimer()
    inner = timer.wrap(lambda n: time.sleep(0.02 * n), "inner", lambda n: n)
    skipped = timer.wrap(lambda: time.sleep(0.01), lambda: None)  # not timed: stays with its caller

    def body() -> None:
        time.sleep(0.01)
        inner(1)
        inner(2)
        skipped()

    outer = timer.wrap(body, "outer")
    t0 = time.perf_counter()
    outer()
    wall = time.perf_counter() - t0
    assert timer.order == ["inner", "outer"]
    assert timer.calls == {"inner": 2, "outer": 1} and timer.inputs["inner"] == 3
    assert 0.06 <= timer.seconds["inner"] < 0.06 + 0.05 and 0.02 <= timer.seconds["outer"] < 0.02 + 0.05
    assert abs(sum(timer.seconds.values()) - wall) < 0.01


def test_fallback_calibration_is_fitted_on_the_photos_the_fallback_labels(tmp_path):
    """benchmarks/group_accuracy.py: a weight-0 fallback's temperature comes from the validation photos with
    fewer than min_faces faces (where it speaks), and is checked on such test photos; group photos are ignored."""
    import numpy as np

    sys.path.insert(0, str(BENCH))
    try:
        import group_accuracy
    finally:
        sys.path.remove(str(BENCH))
    from groupmood.fusion.calibration import Calibration
    from groupmood.engine.group_cv import Evidence, Stack

    rng = np.random.default_rng(0)

    def evidence(n: int) -> Evidence:
        y = rng.integers(0, 3, n)
        faces = [np.zeros((int(rng.integers(0, 4)), 2)) for _ in range(n)]
        alone = np.array([len(f) < 2 for f in faces])
        sure = np.full((n, 3), 0.005)
        hit = rng.random(n) < 0.7  # right 70% of the time, always 99% sure: overconfident
        sure[np.arange(n), np.where(hit, y, (y + 1) % 3)] = 0.99
        crowd = np.tile([0.2, 0.2, 0.6], (n, 1))  # on group photos: something else entirely
        probs = np.where(alone[:, None], sure, crowd)
        return Evidence([f"p{i}" for i in range(n)], y, {"global": probs, "nonaligned": crowd},
                        {"global": np.ones(n, bool), "nonaligned": ~alone}, ("nonaligned",),  # min_faces 2
                        faces, [np.full(len(f), 0.01) for f in faces])

    key = "k"
    for split, n in (("val", 400), ("test", 400)):
        evidence(n).save(tmp_path / f"evidence_sentiment-{split}-{key}.npz")
    stack = Stack(None, None, {"global": Calibration(24.0)}, "weighted", {"global": 0.0, "group": 1.0}, None,
                  fallback=("global",))
    cals, stats = group_accuracy.fallback_calibration(tmp_path, tmp_path / "unused.yaml", stack, tmp_path, key)
    assert set(cals) == {"global"} and 1.0 < cals["global"].temperature < 24.0  # overconfident: softened, not flat
    st = stats["global"]
    assert st["test_nll"] < st["test_nll_before"] and st["test_ece"] < st["test_ece_before"]
    assert 0.6 < st["test_accuracy"] < 0.8 and st["fitted_on"] < 400
    weighted = Stack(None, None, {"global": Calibration(24.0)}, "weighted", {"global": 0.5}, None, fallback=("global",))
    assert group_accuracy.fallback_calibration(tmp_path, tmp_path / "unused.yaml", weighted, tmp_path, key) == ({}, {})
