"""``groupmood train`` and ``groupmood evaluate``: the training engine's commands (``export``: cli/export.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..config import load_config, overfit_check
from ..data import SPLITS

_SET_HELP = "Override a config value, e.g. --set train.epochs=3 --set data.root=../shared/data/ferplus (repeatable)."


def _run_dir(config: Path, cfg: dict, out: Path | None) -> Path:
    if out is not None:
        return out
    if cfg.get("out"):
        return Path(cfg["out"])
    return Path("runs") / config.stem


@click.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--resume", is_flag=True, help="Continue the run in the output folder from its last.pt.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: the config's `out`, else runs/<config name>).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: the config's `device`, auto).")
@click.option("--overfit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Overfit check: train on N fixed training items, without augmentation, dropout, weight decay "
                   "or warm-up, about 300 steps, no validation; the training loss should end near zero.")
def train_cmd(config: Path, resume: bool, overrides: tuple[str, ...], out: Path | None, device: str | None,
              overfit: int | None) -> int:
    """Train the recipe CONFIG (a YAML file in configs/) into a run folder.

    Under torchrun (``torchrun --nproc_per_node N -m groupmood.cli train CONFIG ...``) every process
    runs this; train.batch_size stays the global batch, rank 0 writes and prints (docs/scaling.md).
    """
    from ..engine.train import train

    cfg = load_config(config, overrides)
    if overfit is not None:
        cfg = overfit_check(cfg, overfit)
        if out is None:
            out = _run_dir(config, cfg, None).with_name(f"{config.stem}-overfit{overfit}")
    run_dir = _run_dir(config, cfg, out)
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        click.echo(f"run folder: {run_dir}")
    summary = train(cfg, run_dir, resume=resume, device=device)
    if not main_process:
        return 0
    state = "finished" if summary["finished"] else "stopped (continue with --resume)"
    metric = ("best validation accuracy" if summary["validated"]
              else "best training accuracy (no validation: train.val_every=0 or no val split)")
    click.echo(f"{state} at step {summary['step']}; {metric} {summary['best_metric']:.4f} "
               f"(epoch {summary['best_epoch']})")
    if overfit is not None:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        click.echo(f"overfit check on {overfit} items: training loss {rows[0]['train_loss']:.4g} (first epoch) -> "
                   f"{rows[-1]['train_loss']:.4g} (last), accuracy {rows[-1]['train_acc']:.3f}, "
                   f"{summary['step']} steps")
    if "export" in summary:
        click.echo(f"exported {summary['export']}")
    return 0


@click.command("evaluate")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="best.pt / last.pt of a run, or an exported .safetensors.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Take the data section from this recipe instead of the checkpoint's own config.")
@click.option("--data", "data", default=None, metavar="[KIND:]ROOT",
              help="Evaluate on this dataset, e.g. folder:../shared/data/ckplus48 or ferplus:../shared/data/ferplus.")
@click.option("--split", default="test", show_default=True, type=click.Choice([*SPLITS, "all"]),
              help="Which split; `all` takes every image of a folder / legend / npz dataset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where eval.json and the confusion PNGs go (default: beside the checkpoint, eval_<split>/; "
                   "runs/eval_<name>_<split>/ for a model inside the package).")
@click.option("--tta/--no-tta", default=False, show_default=True, help="Average with the horizontal flip.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
def evaluate_cmd(checkpoint: Path, config: Path | None, data: str | None, split: str,
                 overrides: tuple[str, ...], out: Path | None, tta: bool, device: str, batch_size: int) -> int:
    """Accuracy (overall, per class, valence) and confusion matrices of a trained model."""
    from ..engine.evaluate import evaluate_checkpoint, load_model
    from ..engine.train import resolve_device

    _, meta = load_model(checkpoint, "cpu")
    base = dict(meta["config"])
    cfg = load_config(config, base=base) if config is not None else load_config(None, base=base)
    cfg["model"] = base["model"]
    if data:
        kind, sep, root = data.partition(":")
        if sep and len(kind) > 1:
            cfg["data"]["kind"], cfg["data"]["root"] = kind, root
        else:
            cfg["data"]["root"] = data
    cfg = load_config(None, overrides, base=cfg)
    cfg["train"]["progress"] = True
    report = evaluate_checkpoint(checkpoint, cfg, split, out, resolve_device(device), tta, batch_size)
    unit = f" per {report['unit']}" if "unit" in report else ""
    line = (f"{split}: accuracy{unit} {report['accuracy']:.4f}, mean class {report['mean_class_accuracy']:.4f}, "
            f"n={report['n']}")
    if "valence" in report:
        line += f"; valence accuracy {report['valence']['accuracy']:.4f}"
    click.echo(line)
    for src, t in report.get("per_source", {}).items():
        balance = " ".join(f"{c[:3]} {n}" for c, n in t["balance"].items())
        click.echo(f"  {src}: accuracy {t['accuracy']:.4f} (majority class {t['majority_baseline']:.4f}), "
                   f"mean class {t['mean_class_accuracy']:.4f}, n={t['n']} ({balance})")
    if "per_photo" in report:
        p = report["per_photo"]
        click.echo(f"{split}: accuracy per photo (mean of its faces) {p['accuracy']:.4f}, mean class "
                   f"{p['mean_class_accuracy']:.4f}, n={p['n']} photos with a face")
    click.echo(json.dumps({c: v["accuracy"] for c, v in report["per_class"].items()}))
    click.echo(f"wrote {', '.join(report['files'].values())}")
    return 0
