"""Sharded ``predict``: which photos a job takes, where it writes, and the merge in input order.

A job is shard I of N, from ``--shard I/N`` (independent jobs on many machines) or from torchrun's
``RANK`` / ``WORLD_SIZE`` (``WORLD_SIZE > 1``; several processes of one launch). Every job expands
the same inputs into the same ordered list and takes the photos at positions I, I + N, I + 2N, ...
(round robin, so that folders of unequal size spread evenly). Shard I of ``-o preds.jsonl`` writes
``preds.shard-I-of-N.jsonl``, an ordinary predict output (``--resume`` continues it as it
continues any), beside a manifest ``preds.shard-I-of-N.jsonl.inputs.json`` naming its photos and
their positions in the whole list. When a job completes and finds every shard complete it merges
them into ``preds.jsonl`` in input order, whatever order the shards finished in; ``groupmood merge
preds.jsonl`` does the same by hand. Merging is deterministic (same shards, same bytes) and
written atomically, so two jobs that finish together write the same file.
"""
from __future__ import annotations

import csv
import functools
import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .errors import ConfigError, GroupmoodError, display_path
from .io import atomic_write_text, csv_text_value

__all__ = ["MergeError", "PredictShards", "Shard", "find_shards", "merge_predictions", "parse_shard",
           "resolve_shard", "shard_option", "shard_output"]

MANIFEST_FORMAT = "groupmood-shard-1"
_SHARD_RE = re.compile(r"\.shard-(\d+)-of-(\d+)$")


class MergeError(GroupmoodError):
    """Shard outputs cannot be merged (missing, unfinished, or from different inputs)."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def take(self, items: Sequence[Any]) -> list[Any]:
        """This shard's items, round robin, so that folders of unequal size spread evenly.

        Args:
            items: the whole ordered list.

        Returns:
            The items at positions index, index + count, ...

        >>> Shard(1, 3).take(["a", "b", "c", "d", "e"])
        ['b', 'e']
        """
        return list(items[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """Read ``--shard I/N``.

    Args:
        text: ``I/N`` with 0 <= I < N.

    Returns:
        The :class:`Shard`.

    Raises:
        click.BadParameter: for anything else, naming the form.

    >>> parse_shard("2/4")
    Shard(index=2, count=4)
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise click.BadParameter(f"{text!r} is not I/N with 0 <= I < N (e.g. 0/4 ... 3/4 for four jobs)",
                                 param_hint="--shard")
    return Shard(int(m.group(1)), int(m.group(2)))


def resolve_shard(option: str | None) -> tuple[Shard | None, bool]:
    """The shard of this job and whether it came from torchrun: ``--shard``, else RANK / WORLD_SIZE > 1."""
    world = os.environ.get("WORLD_SIZE", "1")
    under_torchrun = world.isdigit() and int(world) > 1
    if option is not None:
        if under_torchrun:
            raise click.UsageError("--shard and torchrun (WORLD_SIZE > 1) both split the inputs; give one of them")
        return parse_shard(option), False
    if not under_torchrun:
        return None, False
    rank = os.environ.get("RANK", "")
    if not rank.isdigit() or int(rank) >= int(world):
        raise click.UsageError(f"WORLD_SIZE={world} but RANK={rank!r}; launch with torchrun, which sets both")
    return Shard(int(rank), int(world)), True


