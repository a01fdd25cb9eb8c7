"""The README's Python examples run as pasted, in an empty folder, and print what the page says they print."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def _run(code: str, cwd) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
def test_first_python_example_prints_labels_with_class_names(tmp_path):
    lines = _run(BLOCKS[0], tmp_path).splitlines()
    assert len(lines) == 3, lines
    group, coffee, one = lines
    for line in (group, coffee):
        assert re.match(r"^(Negative|Neutral|Positive) \{'Negative': [0-9.e-]+, 'Neutral': [0-9.e-]+, "
                        r"'Positive': [0-9.e-]+\} ", line), line
    assert group.endswith("False") and coffee.endswith("[] True")  # five faces vs the coffee cup's none
    assert one.split()[0] == group.split()[0]
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


@pytest.mark.slow
def test_lower_level_python_example_runs(tmp_path):
    lines = _run(BLOCKS[1], tmp_path).splitlines()
    assert lines == ["5 (5, 112, 96, 3) (5, 48, 48)", "1 (1, 112, 96, 3) (1, 48, 48)"]


@pytest.mark.shared
@pytest.mark.slow
def test_train_your_own_model_loop_runs_as_written(tmp_path):
    """The README's "Train your own model" block, line by line, in a folder that looks like the repo root
    (configs/ and .venv/ linked, ../shared beside it): every step exits 0, the overfit check ends near zero
    loss and the bundle of the new model labels the group sample."""
    import json

    from conftest import SHARED_DATA, shared_path

    shared_path("ckplus48")
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Train your own model", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("configs", ".venv"):
        (root / name).symlink_to(REPO / name)
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    overfit = [json.loads(x) for x in (root / "runs" / "overfit" / "metrics.jsonl").read_text().splitlines()]
    assert overfit[-1]["train_loss"] < 0.05
    record = json.loads((root / "runs" / "mine" / "group.jsonl").read_text())
    assert record["n_faces"] == 5 and record["branches"]["mine"]["spoke"]
