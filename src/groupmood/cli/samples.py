"""``groupmood samples``: paths of real sample photos shipped inside installed packages."""
from __future__ import annotations

import click

from ..samples import describe, sample_path


@click.command("samples")
@click.argument("names", nargs=-1)
def samples_cmd(names: tuple[str, ...]) -> int:
    """Print the path of each sample photo NAMES, fetching it on first use (default: list them all)."""
    if not names:
        for name, what in describe().items():
            click.echo(f"{name:12s} {what}")
        return 0
    for name in names:
        click.echo(str(sample_path(name)))
    return 0
