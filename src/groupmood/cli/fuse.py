"""``groupmood fuse``: fuse per-branch score files with weights, a preset, or weights searched on labels.

Score files are the authors' (``name s1 s2 s3`` per line, names may contain spaces) or CSV with a
``name,Negative,Neutral,Positive`` header; a photo missing from a branch's file is an abstention
of that branch. ``--challenge-dir DIR`` writes one file per photo in the challenge format chosen
here: ``DIR/<name without extension>.txt`` holding the label word (``Positive``, ``Neutral`` or
``Negative``) and a newline; a name's folders are kept (``a/b.jpg`` -> ``DIR/a/b.txt``); where
two photos share a name without extension (GAF has ``x.jpg`` and ``x.png``), both keep their
extension (``x.jpg.txt``); absolute names and names with ``..`` use their file name only.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import click
import numpy as np

from ..metrics import accuracy_table
from ..errors import DatasetError
from ..fusion.search import OBJECTIVES
from ..fusion import (ABSTAIN, align_tables, fuse_rows, match_labels, parse_weights, preset_weights,
                      read_labels, read_scores, search_weights)
from ..io import atomic_write_text
from ..labels import GROUP_CLASSES


def challenge_paths(names: Sequence[str]) -> dict[str, PurePosixPath]:
    """Relative output file per photo name (see the module docstring for the rules)."""
    def safe(n: str) -> PurePosixPath:
        p = PurePosixPath(n.replace("\\", "/"))
        return PurePosixPath(p.name) if p.is_absolute() or ".." in p.parts or not p.name else p

    base = {n: safe(n) for n in names}
    stems: dict[PurePosixPath, int] = {}
    for p in base.values():
        key = p.with_suffix("")
        stems[key] = stems.get(key, 0) + 1
    out = {}
    for n, p in base.items():
        out[n] = p.with_suffix(".txt") if stems[p.with_suffix("")] == 1 else p.with_name(p.name + ".txt")
    if len(set(out.values())) != len(out):
        raise DatasetError("two photos map to the same challenge file; give photos unique names")
    return out


def _csv(rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


@click.command("fuse")
@click.option("--branch", "branch_specs", multiple=True, required=True, metavar="NAME=FILE",
              help="A branch's score file (repeat per branch), e.g. --branch aligned=aligned.txt.")
@click.option("--weights", "weights_text", default=None, help="e.g. aligned=3,global=0.5,nonaligned=0.5.")
@click.option("--preset", default=None, help="Weights of a published run: run1 .. run7.")
@click.option("--search", is_flag=True, help="Try every weight set on a simplex grid against --labels; use the best.")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False), default=None,
              help="name,label file (labels Negative / Neutral / Positive or 0-2); needed by --search, "
                   "otherwise used to print accuracy.")
@click.option("--step", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Grid step of --search (must divide 1).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="accuracy", show_default=True,
              help="What --search optimises: accuracy (the authors') or log_loss of the fused probabilities "
                   "(smoother on a small validation set).")
@click.option("--trials", "trials_path", type=click.Path(dir_okay=False), default=None,
              help="With --search: write every weight set tried, its accuracy and log loss to this CSV.")
@click.option("-o", "--output", default="-", show_default=True,
              help="Predictions CSV (name,label,Negative,Neutral,Positive,spoke), or - for stdout.")
@click.option("--challenge-dir", type=click.Path(file_okay=False), default=None,
              help="Also write one <name>.txt per photo holding its label word.")
def fuse_cmd(branch_specs: tuple[str, ...], weights_text: str | None, preset: str | None, search: bool,
             labels_path: str | None, step: float, objective: str, trials_path: str | None, output: str,
             challenge_dir: str | None) -> int:
    """Fuse branch score files into one label per photo (the authors' weighted score fusion).

    Rows that do not sum to 1 (within 0.01) are softmaxed first, multiplied by the branch weight
    and summed over the branches that scored the photo; the argmax is the label (class order
    Negative, Neutral, Positive).
    """
    tables = {}
    for spec in branch_specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path:
            raise click.UsageError(f"--branch {spec!r} must be NAME=FILE, e.g. aligned=scores/aligned.txt")
        if name.strip() in tables:
            raise click.UsageError(f"branch {name.strip()!r} is given twice")
        tables[name.strip()] = read_scores(path)
    if sum(bool(x) for x in (weights_text, preset, search)) != 1:
        raise click.UsageError("choose exactly one of --weights, --preset and --search")
    if search and not labels_path:
        raise click.UsageError("--search needs --labels")
    names, scores, spoke = align_tables(tables)
    y = np.full(len(names), -1, dtype=np.int64)
    if labels_path:
        y = match_labels(names, read_labels(labels_path))
        n_lab = int((y >= 0).sum())
        if n_lab == 0:
            raise DatasetError(f"no photo of the score files has a label in {labels_path}; the names must match "
                               "(exactly, or by file name without extension)")
        click.echo(f"{n_lab} of {len(names)} photos have a label", err=True)
    has = y >= 0

    if search:
        result = search_weights({b: s[has] for b, s in scores.items()}, y[has], step,
                                {b: s[has] for b, s in spoke.items()}, objective=objective)
        click.echo(f"{len(result.trials)} weight sets tried (step {step:g}), best {objective} first:", err=True)
        for i in result.order():
            ws = ", ".join(f"{b}={w:.2f}" for b, w in zip(result.branches, result.trials[i]))
            click.echo(f"  {100 * result.accuracy[i]:6.2f}%  log loss {result.log_loss[i]:.4f}  {ws}", err=True)
        weights = result.best_weights
        click.echo(f"best: {', '.join(f'{b}={w:.2f}' for b, w in weights.items())} "
                   f"accuracy {100 * result.best_accuracy:.2f}%, log loss {result.best_log_loss:.4f} on {result.n} "
                   f"photos (by {objective}; ties broken towards equal weights)", err=True)
        if trials_path:
            atomic_write_text(trials_path, _csv([[*result.branches, "accuracy", "log_loss"],
                                                 *([*(f"{w:g}" for w in t), f"{a:.6f}", f"{x:.6f}"]
                                                   for t, a, x in zip(result.trials, result.accuracy,
                                                                      result.log_loss))]))
    elif preset:
        weights = preset_weights(preset, tables)
    else:
        weights = parse_weights(weights_text or "", tables)

    probs, idx = fuse_rows(scores, weights, spoke)
    labels = [GROUP_CLASSES[i] if i >= 0 else ABSTAIN for i in idx]
    if labels_path:
        for b in tables:
            t = accuracy_table(np.where(spoke[b], scores[b].argmax(1), -1)[has], y[has])
            click.echo(f"{b}: accuracy {100 * t['accuracy']:.2f}% (spoke on {100 * t['coverage']:.1f}%)", err=True)
        t = accuracy_table(idx[has], y[has])
        per = ", ".join(f"{c} {100 * v['accuracy']:.1f}%" for c, v in t["per_class"].items()
                        if v["accuracy"] is not None)
        click.echo(f"fused: accuracy {100 * t['accuracy']:.2f}% ({per})", err=True)

    rows: list[list[object]] = [["name", "label", *GROUP_CLASSES, "spoke"]]
    for k, n in enumerate(names):
        rows.append([n, labels[k], *(f"{v:.6f}" for v in probs[k]),
                     "+".join(b for b in tables if spoke[b][k])])
    text = _csv(rows)
    if output == "-":
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
    n_abstain = labels.count(ABSTAIN)
    if challenge_dir:
        root = Path(challenge_dir)
        targets = challenge_paths(names)
        for n, label in zip(names, labels):
            atomic_write_text(root / targets[n], label + "\n")
        click.echo(f"wrote {len(names)} label files to {root}", err=True)
    if n_abstain:
        click.echo(f"warning: {n_abstain} photo(s) got no label (only branches with weight 0 scored them)", err=True)
    counts = ", ".join(f"{c} {labels.count(c)}" for c in GROUP_CLASSES)
    click.echo(f"{len(names)} photos fused with {', '.join(f'{b}={w:g}' for b, w in weights.items())}: {counts}",
               err=True)
    return 0
