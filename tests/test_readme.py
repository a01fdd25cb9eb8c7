"""The README and docs/ as a newcomer meets them: the examples run as written and print what the pages say,
every command in the README is run by a test here or by ``.ci/run``, the README stays short, and every
relative link in README.md and docs/*.md points to a file (and heading) that exists."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
CI = REPO / ".ci" / "run"
README_MAX_BYTES = 15_000

SHELL_LANGS = ("bash", "sh", "shell", "console", "")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```([\w-]*)\n(.*?)^```", text, re.S | re.M)


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of the same or a higher level
    (lines in code blocks are not headings)."""
    level = len(heading) - len(heading.lstrip("#"))
    out, inside, fence = None, False, False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            if inside and len(line) - len(line.lstrip("#")) <= level:
                break
            if line.rstrip("\n") == heading:
                inside, out = True, []
                continue
        if inside:
            out.append(line)
    assert out is not None, f"no section {heading!r}"
    return "".join(out)


def _first_block(text: str, lang: str) -> str:
    return next(body for language, body in _fenced(text) if language == lang)


BLOCKS = [body for lang, body in _fenced(_text(README)) if lang == "python"]


def _strip_comment(line: str) -> str:
    """A shell line without its trailing ``# comment`` (a ``#`` outside quotes, at the start or after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(text: str) -> list[str]:
    """Every command of the page's shell code blocks: continuation lines joined, comments dropped, ``a && b``
    split into ``a`` and ``b``."""
    out = []
    for lang, body in _fenced(text):
        if lang not in SHELL_LANGS:
            continue
        for line in re.sub(r"[ \t]*\\\n\s*", " ", body).splitlines():
            line = _strip_comment(line)
            out += [part.strip() for part in line.split(" && ") if part.strip()]
    return out


#: Every command in the README's code blocks that .ci/run does not run, and the test here that runs it.
#: A test that runs several runs them in this order, as one script.
COMMANDS: dict[str, str] = {
    '.venv/bin/groupmood predict "$(.venv/bin/groupmood samples group)" -o out/predictions.jsonl '
    '--annotate out/annotated --report out/report.html': "test_first_command_labels_the_sample",
    'mkdir -p photos': "test_command_line_example_runs_as_written",
    'cp "$(.venv/bin/groupmood samples group)" "$(.venv/bin/groupmood samples coffee)" photos/':
        "test_command_line_example_runs_as_written",
    '.venv/bin/groupmood predict photos/ --format csv -o out/photos.csv': "test_command_line_example_runs_as_written",
    '.venv/bin/groupmood predict photos/ --bundle crowd': "test_command_line_example_runs_as_written",
    '.venv/bin/groupmood detect photos/ --crops out/crops': "test_command_line_example_runs_as_written",
}


def _ci_commands() -> list[str]:
    return shell_commands("```bash\n" + _text(CI) + "```\n")


def _script_of(test_name: str) -> str:
    return "\n".join(cmd for cmd, name in COMMANDS.items() if name == test_name) + "\n"


def _repo_like(tmp_path: Path, *names: str) -> Path:
    """An empty folder that looks like the repo root to the README's commands (.venv and ``names`` linked)."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in (".venv", *names):
        (root / name).symlink_to(REPO / name)
    return root


def _bash(script: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _run(code: str, cwd) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# --------------------------------------------------------------------------- the page itself

def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; at most {README_MAX_BYTES}: move detail to docs/"


def test_readme_starts_with_the_two_commands():
    commands = shell_commands(_text(README))
    assert commands[:4] == [
        "bash scripts/setup.sh",
        '.venv/bin/groupmood predict "$(.venv/bin/groupmood samples group)" -o out/predictions.jsonl '
        "--annotate out/annotated --report out/report.html",
        "bash scripts/setup.sh",
        ".venv/bin/python -m pytest -q",
    ], commands[:4]


def test_readme_lists_every_shipped_model_and_its_card():
    """One model table in the README: every shipped model file, linked to its card where it has one."""
    table = _section(_text(README), "## Shipped models")
    assets = REPO / "src" / "groupmood" / "assets"
    for f in sorted(assets.glob("*.safetensors")):
        assert f"`{f.stem}`" in table, f"{f.name} is not in the README's model table"
        card = f.with_suffix(".md")
        if card.is_file():
            assert f"(src/groupmood/assets/{card.name})" in table, f"the README's model table does not link {card.name}"


def test_accuracy_figures_are_only_in_cards_and_results():
    """No percentage in the README or docs/ but the detector's smallest face and the name of an interval: the
    figures live in the model cards and benchmarks/RESULTS.md, which the pages link."""
    for page in [README, *DOCS]:
        text = _text(page)
        if text.startswith("# Model card"):
            continue
        figures = re.findall(r"\d+(?:\.\d+)?\s?%(?!\s+of\s+the\s+shorter\s+side)(?!\s+intervals)", text)
        assert not figures, f"{page.relative_to(REPO)} states figures {figures}: link the card or RESULTS.md instead"


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 1
    assert [lang for lang, _ in _fenced(_text(REPO / "docs" / "python.md"))].count("python") >= 1


def test_every_readme_command_is_run_by_a_test_or_ci():
    """Each command in the README's code blocks is in .ci/run or in COMMANDS; each COMMANDS entry is still in the
    README and names a test of this module."""
    readme = shell_commands(_text(README))
    ci = _ci_commands()
    uncovered = [c for c in readme if c not in ci and c not in COMMANDS]
    assert not uncovered, f"README commands run by no test and not by .ci/run (add them to COMMANDS): {uncovered}"
    stale = [c for c in COMMANDS if c not in readme]
    assert not stale, f"COMMANDS entries no longer in the README: {stale}"
    missing = sorted({name for name in COMMANDS.values() if not callable(globals().get(name))})
    assert not missing, f"COMMANDS names tests that do not exist: {missing}"


def test_shell_commands_reads_blocks_as_bash_does():
    text = ("```bash\nA && B   # note\n# whole-line comment\nC --x 'a # b' \\\n    --y\n```\n"
            "```python\nprint('not shell')\n```\n")
    assert shell_commands(text) == ["A", "B", "C --x 'a # b' --y"]


# --------------------------------------------------------------------------- links

def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", _text(path), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", _text(path), flags=re.S | re.M)   # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)                                 # inline code
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(page: Path):
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):   # http:, https:, mailto:
            continue
        target, _, fragment = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link} (no such file)")
        elif fragment and path.suffix == ".md" and fragment not in _anchors(path):
            broken.append(f"{link} (no heading #{fragment} in {path.name})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_link_check_finds_broken_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n## A heading, with: punctuation\n", encoding="utf-8")
    page.write_text("[ok](other.md#a-heading-with-punctuation) [bad](missing.md) [bad anchor](other.md#nope) "
                    "`[code](missing.md)` [web](https://example.org/x)\n", encoding="utf-8")
    assert _links(page) == ["other.md#a-heading-with-punctuation", "missing.md", "other.md#nope",
                            "https://example.org/x"]
    assert _anchors(tmp_path / "other.md") == {"other", "a-heading-with-punctuation"}


