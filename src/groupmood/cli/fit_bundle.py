"""``groupmood fit-bundle``: fit a bundle's heads, calibration and fusion on labelled photos, by nested CV.

The command reads the labelled sets and their committed folds, collects the evidence under the base
bundle's models (cached with ``--cache``), and runs :func:`groupmood.engine.bundle_fit.fit_bundle`,
the function the benchmark scripts call for the shipped bundles.
"""
from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

import click
from tqdm import tqdm

from ..engine.bundle_fit import FIT_KINDS
from ..engine.group_eval import EVAL_SET_KINDS
from ..errors import ConfigError


def _set_name(data: str) -> str:
    """A labelled set's name: its folder's name (a labels.csv: the folder holding it), or the CSV file's stem."""
    p = Path(data).resolve()
    if p.is_file():
        return p.parent.name if p.name == "labels.csv" else p.stem
    return p.name or "photos"


def _command(photos: str, folds: Path, crowds: str | None, crowd_folds: Path | None, kind: str, base: str,
             exclude: str | None, min_face_frac: float | None, gate_extra: tuple[str, ...], out: Path) -> str:
    """The command line that fits this bundle, for its ``chosen_on.command``."""
    args = ["groupmood", "fit-bundle", photos, "--folds", str(folds)]
    if crowds is not None:
        args += ["--crowds", crowds, "--crowd-folds", str(crowd_folds)]
    args += ["--kind", kind, "--base", base]
    if exclude is not None:
        args += ["--exclude", exclude]
    if min_face_frac is not None:
        args += ["--min-face-frac", f"{min_face_frac:g}"]
    for g in gate_extra:
        args += ["--gate-extra", g]
    return shlex.join([*args, "-o", str(out)])


