"""``groupmood cache build``: detect and crop every face of a dataset once, resumably."""
from __future__ import annotations

import click

from ..data.cache import DEFAULT_SHARD_SIZE, FaceCache, default_cache_root
from ..detect import CascadeSettings
from ..errors import OutputError, display_path
from ..images import DEFAULT_MAX_PIXELS
from ..shard import current_shard, shard_option
from .common import collect_paths


@click.group("cache")
def cache_group() -> None:
    """The face cache: detections, landmarks and both crops of each image, computed once."""


@cache_group.command("build")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Cache root (default: $GROUPMOOD_HOME/face_cache).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Parallel detector processes (one torch thread each).")
@click.option("--shard-size", default=DEFAULT_SHARD_SIZE, show_default=True, type=click.IntRange(1),
              help="Images per shard file (the unit of resume: a killed build redoes at most this many).")
@click.option("--min-face-frac", default=0.05, show_default=True, type=click.FloatRange(0, 1))
@click.option("--margin", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Extra margin of the square 48x48 crop.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1),
              help="Refuse images larger than this (decompression-bomb guard).")
@click.option("--progress/--no-progress", default=True)
@shard_option
def build_cmd(inputs: tuple[str, ...], cache_dir: str | None, workers: int, shard_size: int,
              min_face_frac: float, margin: float, max_pixels: int, progress: bool) -> int:
    """Cache the faces of INPUTS (files, folders, globs); a stopped build resumes where it stopped.

    With --shard I/N (N jobs, one folder shared by all) or under torchrun, this job builds images I,
    I+N, ... into its own files; the last job to complete merges the indexes (docs/scaling.md).
    """
    paths = collect_paths(inputs)
    shard, _ = current_shard()
    root = cache_dir or default_cache_root()
    try:
        cache = FaceCache(root, CascadeSettings(min_face_frac=min_face_frac), margin)
        cache.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the face cache {display_path(root)}: {exc.strerror or exc}; "
                          "choose another --cache-dir") from None
    report = cache.build(paths, shard_size=shard_size, workers=workers, progress=progress, max_pixels=max_pixels,
                         shard=shard)
    for err in report.errors:
        click.echo(f"skipped {err}", err=True)
    click.echo(f"{cache.dir}: {report.computed} images computed ({report.faces} faces), "
               f"{report.cached} already cached, {len(report.errors)} failed"
               + (f" (shard {shard}{'; merged the shards' if report.merged else ''})" if shard else ""), err=True)
    return 1 if report.errors else 0
