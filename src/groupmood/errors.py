"""The exceptions groupmood raises on user input, each with a message that says what to do."""
from __future__ import annotations

from pathlib import Path


class GroupmoodError(Exception):
    """Base of every error groupmood raises on purpose."""


class ImageLoadError(GroupmoodError):
    """An input file could not be read as an image; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsError(GroupmoodError):
    """A weight file is missing, cannot be fetched, or fails its sha256 check."""


class ConfigError(GroupmoodError):
    """A config file or override is malformed or names an unknown option."""


class DatasetError(GroupmoodError):
    """A dataset folder or label file is missing or malformed."""
