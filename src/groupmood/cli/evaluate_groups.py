"""``groupmood evaluate-groups``: accuracy of each branch and of the fusion on a labelled group set."""
from __future__ import annotations

import sys

import click
from tqdm import tqdm

from ..data import SPLITS
from ..engine.group_eval import EVAL_SET_KINDS, evaluate_groups, format_tables, in_sample_note, read_group_items
from .common import build_detector, detector_options
from .predict import fusion_options, load_recognizer


@click.command("evaluate-groups")
@click.argument("data")
@click.option("--kind", type=click.Choice(EVAL_SET_KINDS), default="auto", show_default=True,
              help="Dataset layout: auto = GAF-style folder, or a CSV path,label (a folder with labels.csv).")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Evaluate one of the dataset's own splits (GAF split folders / CSV split column).")
@click.option("--bundle", default=None, type=click.Path(dir_okay=False),
              help="Bundle YAML. Default: the shipped groupmood/assets/bundle.yaml.")
@click.option("-o", "--out", "out_dir", default="eval_groups", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.json, confusion PNGs and per-branch score files.")
@fusion_options
@detector_options
def evaluate_groups_cmd(data: str, kind: str, split: str | None, bundle: str | None, out_dir: str,
                        weights_text: str | None, preset: str | None, pooling: str | None, device: str,
                        batch_size: int, min_face_frac: float | None, min_face_px: float | None,
                        thresholds: tuple[float, float, float] | None, factor: float | None, mtcnn_weights: str | None,
                        max_pixels: int, progress: bool) -> int:
    """Evaluate a bundle on DATA: a GAF-style folder ([split/]Positive|Neutral|Negative/...) or a CSV path,label.

    Prints overall and per-class accuracy of each branch and of the fusion with the bundle's
    pooling, all faces, and the 3 largest faces; writes report.json, confusion matrices, and score
    files for ``groupmood fuse --search``. The exit status is 1 when some photos were unreadable.
    """
    items = read_group_items(data, kind, split)
    detector = build_detector(device, min_face_frac, min_face_px, thresholds, factor, mtcnn_weights, bundle)
    rec = load_recognizer(bundle, device, detector, weights_text, preset, pooling)
    report = evaluate_groups(rec, items, out_dir, batch_size, max_pixels, progress=progress,
                             log=lambda msg: tqdm.write(msg, file=sys.stderr))
    click.echo(format_tables(report))
    note = in_sample_note(report)
    if note:
        click.echo(note)
    click.echo(f"{report['n']} photos evaluated, {len(report['errors'])} unreadable; report in {out_dir}/report.json; "
               f"score files in {out_dir}/scores (try: groupmood fuse --search --labels {out_dir}/scores/labels.csv "
               "--branch NAME=FILE ...)", err=True)
    return 1 if report["errors"] else 0
