"""The few error types users see: each carries a one-line, human reason.

The CLI and the Space catch these and nothing else: they print one line (the
CLI exits 1). Any other exception is a bug, ours or a library's, and surfaces
as one, with its traceback. ``PNEUMOCAM_DEBUG=1`` shows the traceback of our
errors too.
"""

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


def none_readable(n: int, where: str | Path, skipped: list[tuple[Path, str]]) -> DataError:
    """The error for a folder none of whose images could be read, naming (up to three of) them and why."""
    reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return DataError(f"none of the {n} images in {where} could be read ({reasons}{more})")


class InputError(PneumoCAMError, ValueError):
    """An argument the user gave that we cannot use (a class the model lacks, a layer count out of range...).

    Also a ``ValueError``, so code that validates values keeps catching it as one.
    """


class EngineError(PneumoCAMError):
    """A scoring engine that is not installed, cannot be reached, or lost work."""


class PublishError(PneumoCAMError):
    """The upload could not be made (no network, no token, refused)."""
