"""Evaluation: predictions, accuracy tables, confusion matrices (JSON + PNG), model loading.

:func:`predict` runs a model over a dataset (optionally averaging the logits of each image and
its horizontal flip, as the authors' test code does); :func:`classification_report` gives overall,
per-class and mean-class accuracy and the confusion matrix, and for expression models also the
same for the 3 group classes, reading the probabilities as valence with
:func:`groupmood.labels.to_valence`. Models load through :func:`groupmood.checkpoint.load_model`
(re-exported here).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint import load_model
from ..config import data_options
from ..data import build_data
from ..data.group_faces import pool_by_photo
from ..data.transforms import normalize
from ..errors import ConfigError
from ..io import atomic_write
from ..labels import FERPLUS_EMOTIONS, GROUP_CLASSES, canonical_expression, to_valence, valence_map
from ..metrics import accuracy_table
from ..models.tta import flip_averaged_logits

__all__ = ["classification_report", "default_eval_dir", "evaluate_checkpoint", "load_model", "plot_confusion",
           "predict", "save_report"]


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, family: str | Any, device: torch.device | str = "cpu",
            batch_size: int = 256, tta_flip: bool = False, progress: bool = False,
            desc: str = "eval") -> tuple[Tensor, Tensor]:
    """(probabilities (N, C) float32, hard labels (N,) int64) on the CPU, in dataset order.

    ``family`` is the model's ModelInfo (or its family name) and picks the input normalisation.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    probs, labels = [], []
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        logits = flip_averaged_logits(model, normalize(x.to(device), family), tta_flip,
                                      channels_last=device.type == "cuda")
        probs.append(torch.softmax(logits, dim=1).cpu())
        labels.append((y.argmax(dim=1) if y.ndim == 2 else y).long().cpu())
    model.train(was_training)
    n_cls = len(getattr(dataset, "classes", ())) or 0
    if not probs:
        return torch.zeros(0, n_cls), torch.zeros(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels)


