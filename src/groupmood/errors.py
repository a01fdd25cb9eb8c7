"""The exceptions groupmood raises on user input, each with a message that says what to do."""
from __future__ import annotations

import os
from pathlib import Path


def display_path(path: str | Path) -> str:
    """A path as printable UTF-8 text, so that records, messages and reports never fail on its name.

    Args:
        path: a path; bytes in it that are not UTF-8 (a file name from another system) become
            ``\\xNN`` escapes.

    Returns:
        The text.

    >>> print(display_path(os.fsdecode(b"caf\\xe9.jpg")))
    caf\\xe9.jpg
    """
    s = os.fspath(path)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace")


class GroupmoodError(Exception):
    """Base of every error groupmood raises on purpose."""


class ImageLoadError(GroupmoodError):
    """An input file could not be read as an image; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = display_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsError(GroupmoodError):
    """A weight file is missing, cannot be fetched, or fails its sha256 check."""


class ConfigError(GroupmoodError):
    """A config file or override is malformed or names an unknown option."""


class DatasetError(GroupmoodError):
    """A dataset folder or label file is missing or malformed."""


class OutputError(GroupmoodError):
    """An output file or folder cannot be written there; names it, says why and what to do."""


class PatternError(GroupmoodError, ValueError):
    """An input glob pattern cannot be read (e.g. a reversed range ``[z-a]``); names it."""


class DiskFullError(OutputError):
    """An output could not be written because the disk (or quota) is full; says what was kept."""

    #: Exit status of the command line: distinct from 1 (some photos failed) and 2 (usage errors).
    exit_code = 3
