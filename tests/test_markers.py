"""The split into fast unit tests and integration tests (docs/development.md, "Fast and integration tests").

Every test that starts another process (a subprocess, torchrun, a fresh interpreter), a real browser or a real
server, or runs the default bundle end to end through the command line, is marked ``integration``, so that
``pytest -m "not integration and not slow"`` is the fast unit run. The test modules are read (not imported)
and each test is followed through the module's own helpers and fixtures, and conftest's ``browser`` fixture,
to what it starts.
"""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

#: Modules whose import or use starts a process, a browser or a server.
SPAWNING_MODULES = frozenset({"subprocess", "multiprocessing", "uvicorn", "pexpect", "_chromium"})
#: Names that start a process, a browser or a server (tests/_chromium.py's Chromium, tests/serving.py's
#: running_server, subprocess's Popen / run when imported by name, ...).
SPAWNING_NAMES = frozenset({"subprocess", "multiprocessing", "uvicorn", "Popen", "Chromium", "running_server"})
#: ``os`` functions that start a process, and ``sys.executable`` (a fresh interpreter).
SPAWNING_OS = re.compile(r"^(fork|forkpty|system|popen|posix_spawnp?|spawn\w*|exec\w*)$")
#: conftest fixtures that mean a real browser.
INTEGRATION_FIXTURES = {"browser": "uses conftest's browser fixture (a real Chromium)"}


def _mark_names(node: ast.AST | None) -> set[str]:
    """The X of every ``pytest.mark.X`` (called or not) in an expression: a decorator or a pytestmark value."""
    names = set()
    for n in ast.walk(node) if node is not None else ():
        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
                and isinstance(n.value.value, ast.Name) and n.value.value.id == "pytest"):
            names.add(n.attr)
    return names


def _pytestmark(body: list[ast.stmt]) -> set[str]:
    """The marks of a module's or a class's ``pytestmark = ...``."""
    marks = set()
    for stmt in body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
                marks |= _mark_names(stmt.value)
    return marks


def _default_bundle_cli(call: ast.Call) -> bool:
    """``main(["predict", ...])`` without ``--bundle`` (nor ``--help``): the default bundle end to end."""
    if not (isinstance(call.func, ast.Name) and call.func.id == "main" and call.args
            and isinstance(call.args[0], ast.List) and call.args[0].elts):
        return False
    elts = call.args[0].elts
    if any(isinstance(e, ast.Starred) for e in elts):
        return False  # arguments this reading cannot see
    words = {e.value for e in elts if isinstance(e, ast.Constant)}
    first = elts[0]
    return isinstance(first, ast.Constant) and first.value == "predict" and not words & {"--bundle", "--help"}


def _direct_reason(node: ast.AST) -> str | None:
    """Why ``node`` (a function or a class) is integration by what it itself does, or None."""
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            for alias in n.names:
                if alias.name.split(".")[0] in SPAWNING_MODULES:
                    return f"imports {alias.name}"
        elif isinstance(n, ast.ImportFrom):
            if (n.module or "").split(".")[0] in SPAWNING_MODULES:
                return f"imports from {n.module}"
            if any(alias.name in SPAWNING_NAMES for alias in n.names):
                return f"imports {n.names[0].name} from {n.module}"
        elif isinstance(n, ast.Name) and n.id in SPAWNING_NAMES:
            return f"uses {n.id}"
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
            if n.value.id == "sys" and n.attr == "executable":
                return "runs sys.executable (a fresh interpreter)"
            if n.value.id == "os" and SPAWNING_OS.match(n.attr):
                return f"calls os.{n.attr}"
        elif isinstance(n, ast.Call) and _default_bundle_cli(n):
            return "runs the default bundle through the command line (main(['predict', ...]) without --bundle)"
    return None