def shard_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--shard I/N`` for a command; the value is kept in the click context for :func:`current_shard`."""
    @functools.wraps(fn)
    def wrapper(*args: Any, shard: str | None = None, **kwargs: Any) -> Any:
        click.get_current_context().meta["groupmood.shard"] = shard
        return fn(*args, **kwargs)

    return click.option(
        "--shard", default=None, metavar="I/N",
        help="Process only shard I of N of the inputs (photos I, I+N, ...); N jobs with the same inputs and -o "
             "cover all of them and the last to finish merges. Under torchrun the shard is the process's "
             "RANK/WORLD_SIZE.")(wrapper)


def current_shard() -> tuple[Shard | None, bool]:
    """The running command's shard (``--shard`` or torchrun's environment) and whether torchrun gave it."""
    ctx = click.get_current_context(silent=True)
    return resolve_shard(ctx.meta.get("groupmood.shard") if ctx is not None else None)


def shard_output(output: str | Path, shard: Shard) -> Path:
    """Where a shard's predictions go: beside the whole output, the shard in the name.

    Args:
        output: the whole run's output file.
        shard: this job's shard.

    Returns:
        ``preds.jsonl`` -> ``preds.shard-I-of-N.jsonl``.

    >>> shard_output("out/preds.jsonl", Shard(0, 4)).as_posix()
    'out/preds.shard-0-of-4.jsonl'
    """
    p = Path(output)
    suffix = p.suffix
    stem = p.name[:-len(suffix)] if suffix else p.name
    return p.with_name(f"{stem}.shard-{shard.index}-of-{shard.count}{suffix}")


def _manifest_path(shard_file: Path) -> Path:
    return shard_file.with_name(shard_file.name + ".inputs.json")


def _inputs_digest(names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode("utf-8", "backslashreplace") + b"\n")
    return h.hexdigest()


class PredictShards:
    """One predict job's part of the work; a no-op (all photos, the given output) when not sharded."""

    def __init__(self, paths: Sequence[Path], output: str, fmt: str, shard: Shard | None,
                 torchrun: bool = False) -> None:
        self.shard, self.torchrun, self.fmt = shard, torchrun, fmt
        self.target = output
        self.paths = list(paths)
        self.output = output
        if shard is None:
            return
        if output in ("", "-"):
            raise click.UsageError("a sharded predict writes one file per shard and merges them: give -o FILE")
        names = [display_path(p) for p in paths]
        self.paths = shard.take(list(paths))
        out = shard_output(output, shard)
        self.output = str(out)
        manifest = {"format": MANIFEST_FORMAT, "output_format": fmt, "shard": shard.index, "of": shard.count,
                    "total": len(names), "inputs_sha256": _inputs_digest(names),
                    "inputs": [[i, names[i]] for i in range(shard.index, len(names), shard.count)]}
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(_manifest_path(out), json.dumps(manifest, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise ConfigError(f"cannot write the shard manifest beside -o {display_path(output)}: "
                              f"{exc.strerror or exc}; choose another output folder") from None

    @classmethod
    def from_context(cls, paths: Sequence[Path], output: str, fmt: str) -> PredictShards:
        """The plan of the running ``predict`` command (its ``--shard`` option or torchrun's environment)."""
        shard, torchrun = current_shard()
        return cls(paths, output, fmt, shard, torchrun)

    def suffixed(self, path: str | None) -> str | None:
        """A per-run file (``--report``) named per shard: ``report.html`` -> ``report.shard-I-of-N.html``."""
        if path is None or self.shard is None:
            return path
        return str(shard_output(path, self.shard))

    def device(self, device: str) -> str:
        """Under torchrun, ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
        if self.torchrun and device in ("cuda", "auto"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
        return device

    def finish(self) -> Path | None:
        """After this shard completed: merge when every shard is complete; returns the merged file or None."""
        if self.shard is None:
            return None
        missing = [i for i, f in enumerate(_shard_files(Path(self.target), self.shard.count)) if not _complete(f)]
        if missing:
            click.echo(f"shard {self.shard} done; waiting for shard(s) {', '.join(map(str, missing[:10]))}"
                       f"{' ...' if len(missing) > 10 else ''} of {self.shard.count}: the last to finish merges "
                       f"them into {display_path(self.target)} (or run `groupmood merge "
                       f"{display_path(self.target)}`)", err=True)
            return None
        merged = merge_predictions(self.target, self.shard.count)
        click.echo(f"merged {self.shard.count} shards into {display_path(merged)}", err=True)
        return merged


def _shard_files(target: Path, count: int) -> list[Path]:
    return [shard_output(target, Shard(i, count)) for i in range(count)]


def _complete(shard_file: Path) -> bool:
    """A shard's output is complete when its file exists and no FILE.partial is left (predict renames it)."""
    return shard_file.is_file() and not shard_file.with_name(shard_file.name + ".partial").exists()


def find_shards(target: str | Path) -> int:
    """The N of the ``TARGET.shard-I-of-N`` files beside ``target``; MergeError when none or several Ns."""
    target = Path(target)
    suffix = target.suffix
    stem = target.name[:-len(suffix)] if suffix else target.name
    counts = set()
    for f in target.parent.glob(f"{glob.escape(stem)}.shard-*-of-*{glob.escape(suffix)}"):
        m = _SHARD_RE.search(f.name[:-len(suffix)] if suffix else f.name)
        if m and not f.name.endswith((".partial", ".json")):
            counts.add(int(m.group(2)))
    if not counts:
        raise MergeError(f"no shard outputs of {display_path(target)} (files {stem}.shard-I-of-N{suffix}); run "
                         "predict with --shard I/N or under torchrun first")
    if len(counts) > 1:
        raise MergeError(f"shard outputs of {display_path(target)} from runs of different sizes "
                         f"(N = {', '.join(map(str, sorted(counts)))}); give --of N or remove the stale ones")
    return counts.pop()


def _read_records(path: Path, fmt: str) -> tuple[str, list[tuple[str, str]]]:
    """(header text, [(file name, record text)]) of a shard output."""
    text = path.read_bytes().decode("utf-8", "replace")
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            raise MergeError(f"{display_path(path)} is empty; run its shard again with --resume")

        def line(r: list[str]) -> str:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(r)
            return buf.getvalue()

        return line(rows[0]), [(csv_text_value(r[0]), line(r)) for r in rows[1:] if r]
    out = []
    for ln in text.split("\n"):
        if not ln.strip():
            continue
        try:
            out.append((json.loads(ln)["file"], ln + "\n"))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise MergeError(f"{display_path(path)} holds a line that is not a predict record ({ln[:80]!r}); "
                             "run its shard again with --resume") from None
    return "", out


def merge_predictions(target: str | Path, count: int | None = None) -> Path:
    """Merge the N shard outputs of ``target`` into ``target``, one record per input photo, in input order."""
    target = Path(target)
    count = count or find_shards(target)
    files = _shard_files(target, count)
    missing = [f"{i} ({display_path(f)}{' unfinished' if f.is_file() or f.with_name(f.name + '.partial').exists() else ' missing'})"
               for i, f in enumerate(files) if not _complete(f)]
    if missing:
        raise MergeError(f"cannot merge {display_path(target)}: shard(s) {', '.join(missing)} not complete; run "
                         "them (again with --resume) with the same inputs and -o, then merge")
    manifests = []
    for f in files:
        try:
            manifests.append(json.loads(_manifest_path(f).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise MergeError(f"{display_path(_manifest_path(f))} cannot be read ({exc}); run the shard again "
                             "with --resume") from None
    first = manifests[0]
    for i, m in enumerate(manifests):
        if m.get("format") != MANIFEST_FORMAT or m.get("shard") != i or m.get("of") != count:
            raise MergeError(f"{display_path(_manifest_path(files[i]))} is not the manifest of shard {i}/{count}")
        for key in ("total", "inputs_sha256", "output_format"):
            if m.get(key) != first.get(key):
                raise MergeError(f"shards 0 and {i} of {display_path(target)} differ in {key}: they ran on "
                                 "different inputs or formats; run every shard with the same inputs and -o")
    fmt, total = first["output_format"], int(first["total"])
    slots: list[str | None] = [None] * total
    header = None
    for f, m in zip(files, manifests):
        where = {name: i for i, name in m["inputs"]}
        head, records = _read_records(f, fmt)
        if header is None:
            header = head
        elif head != header:
            raise MergeError(f"{display_path(f)} has other columns than shard 0; run every shard with the same "
                             "bundle")
        for name, rec in records:
            i = where.get(name)
            if i is None:
                raise MergeError(f"{display_path(f)} holds a record of {name}, which its manifest does not list")
            if slots[i] is not None:
                raise MergeError(f"{display_path(f)} holds {name} twice")
            slots[i] = rec
    absent = [i for i, s in enumerate(slots) if s is None]
    if absent:
        raise MergeError(f"{len(absent)} input photo(s) have no record in the shards of {display_path(target)} "
                         f"(first: input #{absent[0]}); run the shards again with --resume")
    atomic_write_text(target, (header or "") + "".join(s for s in slots if s is not None))
    return target
