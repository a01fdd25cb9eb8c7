"""Config system, schedules, the training loop (train, kill + resume, fine-tune), evaluation, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from groupmood.cli import main
from groupmood.config import DEFAULTS, apply_overrides, dump_config, load_config
from groupmood.engine.checkpointing import export
from groupmood.engine.evaluate import classification_report, evaluate_checkpoint, load_model, per_source
from groupmood.engine.samplers import EpochBatchSampler
from groupmood.engine.schedule import lr_at
from groupmood.engine.train import train
from groupmood.errors import ConfigError
from groupmood.labels import FERPLUS_EMOTIONS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# --------------------------------------------------------------------------- helpers

def _write_faces(root: Path, per_class: int | dict[str, int] = 16) -> Path:
    """A learnable folder-per-class set: happy = bright top half, sad = bright bottom, neutral = flat.

    ``per_class``: faces per class, or a {class: count} mapping for an unbalanced set.
    """
    rng = np.random.default_rng(0)
    counts = per_class if isinstance(per_class, dict) else dict.fromkeys(("happy", "sadness", "neutral"), per_class)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = rng.normal(110, 20, (48, 48))
            if cls == "happy":
                img[:24] += 90
            elif cls == "sadness":
                img[24:] += 90
            cv2.imwrite(str(root / cls / f"P{i:02d}_{cls}.png"), np.clip(img, 0, 255).astype(np.uint8))
    return root


def _tiny_cfg(data_root: Path, *overrides: str) -> dict:
    return load_config(CONFIGS / "tiny.yaml", [f"data.root={data_root}", "device=cpu", *overrides])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return _write_faces(tmp_path_factory.mktemp("faces") / "set")


@pytest.fixture(scope="module")
def trained_run(faces, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "tiny"
    train(_tiny_cfg(faces, "train.epochs=3"), run)
    return run


# --------------------------------------------------------------------------- config

def test_config_base_chain_merge_and_overrides(tmp_path):
    (tmp_path / "root.yaml").write_text("model: {name: resnet18_48, drop_rate: 0.5}\noptim: {lr: 0.1}\n")
    (tmp_path / "mid.yaml").write_text("base: root.yaml\nmodel: {drop_rate: 0.9}\ntrain: {epochs: 3}\n")
    (tmp_path / "leaf.yaml").write_text("base: mid.yaml\noptim: {momentum: 0.5}\n")
    cfg = load_config(tmp_path / "leaf.yaml", ["train.epochs=7", "sched.milestones=[10, 20]",
                                               "data.root=null", "model.kwargs.lambda_min=5"])
    assert cfg["model"] == {**DEFAULTS["model"], "name": "resnet18_48", "drop_rate": 0.9,
                            "kwargs": {"lambda_min": 5}}
    assert cfg["optim"]["lr"] == 0.1 and cfg["optim"]["momentum"] == 0.5
    assert cfg["optim"]["weight_decay"] == DEFAULTS["optim"]["weight_decay"]
    assert cfg["train"]["epochs"] == 7 and cfg["sched"]["milestones"] == [10, 20]
    assert cfg["data"]["root"] is None and "base" not in cfg
    dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_config_unknown_keys_and_bad_input(tmp_path):
    (tmp_path / "typo.yaml").write_text("train: {epohcs: 3}\n")
    with pytest.raises(ConfigError, match="train.epohcs"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        apply_overrides(DEFAULTS, ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(DEFAULTS, ["train.epochs"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        apply_overrides(DEFAULTS, ["train=3"])
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_recipes_resolve(recipe):
    """A recipe's model builds from its model section, reads a data kind of its family, and names its command."""
    from groupmood.config import DATA_KINDS
    from groupmood.data.groups import IMAGE_DATA_KINDS
    from groupmood.models import create_model, model_info

    cfg = load_config(CONFIGS / recipe)
    m, kind = cfg["model"], cfg["data"]["kind"]
    with torch.device("meta"):  # the constructor's checks, without the memory of VGG19 or ResNet-101
        create_model(m["name"], num_classes=3, head=m["head"], margin_m=m["margin_m"], drop_rate=m["drop_rate"],
                     **dict(m.get("kwargs") or {}))
    assert kind in DATA_KINDS
    is_global = model_info(m["name"]).family == "global"
    assert (kind in IMAGE_DATA_KINDS) == is_global, f"a {'global' if is_global else 'face'} model reads {kind!r}"
    header = "".join(line for line in (CONFIGS / recipe).read_text().splitlines(True) if line.startswith("#"))
    if not recipe.startswith("base_"):
        assert f"groupmood train configs/{recipe}" in header, "a recipe starts with the command that runs it"