@click.command("fit-bundle")
@click.argument("photos")
@click.option("--folds", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The committed fold file of PHOTOS ({\"k\": 5, \"folds\": {name: fold}}: groupmood.data.folds).")
@click.option("--crowds", default=None, metavar="DATA",
              help="Labelled crowd photos, the second set (--kind crowd and regime), read like PHOTOS.")
@click.option("--crowd-folds", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The committed fold file of --crowds.")
@click.option("--kind", type=click.Choice(FIT_KINDS), default="group", show_default=True,
              help="group: group head, temperatures and fusion on PHOTOS (like the shipped photo bundle). crowd: "
                   "the same on both sets, with a scene head (like the crowd bundle). regime: a photo regime on "
                   "PHOTOS, a crowd regime on both sets and the gate between them (like the default bundle).")
@click.option("--base", default="photo", show_default=True, metavar="BUNDLE",
              help="Base bundle (YAML or a shipped bundle's name) whose models the fit reads and carries; its "
                   "group, group_crowd and scene branches are left out and fitted anew.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle YAML to write; its model files and the list of fitting photos go beside it.")
@click.option("--data-kind", type=click.Choice(EVAL_SET_KINDS), default="auto", show_default=True,
              help="Layout of PHOTOS and --crowds: auto = GAF-style folder ([split/]Positive|Neutral|Negative/...), "
                   "or a CSV path,label (a folder with labels.csv).")
@click.option("--trunk", default="nonaligned", show_default=True, metavar="BRANCH",
              help="The base bundle's face branch whose trunk the group heads read.")
@click.option("--scene-trunk", default="global", show_default=True, metavar="BRANCH",
              help="The base bundle's whole-image branch whose trunk the scene head and the gate read.")
@click.option("--exclude", default=None, metavar="BRANCHES",
              help="Branches kept out of calibration and fusion (weight 0), comma-separated, '' for none "
                   "[default: aligned; --kind crowd: aligned,global; regime: the photo regime's].")
@click.option("--min-face-frac", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Smallest face the detector searches, as a fraction of the shorter side, for the evidence and "
                   "in the bundle [default: the base bundle's].")
@click.option("--gate-extra", multiple=True, metavar="PATH",
              help="--kind regime: photos (files, folders, globs; repeatable) that join the gate's photo side in "
                   "every fit, e.g. photos without a group.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the evidence of each set, collected once (named by the base bundle, photos, trunks "
                   "and detector setting).")
@click.option("--write-folds", is_flag=True,
              help="Write a missing --folds / --crowd-folds file first (5 folds stratified by label, seed 0).")
@click.option("--cv/--no-cv", default=True, show_default=True,
              help="Run the nested cross-validation whose held-out figures chosen_on records (k fits more).")
@click.option("--device", default="cpu", show_default=True, help="torch device for the evidence, e.g. cuda:0.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Photos per call.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def fit_bundle_cmd(photos: str, folds: Path, crowds: str | None, crowd_folds: Path | None, kind: str, base: str,
                   out: Path, data_kind: str, trunk: str, scene_trunk: str, exclude: str | None,
                   min_face_frac: float | None, gate_extra: tuple[str, ...], cache: Path | None, write_folds: bool,
                   cv: bool, device: str, batch_size: int, progress: bool) -> int:
    """Fit a bundle on labelled group photos PHOTOS by nested cross-validation and write it.

    PHOTOS is a GAF-style folder or a CSV path,label (as evaluate-groups reads). Every choice (head
    regularisation, temperatures, fusion, gate) is made by cross-validation over the committed folds,
    then fitted on every photo; the held-out figures of the nested CV go into the bundle's chosen_on.
    Writes the YAML (-o), the fitted model files beside it and OUT_fit_photos.tsv (the fitting photos).
    Unreadable photos are reported and skipped: the exit status is then 1.
    """
    from ..engine.bundle_fit import (PhotoSet, cache_name, evidence_key, fit_bundle, gate_extra_features,
                                     load_sets)
    from ..engine.group_eval import read_group_items
    from ..pipeline import SHIPPED_BUNDLES, bundle_path
    from .common import check_device, collect_paths

    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"-o {out} must be a .yaml file (the bundle; its model files go beside it)")
    if kind == "group" and (crowds is not None or crowd_folds is not None):
        raise click.UsageError("--crowds and --crowd-folds are for --kind crowd and regime")
    if kind != "group" and (crowds is None or crowd_folds is None):
        raise click.UsageError(f"--kind {kind} needs the crowd set: --crowds DATA --crowd-folds FILE")
    if gate_extra and kind != "regime":
        raise click.UsageError("--gate-extra is for --kind regime")
    if not bundle_path(base).is_file():
        raise ConfigError(f"--base {base}: no bundle file {bundle_path(base)}; give a bundle YAML or the name of a "
                          f"shipped bundle ({', '.join(SHIPPED_BUNDLES)})")
    check_device(device)
    skipped: list[str] = []

    def log(message: str) -> None:
        if message.startswith("skipped "):
            skipped.append(message)
        tqdm.write(message, file=sys.stderr)

    names = [_set_name(photos)]
    if crowds is not None:
        names.append(_set_name(crowds) if _set_name(crowds) != names[0] else f"{names[0]}-crowds")
    sets = []
    for name, data, fold_file in zip(names, (photos, crowds), (folds, crowd_folds)):
        items = read_group_items(data, data_kind)
        s = PhotoSet(name, items, fold_file)
        if cache is not None:
            s = PhotoSet(name, items, fold_file,
                         cache / cache_name(base, s, trunk, None if kind == "group" else scene_trunk, min_face_frac))
        sets.append(s)
    excluded = None if exclude is None else [b for b in exclude.split(",") if b]
    fit_data = load_sets(kind, base, sets, trunk, scene_trunk, excluded, min_face_frac, write_folds, device,
                         batch_size, progress, log)
    extra = None
    if gate_extra:
        paths = collect_paths(gate_extra)
        digest = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
        name = f"gate_extra-{evidence_key(base)}-{digest}-{scene_trunk}.npy"  # what the features depend on
        extra = gate_extra_features(base, paths, None if cache is None else cache / name, scene_trunk, device,
                                    progress, log)
    chosen_on = {"data": "; ".join(f"{d} ({len(s.items)} photos)" for d, s in zip((photos, crowds), sets)),
                 "folds": ", ".join(str(s.folds) for s in sets)}
    notes = {**({"excluded": f"{', '.join(excluded) or 'none'} (weight 0, kept out of calibration and fusion)"}
                if excluded is not None else {}),
             "command": _command(photos, folds, crowds, crowd_folds, kind, base, exclude, min_face_frac, gate_extra,
                                 out)}
    fit = fit_bundle(kind, fit_data, base, out, trunk=trunk, scene_trunk=scene_trunk,
                     exclude=excluded if kind == "regime" else None, gate_extra=extra, cv=cv,
                     min_face_frac=min_face_frac, chosen_on=chosen_on, notes=notes,
                     fit_photos=f"{out.stem}_fit_photos.tsv", progress=progress, log=log)
    click.echo(f"wrote {fit.path} ({kind} bundle fitted on {len(fit_data.evidence)} photos of "
               f"{', '.join(fit_data.set_names)})")
    for f in fit.files:
        click.echo(f"wrote {f}")
    if "cv_accuracy" in fit.chosen_on:
        click.echo(f"held-out accuracy of the nested CV: {fit.chosen_on['cv_accuracy']}")
    if skipped:
        click.echo(f"{len(skipped)} photo(s) could not be read and were left out (listed above)", err=True)
    return 1 if skipped else 0
