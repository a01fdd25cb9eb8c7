"""The ``groupmood`` command line: one click group, one module per subcommand.

The subcommands are loaded lazily (click's "LazyGroup" pattern): ``groupmood predict`` imports
``groupmood.cli.predict`` and nothing of the other commands, so a CPU prediction with ONNX Runtime
never imports torch. ``groupmood --help`` imports every command module to show their summaries.

``main(argv)`` returns the exit status instead of exiting, so tests call it directly.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from ..errors import GroupmoodError

#: Command name -> ``"module:attribute"`` (module relative to this package) of its click command.
COMMANDS: dict[str, str] = {
    "cache": ".cache:cache_group",
    "detect": ".detect:detect_cmd",
    "evaluate": ".train:evaluate_cmd",
    "evaluate-groups": ".evaluate_groups:evaluate_groups_cmd",
    "export": ".export:export_cmd",
    "fuse": ".fuse:fuse_cmd",
    "merge": ".merge:merge_cmd",
    "predict": ".predict:predict_cmd",
    "samples": ".samples:samples_cmd",
    "serve": ".serve:serve_cmd",
    "train": ".train:train_cmd",
    "weights": ".weights:weights_group",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are ``"module:attribute"`` strings, imported on first use."""

    def __init__(self, *args: Any, lazy_subcommands: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands: dict[str, str] = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, _, attr = self.lazy_subcommands[cmd_name].partition(":")
        module = importlib.import_module(module_name, package=__name__)
        cmd = getattr(module, attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{self.lazy_subcommands[cmd_name]} is a {type(cmd).__name__}, not a click command")
        return cmd


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="groupmood")
def cli() -> None:
    """groupmood: group-level emotion (Positive / Neutral / Negative) from photos."""


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