def _fixture_name(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The name a ``@pytest.fixture(name=...)`` is requested by, where it gives one."""
    for dec in node.decorator_list:
        if isinstance(dec, ast.Call):
            for kw in dec.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
    return None


def unmarked_integration_tests(source: str, ignore_marks: bool = False) -> list[tuple[str, str]]:
    """(test, why) for each test of a module's ``source`` that is integration but not marked so.

    A test is integration when it, one of the module's functions, classes or fixtures it names (as a parameter
    or in its body), or conftest's ``browser`` fixture starts a process, a browser or a server, or runs the
    default bundle through the command line. ``ignore_marks`` reads the module as if it had no marks at all.
    """
    tree = ast.parse(source)
    defs: dict[str, ast.AST] = {}  # the module's helpers and fixtures, by the name they are used by
    tests: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, set[str]]] = []  # (id, node, its marks)
    module_marks = set() if ignore_marks else _pytestmark(tree.body)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("test"):
                tests.append((node.name, node, module_marks | _mark_names(ast.Module(node.decorator_list, []))))
            else:
                defs[node.name] = node
                if (alias := _fixture_name(node)) is not None:
                    defs[alias] = node
        elif isinstance(node, ast.ClassDef):
            if node.name.startswith("Test"):
                class_marks = module_marks | _pytestmark(node.body) | _mark_names(ast.Module(node.decorator_list, []))
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                        marks = class_marks | _mark_names(ast.Module(item.decorator_list, []))
                        tests.append((f"{node.name}::{item.name}", item, marks))
            else:
                defs[node.name] = node
    if ignore_marks:
        tests = [(name, node, set()) for name, node, _ in tests]

    def used(node: ast.AST) -> set[str]:
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # fixtures are requested as parameters
            a = node.args
            names |= {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
        return names

    reasons = {name: why for name, node in defs.items() if (why := _direct_reason(node))}
    for name, why in INTEGRATION_FIXTURES.items():
        reasons.setdefault(name, why)
    changed = True
    while changed:  # through helpers that call helpers, fixtures that request fixtures
        changed = False
        for name, node in defs.items():
            if name not in reasons:
                via = sorted(u for u in used(node) - {name} if u in reasons)
                if via:
                    reasons[name] = f"{via[0]}: {reasons[via[0]]}"
                    changed = True

    unmarked = []
    for name, node, marks in tests:
        if "integration" in marks:
            continue
        why = _direct_reason(node)
        if why is None:
            via = sorted(u for u in used(node) if u in reasons)
            why = f"{via[0]}: {reasons[via[0]]}" if via else None
        if why is not None:
            unmarked.append((name, why))
    return unmarked


# --------------------------------------------------------------------------- the suite itself

MODULES = sorted(TESTS.glob("test_*.py"))


def test_every_test_that_starts_a_process_browser_or_server_is_marked_integration():
    unmarked = [f"{path.name}::{name} ({why})" for path in MODULES
                for name, why in unmarked_integration_tests(path.read_text(encoding="utf-8"))]
    assert not unmarked, ("not marked integration (add `pytestmark = pytest.mark.integration` to the module, or "
                          "`@pytest.mark.integration` above the test):\n  " + "\n  ".join(unmarked))


@pytest.mark.parametrize("module", ["test_kill_resume.py", "test_report_browser.py", "test_serve_browser.py",
                                    "test_distributed_train.py", "test_readme.py", "test_lazy_imports.py"])
def test_the_check_finds_the_known_integration_tests_without_their_marks(module):
    """Read as if unmarked, the modules that start torchrun, browsers, servers, interpreters are caught."""
    found = unmarked_integration_tests((TESTS / module).read_text(encoding="utf-8"), ignore_marks=True)
    assert found, module


def test_markers_are_registered_and_strict(pytestconfig):
    markers = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert {"integration", "slow", "shared"} <= markers
    assert pytestconfig.option.strict_markers or pytestconfig.getini("strict_markers"), "--strict-markers"


def test_ci_runs_every_marker():
    """CI (.ci/run) runs the whole suite: no ``-m`` selection on its pytest command."""
    lines = [ln for ln in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
             if "pytest" in ln and not ln.lstrip().startswith("#")]
    assert lines and not any(re.search(r"pytest\b.*\s-m\b", ln) for ln in lines), lines


# --------------------------------------------------------------------------- the check on small modules

SPAWNS = """
import subprocess, sys
import pytest
{mark}

def _run(code):
    return subprocess.run([sys.executable, "-c", code], check=True)

@pytest.fixture
def started():
    return _run("pass")

{decorator}
def test_spawns():
    _run("pass")

def test_via_fixture(started):
    pass

def test_unit():
    assert 1 + 1 == 2
"""


def _check(source: str, **fill: str) -> list[str]:
    src = source.format(**{"mark": "", "decorator": "", **fill})
    return [name for name, _ in unmarked_integration_tests(textwrap.dedent(src))]


def test_check_flags_unmarked_tests_through_helpers_and_fixtures():
    assert _check(SPAWNS) == ["test_spawns", "test_via_fixture"]
    assert _check(SPAWNS, mark="pytestmark = pytest.mark.integration") == []
    assert _check(SPAWNS, mark="pytestmark = [pytest.mark.slow, pytest.mark.integration]") == []
    assert _check(SPAWNS, decorator="@pytest.mark.integration") == ["test_via_fixture"]
    assert _check(SPAWNS, decorator="@pytest.mark.slow") == ["test_spawns", "test_via_fixture"]


def test_check_flags_browsers_servers_torchrun_and_the_default_bundle_cli():
    cases = {
        "def test_a(browser):\n    pass": ["test_a"],
        "from _chromium import Chromium\ndef test_a(tmp_path):\n    Chromium('x', tmp_path)": ["test_a"],
        ("from serving import running_server\nimport pytest\n@pytest.fixture\ndef server(app):\n"
         "    with running_server(app) as hp:\n        yield hp\ndef test_a(server):\n    pass"): ["test_a"],
        "import os\ndef test_a():\n    os.fork()": ["test_a"],
        "from subprocess import Popen\ndef test_a():\n    Popen(['torchrun'])": ["test_a"],
        "class Worker:\n    def start(self):\n        import subprocess\ndef test_a():\n    Worker().start()": ["test_a"],
        "def test_a(tmp_path):\n    main(['predict', str(tmp_path), '-o', 'p.jsonl'])": ["test_a"],
        "def test_a(b):\n    main(['predict', 'x.jpg', '--bundle', str(b)])": [],
        "def test_a():\n    main(['predict', '--help'])": [],
        "class TestA:\n    def test_b(self, browser):\n        pass": ["TestA::test_b"],
        "import pytest\n@pytest.mark.integration\nclass TestA:\n    def test_b(self, browser):\n        pass": [],
    }
    for source, want in cases.items():
        assert [name for name, _ in unmarked_integration_tests(source)] == want, source
