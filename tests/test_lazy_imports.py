"""Import hygiene: the CPU/ONNX Runtime path never imports torch.

Each check runs in a fresh interpreter (``sys.executable -c ...``): ``sys.modules`` of this test
process already holds torch (conftest imports it).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from groupmood.cli import COMMANDS, SUMMARIES, cli, main

HEAVY = ("torch", "torchvision")


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; it prints JSON on its last stdout line."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _loaded_after(statement: str) -> dict[str, bool]:
    """Which of torch / torchvision are in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    proc = _run(f"""
        import json, sys
        {statement}
        print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))
    """)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _no_heavy(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert not any(loaded.values()), f"{statement!r} imported {[m for m, v in loaded.items() if v]}"


@pytest.mark.parametrize("module", [
    "groupmood",
    "groupmood.cli",
    "groupmood.fusion.calibration",
    "groupmood.fusion",
    "groupmood.fusion.model",
    "groupmood.io",
    "groupmood.labels",
    "groupmood.fusion.linear",
    "groupmood.models",
    "groupmood.models.registry",
    "groupmood.samples",
    "groupmood.weights",
    "groupmood.report",
    "groupmood.detect",
    "groupmood.pipeline",
    "groupmood.runtime",
    "groupmood.inputs",
])
@pytest.mark.integration
def test_import_leaves_torch_out(module: str) -> None:
    _no_heavy(f"import {module}")


@pytest.mark.integration
def test_help_lists_every_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "groupmood.cli", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("Commands:", 1)[1].split()
    for name in COMMANDS:
        assert name in listed, f"{name} missing from groupmood --help:\n{proc.stdout}"
    assert set(COMMANDS) == {"cache", "detect", "evaluate", "evaluate-groups", "export", "fit-bundle", "fuse",
                             "merge", "predict", "samples", "serve", "train", "weights"}


@pytest.mark.parametrize(("command", "allowed"), [
    ("samples", {"groupmood.cli.samples"}),
    ("predict", {"groupmood.cli.predict", "groupmood.cli.common"}),
])
@pytest.mark.integration
def test_invoking_a_command_imports_only_its_module(command: str, allowed: set[str]) -> None:
    proc = _run(f"""
        import json, sys
        from groupmood.cli import main
        rc = main([{command!r}, "--help"])
        print(json.dumps([rc, sorted(m for m in sys.modules if m.startswith("groupmood.cli."))]))
    """)
    assert proc.returncode == 0, proc.stderr
    rc, modules = json.loads(proc.stdout.splitlines()[-1])
    assert rc == 0 and command in {m.rsplit(".", 1)[1] for m in modules} and set(modules) <= allowed, modules


@pytest.mark.integration
def test_top_level_help_imports_no_command() -> None:
    """``groupmood --help`` lists the commands from their stored summaries: no command module, no torch."""
    proc = _run("""
        import json, sys
        from groupmood.cli import main
        rc = main(["--help"])
        print(json.dumps([rc, sorted(m for m in sys.modules if m.startswith("groupmood.cli.")), "torch" in sys.modules]))
    """)
    assert proc.returncode == 0, proc.stderr
    rc, modules, torch_loaded = json.loads(proc.stdout.splitlines()[-1])
    assert rc == 0 and modules == [] and torch_loaded is False


def test_stored_summaries_are_the_commands_own() -> None:
    """Each summary shown without importing the command is the first sentence of the command's own help."""
    import click

    ctx = click.Context(cli)
    assert set(SUMMARIES) == set(COMMANDS)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert SUMMARIES[name] == cmd.get_short_help_str(limit=10**6), name


@pytest.mark.integration
def test_predict_help_leaves_torch_out() -> None:
    _no_heavy("from groupmood.cli import main; main(['predict', '--help'])")


def test_unknown_command_is_a_clean_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "No such command 'no-such-command'" in err and "Traceback" not in err


@pytest.mark.integration
def test_unknown_command_imports_no_command_module() -> None:
    proc = _run("""
        import json, sys
        from groupmood.cli import main
        rc = main(["no-such-command"])
        print(json.dumps([rc, sorted(m for m in sys.modules if m.startswith("groupmood.cli."))]))
    """)
    rc, modules = json.loads(proc.stdout.splitlines()[-1])
    assert rc == 2 and modules == []
    assert "No such command 'no-such-command'" in proc.stderr


@pytest.mark.integration
def test_numpy_inference_leaves_torch_out(tmp_path: Path) -> None:
    """A saved fusion model loads and predicts, a calibration and a linear head apply, without torch."""
    from groupmood.fusion.calibration import Calibration
    from groupmood.fusion.model import FusionModel
    from groupmood.labels import FERPLUS_EMOTIONS, valence_array, valence_matrix
    from groupmood.fusion.linear import LinearHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, size=60)
    model = FusionModel.fit(x, y, ["a"], [], c=1.0)
    path = model.save(tmp_path / "fusion.safetensors")
    expected = model.predict_proba(x[:4])
    calibrated = Calibration(2.0, (0.1, -0.2, 0.1)).apply(expected)
    head = LinearHead(np.arange(15.0).reshape(3, 5) / 10, np.zeros(3))
    np.testing.assert_array_equal(valence_matrix(FERPLUS_EMOTIONS).numpy(), valence_array(FERPLUS_EMOTIONS))

    proc = _run("""
        import json, sys
        import numpy as np
        from groupmood.fusion.calibration import Calibration
        from groupmood.fusion.model import FusionModel
        from groupmood.labels import FERPLUS_EMOTIONS, valence_array
        from groupmood.fusion.linear import LinearHead
        x = np.asarray(json.loads(sys.argv[2]))
        p = FusionModel.load(sys.argv[1]).predict_proba(x)
        c = Calibration(2.0, (0.1, -0.2, 0.1)).apply(p)
        h = LinearHead(np.arange(15.0).reshape(3, 5) / 10, np.zeros(3)).probs(x)
        v = valence_array(FERPLUS_EMOTIONS)
        print(json.dumps({"p": p.tolist(), "c": c.tolist(), "h": h.tolist(), "v": v.shape,
                          "heavy": [m for m in ("torch", "torchvision") if m in sys.modules]}))
    """, str(path), json.dumps(x[:4].tolist()))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["heavy"] == []
    np.testing.assert_allclose(out["p"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["c"], calibrated, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["h"], head.probs(x[:4]), rtol=0, atol=1e-12)
    assert out["v"] == [len(FERPLUS_EMOTIONS), 3]
