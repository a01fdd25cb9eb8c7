"""Sharded ``groupmood predict``: 2 shards (run in either order) merged equal the unsharded run on real
photos; an interrupted shard resumes without redoing finished photos; merge refuses what it cannot join."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from test_kill_resume import _photos
from test_pipeline import _bundle

from groupmood.cli import main
from groupmood.shard import Shard, merge_predictions, parse_shard, shard_output


@pytest.fixture(scope="module")
def setup(tmp_path_factory, detector) -> dict:
    """Real photos (scikit-image's, a broken file among them), a tiny bundle, and an unsharded run per format."""
    root = tmp_path_factory.mktemp("shard")
    n = _photos(root / "in")
    Image.open(root / "in" / "coffee.jpg").save(root / "in" / "coffee-copy.png")
    bundle = _bundle(root / "bundle", with_global=False)
    runs = {}
    for fmt in ("jsonl", "csv"):
        out = root / f"whole.{fmt}"
        assert main(["predict", str(root / "in"), "--bundle", str(bundle), "-o", str(out), "--format", fmt,
                     "--no-progress", "--batch-size", "3"]) == 1  # the broken file
        runs[fmt] = out
    return {"root": root, "bundle": bundle, "n": n + 1, "whole": runs}


def _predict(setup: dict, out: Path, *extra: str) -> int:
    return main(["predict", str(setup["root"] / "in"), "--bundle", str(setup["bundle"]), "-o", str(out),
                 "--no-progress", "--batch-size", "2", *extra])


def test_parse_shard_and_names():
    assert parse_shard("1/4") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    assert Shard(1, 3).take(list(range(8))) == [1, 4, 7]
    assert shard_output(Path("out/preds.jsonl"), Shard(2, 3)) == Path("out/preds.shard-2-of-3.jsonl")
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(Exception, match="I/N"):
            parse_shard(bad)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_two_shards_in_any_order_merge_to_the_unsharded_output(setup, tmp_path, capsys, fmt):
    out = tmp_path / f"preds.{fmt}"
    assert _predict(setup, out, "--format", fmt, "--shard", "1/2") in (0, 1)
    assert not out.exists() and "waiting for shard(s) 0" in capsys.readouterr().err
    with pytest.raises(Exception, match="not complete"):
        merge_predictions(out)
    assert _predict(setup, out, "--format", fmt, "--shard", "0/2") in (0, 1)
    assert "merged 2 shards" in capsys.readouterr().err
    whole = setup["whole"][fmt].read_bytes()
    assert out.read_bytes() == whole
    out.unlink()
    assert main(["merge", str(out)]) == 0 and out.read_bytes() == whole  # by hand, same bytes
    shard0 = shard_output(out, Shard(0, 2))
    assert 0 < len(shard0.read_text().splitlines()) < len(whole.decode().splitlines())


@pytest.mark.slow
def test_torchrun_environment_shards_and_interrupted_shard_resumes(setup, tmp_path, monkeypatch, capsys):
    """RANK / WORLD_SIZE from torchrun pick the shard; a shard cut short continues with --resume."""
    out = tmp_path / "preds.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert _predict(setup, out) in (0, 1)
    assert out.read_bytes() == setup["whole"]["jsonl"].read_bytes()
    assert _predict(setup, out, "--shard", "0/2") == 2  # both ways of sharding at once: usage error
    assert "--shard and torchrun" in capsys.readouterr().err

    # shard 1 "killed" after one photo: its file cut back to one good record, left as FILE.partial
    monkeypatch.setenv("RANK", "1")
    shard1 = shard_output(out, Shard(1, 2))
    kept = next(x for x in shard1.read_text().splitlines() if '"error"' not in x)
    shard1.with_name(shard1.name + ".partial").write_text(kept + "\n")
    shard1.unlink()
    out.unlink()
    capsys.readouterr()
    assert _predict(setup, out, "--resume") in (0, 1)
    assert "already done: 1" in capsys.readouterr().err
    assert out.read_bytes() == setup["whole"]["jsonl"].read_bytes()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == setup["n"] and len({r["file"] for r in records}) == setup["n"]


def test_merge_refuses_shards_of_other_inputs(setup, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    one = setup["root"] / "in" / "astronaut.jpg"
    assert main(["predict", str(one), "--bundle", str(setup["bundle"]), "-o", str(out), "--no-progress",
                 "--shard", "0/2"]) == 0
    assert main(["predict", str(setup["root"] / "in" / "camera.jpg"), str(one), "--bundle", str(setup["bundle"]),
                 "-o", str(out), "--no-progress", "--shard", "1/2"]) == 2
    assert "different inputs" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nothing.jsonl")]) == 2
    assert "no shard outputs" in capsys.readouterr().err
    assert main(["predict", str(one), "--bundle", str(setup["bundle"]), "--shard", "0/2"]) == 2
    assert "give -o FILE" in capsys.readouterr().err