def test_schedules():
    sched = {**DEFAULTS["sched"], "name": "step", "step_epochs": 4, "gamma": 0.1}
    assert [round(lr_at(s, 0.01, sched, 100, 1000), 8) for s in (0, 399, 400, 800)] == [0.01, 0.01, 0.001, 0.0001]
    multi = {**sched, "name": "multistep", "milestones": [1200, 1800]}
    lrs = [round(lr_at(s, 0.01, multi, 50, 2200), 8) for s in (1199, 1200, 1800, 2199)]
    assert lrs == [0.01, 0.001, 0.0001, 0.0001]
    cos = {**sched, "name": "cosine", "warmup_iters": 10, "warmup_factor": 0.0, "min_lr": 0.0}
    assert lr_at(0, 1.0, cos, 10, 110) == 0.0 and lr_at(5, 1.0, cos, 10, 110) == 0.5
    assert lr_at(10, 1.0, cos, 10, 110) == 1.0 and abs(lr_at(60, 1.0, cos, 10, 110) - 0.5) < 1e-9
    with pytest.raises(ConfigError, match="sched.name"):
        lr_at(0, 1.0, {**sched, "name": "poly"}, 10, 100)


def test_epoch_batch_sampler_resumes_mid_epoch():
    full = list(EpochBatchSampler(50, 8, seed=3, epoch=2))
    assert len(full) == 6 and len({i for b in full for i in b}) == 48
    assert list(EpochBatchSampler(50, 8, seed=3, epoch=2, start=4)) == full[4:]
    assert list(EpochBatchSampler(50, 8, seed=3, epoch=3)) != full


# --------------------------------------------------------------------------- training

