"""``groupmood merge``: the shard outputs of a sharded ``predict`` as one file, in input order."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import display_path


@click.command("merge")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--of", "count", type=click.IntRange(min=1), default=None,
              help="Number of shards N (default: found from the TARGET.shard-I-of-N files).")
def merge_cmd(target: Path, count: int | None) -> int:
    """Merge TARGET.shard-I-of-N outputs of `predict --shard I/N -o TARGET` (or torchrun) into TARGET.

    Records come out in the order of the inputs, one per photo, whatever order the shards ran in;
    every shard must be complete (an unfinished one: run it again with --resume). The same shards
    always give the same bytes. A sharded predict merges by itself when its last shard finishes.
    """
    from ..shard import merge_predictions

    out = merge_predictions(target, count)
    click.echo(f"merged into {display_path(out)}", err=True)
    return 0
