"""``groupmood samples``: paths of real sample photos shipped inside installed packages."""
from __future__ import annotations

import click

from ..samples import SAMPLES, sample_path


@click.command("samples")
@click.argument("names", nargs=-1)
def samples_cmd(names: tuple[str, ...]) -> int:
    """Print the path of each sample photo NAMES (default: list them all)."""
    if not names:
        for name, (_, _, what) in sorted(SAMPLES.items()):
            click.echo(f"{name:12s} {what}")
        return 0
    for name in names:
        click.echo(str(sample_path(name)))
    return 0