def test_tiny_model_learns(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert {"train_acc", "val_acc", "val_valence_acc", "lr", "images_per_s"} <= set(rows[0])
    header = (trained_run / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,step,lr,train_loss,train_acc")
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert saved["model"]["name"] == "resnet_tiny_48" and saved["train"]["epochs"] == 3
    for name in ("best.pt", "last.pt", "model.safetensors", "split.json"):
        assert (trained_run / name).is_file(), name


def test_loss_decreases_over_steps(faces, tmp_path):
    cfg = _tiny_cfg(faces, "aug.enabled=false", "train.epochs=6", "optim.lr=0.1", "sched.name=constant")
    train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("extra", [(), ("aug.batched=false", "model.drop_rate=0.3")])
def test_kill_and_resume_is_bit_identical(faces, tmp_path, extra):
    cfg = _tiny_cfg(faces, "train.epochs=2", "train.ckpt_every=3", *extra)
    whole = train(cfg, tmp_path / "whole")
    assert whole["finished"]
    stopped = train(apply_overrides(cfg, ["train.max_steps=5"]), tmp_path / "killed")
    assert not stopped["finished"] and stopped["step"] == 5
    resumed = train(cfg, tmp_path / "killed", resume=True)
    assert resumed["finished"] and resumed["step"] == whole["step"]
    a, b = _weights(tmp_path / "whole" / "last.pt"), _weights(tmp_path / "killed" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if k != "images_per_s"}  # noqa: E731
    assert [drop(r) for r in ra] == [drop(r) for r in rb]


def test_resume_refuses_a_different_config(faces, tmp_path):
    cfg = _tiny_cfg(faces, "train.max_steps=2")
    train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="optim.lr"):
        train(apply_overrides(cfg, ["optim.lr=0.5"]), tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(cfg, tmp_path / "empty", resume=True)


def test_max_iters_and_multistep(faces, tmp_path):
    cfg = _tiny_cfg(faces, "train.epochs=50", "train.max_iters=7", "sched.name=multistep",
                    "sched.milestones=[3, 5]")
    summary = train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["finished"] and summary["step"] == 7 and rows[-1]["step"] == 7
    assert len(rows) == summary["epoch"] < 50  # the last, partial epoch is evaluated too
    assert rows[-1]["lr"] == pytest.approx(0.05 * 0.01)  # after both milestones


def test_subset_overfit_check_and_val_every(faces, tmp_path):
    """train.subset trains on a fixed seeded choice of items; val_every validates every k epochs and last."""
    cfg = _tiny_cfg(faces, "train.subset=8", "train.epochs=5", "train.val_every=2", "aug.enabled=false",
                    "optim.lr=0.1", "sched.name=constant")
    summary = train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # 8 items at batch 8: one step per epoch
    assert ["val_acc" in r for r in rows] == [False, True, False, True, True]
    assert summary["best_epoch"] in (2, 4, 5)  # only validated epochs can be the best
    again = train(cfg, tmp_path / "again")
    assert [r["train_loss"] for r in rows] == [
        json.loads(x)["train_loss"] for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert again["step"] == 5

    never = train(apply_overrides(cfg, ["train.val_every=0", "train.epochs=12"]), tmp_path / "never")
    rows = [json.loads(x) for x in (tmp_path / "never" / "metrics.jsonl").read_text().splitlines()]
    assert not any("val_acc" in r for r in rows)
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]  # 8 fixed faces are memorised
    assert never["best_metric"] == max(r["train_acc"] for r in rows)
    for bad in ("train.subset=0", "train.subset=100000", "train.val_every=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            train(apply_overrides(cfg, [bad]), tmp_path / "bad")


def test_init_from_skips_the_mismatched_head(trained_run, faces, tmp_path):
    cfg = _tiny_cfg(faces, "data.target=valence", "train.epochs=1", "optim.lr=0.0", "sched.name=constant",
                    "aug.enabled=false", f"init_from={trained_run / 'best.pt'}")
    train(cfg, tmp_path / "ft")
    src, dst = _weights(trained_run / "best.pt"), _weights(tmp_path / "ft" / "best.pt")
    assert dst["head.fc.weight"].shape == (3, src["head.fc.weight"].shape[1])
    conv = next(k for k in src if k.endswith("weight") and src[k].ndim == 4)
    assert torch.equal(src[conv], dst[conv])


def test_trunk_frozen_and_head_lr_mult(trained_run, faces, tmp_path):
    """trunk_lr_mult 0 leaves every trunk parameter as loaded; head_lr_mult scales the head's lr.

    (BatchNorm statistics are buffers: they follow the model's own freeze_bn, not the optimizer.)"""
    cfg = _tiny_cfg(faces, "train.max_steps=3", "optim.trunk_lr_mult=0", "optim.head_lr_mult=10",
                    "sched.name=constant", "optim.lr=0.01", f"init_from={trained_run / 'best.pt'}")
    train(cfg, tmp_path / "head")
    src, dst = _weights(trained_run / "best.pt"), _weights(tmp_path / "head" / "last.pt")
    trunk = [k for k in src if not k.startswith("head.") and "running_" not in k and src[k].is_floating_point()]
    assert trunk and all(torch.equal(src[k], dst[k]) for k in trunk)
    assert not torch.equal(src["head.fc.weight"], dst["head.fc.weight"])
    groups = torch.load(tmp_path / "head" / "last.pt", map_location="cpu", weights_only=True)["optimizer"]
    assert [g["lr"] for g in groups["param_groups"]] == [pytest.approx(0.1)]  # the head's group only
    with pytest.raises(ConfigError, match="head_lr_mult"):
        train(_tiny_cfg(faces, "optim.head_lr_mult=0"), tmp_path / "bad")


# --------------------------------------------------------------------------- evaluation and export

def test_classification_report_valence():
    classes = FERPLUS_EMOTIONS
    probs = torch.zeros(4, 8)
    probs[0, 1] = 1.0                      # happiness, right
    probs[1, 3], probs[1, 4] = 0.6, 0.4    # sadness predicted, anger true: wrong, but valence right
    probs[2, 0] = 1.0                      # neutral, right
    probs[3, 1], probs[3, 2] = 0.4, 0.6    # surprise predicted, happiness true: valence right
    labels = torch.tensor([1, 4, 0, 1])
    rep = classification_report(probs, labels, classes)
    assert rep["accuracy"] == 0.5 and rep["valence"]["accuracy"] == 1.0
    assert rep["per_class"]["anger"] == {"accuracy": 0.0, "support": 1}
    assert rep["confusion"][4][3] == 1
    neutral_surprise = classification_report(probs, labels, classes, surprise="Neutral")
    assert neutral_surprise["valence"]["accuracy"] == 0.75  # surprise 0.6 now reads as Neutral
    assert neutral_surprise["valence"]["confusion"][2][1] == 1


def test_per_source_tables_with_majority_baseline():
    pred = np.array([2, 2, 0, 2, 1, 0])
    labels = np.array([2, 0, 0, 2, 1, 1])
    t = per_source(pred, labels, ["a", "a", "a", "b", "b", "b"], ("Negative", "Neutral", "Positive"))
    assert list(t) == ["a", "b"]
    assert t["a"]["accuracy"] == pytest.approx(2 / 3) and t["a"]["balance"] == {"Negative": 2, "Neutral": 0,
                                                                                  "Positive": 1}
    assert t["a"]["majority_baseline"] == pytest.approx(2 / 3) and t["b"]["majority_baseline"] == pytest.approx(2 / 3)
    assert t["b"]["confusion"] == [[0, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_evaluate_writes_json_and_png(trained_run, tmp_path):
    report = evaluate_checkpoint(trained_run / "best.pt", split="test", out_dir=tmp_path / "ev", tta_flip=True,
                                 progress=False)
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert data["n"] == report["n"] > 0 and data["split"] == "test" and data["tta_flip"] is True
    assert len(data["confusion"]) == 8 and "valence" in data
    for png in ("eval_confusion.png", "eval_valence_confusion.png"):
        assert (tmp_path / "ev" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_round_trip(trained_run, tmp_path):
    out = export(trained_run / "best.pt", tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys() if k.endswith("conv1.weight")}
    assert json.loads(meta["classes"]) == list(FERPLUS_EMOTIONS) and dtypes == {torch.float16}
    assert json.loads(meta["config"])["model"]["name"] == "resnet_tiny_48"
    full, _ = load_model(trained_run / "best.pt")
    half, half_meta = load_model(out)
    assert half_meta["classes"] == list(FERPLUS_EMOTIONS)
    x = torch.randn(4, 1, 48, 48)
    torch.testing.assert_close(half(x), full(x), atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------- command line

def test_cli_train_evaluate_export(faces, tmp_path, capsys):
    run = tmp_path / "cli_run"
    rc = main(["train", str(CONFIGS / "tiny.yaml"), "--set", f"data.root={faces}", "--set", "train.epochs=1",
               "--out", str(run), "--device", "cpu"])
    assert rc == 0 and (run / "model.safetensors").is_file()
    assert "finished at step" in capsys.readouterr().out
    rc = main(["evaluate", "--checkpoint", str(run / "model.safetensors"), "--split", "all",
               "--data", f"folder:{faces}", "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert rc == 0 and (tmp_path / "ev" / "eval.json").is_file()
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["n"] == 48
    assert main(["export", str(run / "best.pt"), "--out", str(tmp_path / "x.safetensors")]) == 0
    rc = main(["train", str(CONFIGS / "tiny.yaml"), "--set", "train.epohcs=1", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "train.epohcs" in capsys.readouterr().err
    rc = main(["train", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "noroot")])
    assert rc == 2 and "data.root" in capsys.readouterr().err


def test_evaluation_never_writes_inside_the_package(tmp_path, monkeypatch):
    import groupmood
    from groupmood.engine.evaluate import default_eval_dir

    shipped = Path(groupmood.__file__).parent / "assets" / "face_nonaligned.safetensors"
    monkeypatch.chdir(tmp_path)
    out = default_eval_dir(shipped, "test")
    assert out == Path("runs") / "eval_face_nonaligned_test"
    assert not out.resolve().is_relative_to(Path(groupmood.__file__).parent)
    assert default_eval_dir(tmp_path / "run" / "best.pt", "val") == tmp_path / "run" / "eval_val"


@pytest.mark.slow
def test_overfit_check_reaches_near_zero_loss(faces, tmp_path, capsys):
    """``train --overfit 16``: the recipe's batch (64 here) is cut to the 16 items, augmentation, dropout, weight
    decay and warm-up are off, and the tiny model memorises them: the training loss ends near zero."""
    run = tmp_path / "run"
    args = ["train", str(CONFIGS / "tiny.yaml"), "--overfit", "16", "--set", f"data.root={faces}", "--set",
            "device=cpu", "--set", "train.batch_size=64", "--set", "model.drop_rate=0.5", "--set",
            "sched.warmup_iters=200", "--out", str(run)]
    assert main(args) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_loss"] > 0.5 and rows[-1]["train_loss"] < 0.02 and rows[-1]["train_acc"] == 1.0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["subset"] == 16 and saved["train"]["batch_size"] == 16 and saved["aug"]["enabled"] is False
    assert "overfit check on 16 items" in capsys.readouterr().out


def test_a_run_that_cannot_start_leaves_no_folder(faces, tmp_path):
    with pytest.raises(ConfigError, match="larger than the training set"):
        train(_tiny_cfg(faces, "train.subset=4", "train.batch_size=8"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
