"""Report files written atomically: a temporary file in the same folder, then a rename.

An interrupted run leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pneumocam.errors import DataError
from pneumocam.options import FIGURE_DPI


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8; undecodable bytes of file names (surrogate escapes) are written back as they were."""
    return write_bytes(path, text.encode("utf-8", "surrogateescape"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def save_figure(fig: Any, path: str | Path, dpi: int = FIGURE_DPI) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def check_out(out: str | Path, ours: Callable[[str], bool], overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is a file or a folder holding what ``ours`` does not recognise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.is_dir() and not overwrite:
        foreign = sorted(p.name for p in out.iterdir() if not ours(p.name))
        if foreign:
            raise DataError(
                f"{out} holds files that are not part of this kind of output ({', '.join(foreign[:3])}); "
                "choose another --out or pass --overwrite"
            )


def claim_output(
    out: str | Path,
    ours: Callable[[str], bool],
    overwrite: bool = False,
    keep: Callable[[str], bool] = lambda name: False,
) -> Callable[[], contextlib.AbstractContextManager[Path]]:
    """Check a command's output folder now, before any work; what it returns writes the folder whole later.

    ``write = claim_output(out, ours)`` at the start, then ``with write() as staging:`` (:func:`replace_folder`).
    """
    check_out(out, ours, overwrite)
    return functools.partial(replace_folder, out, ours, overwrite, keep)


@contextmanager
def replace_folder(
    out: str | Path,
    ours: Callable[[str], bool],
    overwrite: bool = False,
    keep: Callable[[str], bool] = lambda name: False,
) -> Iterator[Path]:
    """Build a report in a hidden staging folder beside ``out``; on success it replaces ``out`` whole.

    So a folder only ever holds one run's files (an interrupted run leaves the
    previous report untouched), and a folder holding anything that ``ours``
    does not recognise is refused unless ``overwrite``. Entries of the old
    folder that ``keep`` names (what other commands wrote there, such as an
    evaluate report's galleries) move into the new one unless it has its own.
    """
    out = Path(out)
    check_out(out, ours, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        old = staging.with_name(staging.name + "-old")
        if out.exists():
            out.rename(old)
        staging.rename(out)
        if old.exists():
            for entry in old.iterdir():
                if keep(entry.name) and not (out / entry.name).exists():
                    entry.rename(out / entry.name)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