def per_source(pred: np.ndarray, labels: np.ndarray, sources: Sequence[str],
               classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The accuracy table of each source set, with its class balance and majority-class baseline."""
    sources = np.asarray(sources)
    out = {}
    for src in dict.fromkeys(sources.tolist()):
        sel = sources == src
        table = accuracy_table(pred[sel], labels[sel], classes)
        counts = np.bincount(labels[sel], minlength=len(classes))
        table["balance"] = {c: int(n) for c, n in zip(classes, counts)}
        table["majority_baseline"] = float(counts.max() / counts.sum()) if counts.sum() else 0.0
        out[str(src)] = table
    return out


def classification_report(probs: Tensor, labels: Tensor, classes: Sequence[str],
                          surprise: str = "Positive") -> dict[str, Any]:
    """Accuracy overall / per class / mean, confusion matrix (rows true, columns predicted).

    For expression classes the report also holds ``valence``: the same table for the 3 group
    classes, predictions from the summed probabilities (``to_valence``), truth from the label's
    class (``surprise`` chooses where surprise goes).
    """
    classes = tuple(classes)
    report = accuracy_table(probs.argmax(dim=1).numpy(), labels.numpy(), classes)
    if classes != GROUP_CLASSES and all(canonical_expression(c) in FERPLUS_EMOTIONS for c in classes):
        mapping = valence_map(surprise)
        vprobs = to_valence(probs, classes, mapping)
        truth_of = np.asarray([GROUP_CLASSES.index(mapping[canonical_expression(c)]) for c in classes])
        report["valence"] = accuracy_table(vprobs.argmax(dim=1).numpy(), truth_of[labels.numpy()], GROUP_CLASSES)
        report["valence"]["surprise"] = surprise
    return report


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    """Row-normalised confusion matrix with counts as a PNG (matplotlib Agg, written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conf = np.asarray(confusion, dtype=np.float64)
    rows = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    k = len(classes)
    fig = Figure(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{frac[i, j]:.2f}\n{int(conf[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    return Path(path)


def default_eval_dir(checkpoint: str | Path, split: str) -> Path:
    """Where an evaluation goes when not told: beside a run's checkpoint, but never inside the package.

    A shipped model (``groupmood/assets``) or any file inside the installed package is evaluated into
    ``runs/eval_<stem>_<split>`` of the current folder instead, so the package is never written to.
    """
    checkpoint = Path(checkpoint).resolve()
    package = Path(__file__).resolve().parents[1]
    if checkpoint.is_relative_to(package):
        return Path("runs") / f"eval_{checkpoint.stem}_{split}"
    return checkpoint.parent / f"eval_{split}"


def save_report(report: Mapping[str, Any], out_dir: str | Path, stem: str = "eval",
                title: str = "") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>_confusion.png`` (and ``<stem>_valence_confusion.png``)."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json"}
    with atomic_write(paths["json"]) as fh:
        json.dump(report, fh, indent=1)
    acc = f"acc {report['accuracy']:.3f}, n={report['n']}"
    paths["confusion"] = plot_confusion(report["confusion"], report["classes"],
                                        out_dir / f"{stem}_confusion.png", f"{title} {acc}".strip())
    if "valence" in report:
        v = report["valence"]
        paths["valence_confusion"] = plot_confusion(
            v["confusion"], v["classes"], out_dir / f"{stem}_valence_confusion.png",
            f"{title} valence acc {v['accuracy']:.3f}".strip())
    return paths


def evaluate_checkpoint(checkpoint: str | Path, cfg: Mapping[str, Any] | None = None, split: str = "test",
                        out_dir: str | Path | None = None, device: torch.device | str = "cpu",
                        tta_flip: bool = False, batch_size: int = 256,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of its own data config (or of ``cfg``); writes JSON + PNGs.

    The split file of a folder / legend dataset is looked up in the checkpoint's folder (the run
    folder), so ``test`` is the same test split the run held out.
    """
    checkpoint = Path(checkpoint)
    model, meta = load_model(checkpoint, device)
    if cfg is None and meta.get("config") is None:
        raise ConfigError(f"{checkpoint} carries no training config; pass a config with the data to evaluate on")
    cfg = dict(cfg) if cfg is not None else dict(meta["config"])
    info = meta["info"]
    bundle = build_data(cfg, info, checkpoint.parent, (split,))
    if tuple(bundle.classes) != tuple(meta["classes"]):
        raise ConfigError(f"the checkpoint predicts {list(meta['classes'])} but the data has classes "
                          f"{list(bundle.classes)}; set data.classes / data.target to match")
    probs, labels = predict(model, bundle.datasets[split], info, device, batch_size, tta_flip,
                            progress, desc=f"eval {split}")
    report = classification_report(probs, labels, bundle.classes, cfg["data"].get("surprise", "Positive"))
    report.update({"checkpoint": str(checkpoint), "split": split, "tta_flip": bool(tta_flip),
                   "data": {k: data_options(cfg["data"]).get(k) for k in ("kind", "root", "target", "mode")}})
    sources = getattr(bundle.datasets[split], "sources", None)
    if sources is not None:  # whole-image data (merged sets): one table per source set
        report["per_source"] = per_source(probs.argmax(dim=1).numpy(), labels.numpy(), sources, bundle.classes)
    photos = getattr(bundle.datasets[split], "photos", None)
    if photos is not None:  # group_faces: the table above is per face; add the photos' (mean of their faces)
        _, pooled, photo_labels = pool_by_photo(probs.numpy(), photos, labels.numpy())
        report["unit"] = "face"
        report["per_photo"] = {**accuracy_table(pooled.argmax(axis=1), photo_labels, bundle.classes),
                               "pooling": "mean probability of the photo's faces (data.top_k_faces applied)"}
    out = Path(out_dir) if out_dir is not None else default_eval_dir(checkpoint, split)
    report["files"] = {k: str(v) for k, v in save_report(report, out, "eval", f"{info.name} {split}").items()}
    return report
