"""``groupmood merge``: the shard outputs of a sharded ``predict`` (or ``cache build``), in input order."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import display_path


@click.command("merge")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--of", "count", type=click.IntRange(min=1), default=None,
              help="Number of shards N (default: found from the TARGET.shard-I-of-N files).")
def merge_cmd(target: Path, count: int | None) -> int:
    """Merge TARGET.shard-I-of-N outputs of `predict --shard I/N -o TARGET` (or torchrun) into TARGET.

    Records come out in the order of the inputs, one per photo, whatever order the shards ran in;
    every shard must be complete (an unfinished one: run it again with --resume). The same shards
    always give the same bytes. A sharded predict merges by itself when its last shard finishes.

    TARGET may also be a face cache folder (a --cache-dir, or one of its settings folders): the part
    indexes of a sharded `cache build` are merged into its index.jsonl.
    """
    from ..shard import merge_predictions

    if target.is_dir():
        return _merge_caches(target)
    out = merge_predictions(target, count)
    click.echo(f"merged into {display_path(out)}", err=True)
    return 0


def _merge_caches(root: Path) -> int:
    """Merge the part indexes of every face cache folder at or below ``root`` (one level)."""
    from ..data.cache import FaceCache
    from ..errors import ConfigError

    folders = [d for d in (root, *sorted(root.iterdir())) if (d / "settings.json").is_file()]
    if not folders:
        raise ConfigError(f"{display_path(root)} holds no face cache (no settings.json in it or its folders)")
    for folder in folders:
        try:
            merged = FaceCache.from_dir(folder).merge_parts()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        click.echo(f"{display_path(folder)}: {'merged its part indexes' if merged else 'nothing to merge'}",
                   err=True)
    return 0
