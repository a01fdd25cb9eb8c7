"""The ``groupmood`` command line: one click group, one module per subcommand.

``main(argv)`` returns the exit status instead of exiting, so tests call it directly.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from ..errors import GroupmoodError
from .cache import cache_group
from .detect import detect_cmd
from .evaluate_groups import evaluate_groups_cmd
from .export import export_cmd
from .fuse import fuse_cmd
from .merge import merge_cmd
from .predict import predict_cmd
from .samples import samples_cmd
from .serve import serve_cmd
from .train import evaluate_cmd, train_cmd
from .weights import weights_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="groupmood")
def cli() -> None:
    """groupmood: group-level emotion (Positive / Neutral / Negative) from photos."""


cli.add_command(detect_cmd)
cli.add_command(samples_cmd)
cli.add_command(cache_group)
cli.add_command(weights_group)
cli.add_command(train_cmd)
cli.add_command(evaluate_cmd)
cli.add_command(export_cmd)
cli.add_command(predict_cmd)
cli.add_command(fuse_cmd)
cli.add_command(merge_cmd)
cli.add_command(evaluate_groups_cmd)
cli.add_command(serve_cmd)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args=args, prog_name="groupmood", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted. Finished work is kept: run the same command with --resume to continue (predict, "
                   "detect, train); cache build continues by itself.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except GroupmoodError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return int(rv or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
