"""The few error types users see: each carries a one-line, human reason."""

from __future__ import annotations

from pathlib import Path


class PneumoCAMError(Exception):
    """Base class: the CLI turns these into a one-line error and a non-zero exit."""


class ImageLoadError(PneumoCAMError):
    """A file that is not a usable image; names the file and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelLoadError(PneumoCAMError):
    """A model artifact that cannot be found, downloaded or trusted."""


class DataError(PneumoCAMError):
    """A data folder that is missing, empty or laid out in a way we cannot read."""