# --------------------------------------------------------------------------- the commands, run as written

@pytest.mark.slow
@pytest.mark.integration
def test_first_command_labels_the_sample(tmp_path):
    """The README's first command after set-up (.ci/run runs scripts/setup.sh): the record, the annotated
    picture and the HTML report of the five-person sample."""
    root = _repo_like(tmp_path)
    _bash(_script_of("test_first_command_labels_the_sample"), root)
    (record,) = [json.loads(x) for x in (root / "out" / "predictions.jsonl").read_text().splitlines()]
    assert record["n_faces"] == 5 and record["label"] in ("Negative", "Neutral", "Positive")
    assert len(list((root / "out" / "annotated").iterdir())) == 1
    assert "<html" in (root / "out" / "report.html").read_text(encoding="utf-8").lower()


@pytest.mark.slow
@pytest.mark.integration
def test_command_line_example_runs_as_written(tmp_path):
    """The README's command-line example: a folder of two photos labelled as CSV, with the crowd bundle, and
    its faces cropped."""
    import csv

    root = _repo_like(tmp_path)
    out = _bash(_script_of("test_command_line_example_runs_as_written"), root)
    rows = list(csv.DictReader((root / "out" / "photos.csv").open(encoding="utf-8")))
    assert sorted(Path(r["file"]).name for r in rows) == ["coffee.png", "multi_face.jpg"]
    assert all(r["label"] in ("Negative", "Neutral", "Positive") for r in rows)
    records = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    crowd = [r for r in records if "branches" in r]   # predict's records; detect's have no branches
    assert len(crowd) == 2 and all(r["label"] in ("Negative", "Neutral", "Positive") for r in crowd)
    crops = [p for p in (root / "out" / "crops").rglob("*") if p.is_file()]
    assert len(crops) >= 10   # five faces, two crops each


@pytest.mark.slow
@pytest.mark.integration
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
@pytest.mark.integration
def test_lower_level_python_example_runs(tmp_path):
    """docs/python.md's detector example."""
    block = _first_block(_text(REPO / "docs" / "python.md"), "python")
    lines = _run(block, tmp_path).splitlines()
    assert lines == ["5 (5, 112, 96, 3) (5, 48, 48)", "1 (1, 112, 96, 3) (1, 48, 48)"]


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.integration
def test_train_your_own_model_loop_runs_as_written(tmp_path):
    """docs/training.md's "The whole loop" block, line by line, in a folder that looks like the repo root
    (configs/ and .venv/ linked, ../shared beside it): every step exits 0, the overfit check ends near zero
    loss and the bundle of the new model labels the group sample."""
    from conftest import SHARED_DATA, shared_path

    shared_path("ckplus48")
    section = _section(_text(REPO / "docs" / "training.md"), "## The whole loop")
    block = _first_block(section, "bash")
    root = _repo_like(tmp_path, "configs")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    _bash(block, root, timeout=900)
    overfit = [json.loads(x) for x in (root / "runs" / "overfit" / "metrics.jsonl").read_text().splitlines()]
    assert overfit[-1]["train_loss"] < 0.05
    record = json.loads((root / "runs" / "mine" / "group.jsonl").read_text())
    assert record["n_faces"] == 5 and record["branches"]["mine"]["spoke"]
