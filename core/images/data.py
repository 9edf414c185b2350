"""Finding labelled X-rays in a folder, in either layout users have.

* three folders, the seed's: ``BACTERIA/ NORMAL/ VIRUS/``
* the download (Kermany et al. 2018): ``NORMAL/ PNEUMONIA/``, with bacteria or
  virus only in the file name (``person1000_bacteria_2931.jpeg``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumocam.errors import DataError
from pneumocam.images.readers import is_image_name

CLASSES = ("BACTERIA", "NORMAL", "VIRUS")
_PATIENT = re.compile(r"^(person\d+)_", re.IGNORECASE)
_SERIES = re.compile(r"^(.*?)-\d+$")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str


@dataclass
class Scan:
    """What a folder holds: labelled samples and images whose class we cannot tell."""

    root: Path
    layout: str
    samples: list[Sample]
    unlabeled: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {k: c.get(k, 0) for k in CLASSES}


def check_labels(scan: Scan, classes: list[str]) -> None:
    """Refuse data holding a class the model does not know (before any image is scored)."""
    unknown = sorted({s.label for s in scan.samples} - set(classes))
    if unknown:
        raise DataError(f"data has classes the model does not know: {', '.join(unknown)}")


def distinct_names(paths: Sequence[str | Path]) -> list[Path]:
    """Each file's path relative to the deepest folder holding them all: ``a/x.png`` and ``b/x.png`` stay apart.

    One file, or files of one folder, keep their bare names.
    """
    resolved = [Path(p).resolve() for p in paths]
    if not resolved:
        return []
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return [p.relative_to(root) for p in resolved]


def relative_name(path: Path, root: Path) -> str:
    """How reports name a file: relative to the data folder (posix), or whole when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def labels_of(samples: Sequence[Sample], paths: Sequence[str | Path]) -> list[str]:
    """The label of each path, in the order given (e.g. the readable subset of the samples)."""
    by_path = {s.path: s.label for s in samples}
    return [by_path[Path(p)] for p in paths]


def class_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Labels as indices into the model's class list (its output order)."""
    order = {c: i for i, c in enumerate(classes)}
    return np.array([order[label] for label in labels], dtype=int)


def label_from_name(name: str) -> str | None:
    """BACTERIA or VIRUS from a PNEUMONIA file name; None when it says neither."""
    low = name.lower()
    has_b, has_v = "bacteria" in low, "virus" in low
    if has_b == has_v:
        return None
    return "BACTERIA" if has_b else "VIRUS"


def patient_id(path: str | Path) -> str:
    """The patient a file belongs to: ``personN`` or the ``IM-xxxx`` series stem."""
    stem = Path(path).stem
    m = _PATIENT.match(stem)
    if m:
        return m.group(1).lower()
    m = _SERIES.match(stem)
    return m.group(1) if m else stem


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, symlinked folders not followed), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if is_image_name(f))
    return sorted(found)


def _subfolders(root: Path) -> dict[str, Path]:
    return {p.name.upper(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def scan_dataset(root: str | Path) -> Scan:
    """Read a data folder in either layout; raise :class:`DataError` if it is neither."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    subs = _subfolders(root)
    if set(CLASSES) <= subs.keys():
        samples = [Sample(p, c) for c in CLASSES for p in list_images(subs[c])]
        scan = Scan(root, "three-folder", samples)
    elif {"NORMAL", "PNEUMONIA"} <= subs.keys():
        samples = [Sample(p, "NORMAL") for p in list_images(subs["NORMAL"])]
        unlabeled = []
        for p in list_images(subs["PNEUMONIA"]):
            label = label_from_name(p.name)
            if label is None:
                unlabeled.append(p)
            else:
                samples.append(Sample(p, label))
        scan = Scan(root, "download", samples, unlabeled)
    else:
        hint = " (it has train/ and test/: pick one)" if {"TRAIN", "TEST"} <= subs.keys() else ""
        raise DataError(f"{root} has neither BACTERIA/ NORMAL/ VIRUS/ nor NORMAL/ PNEUMONIA/ subfolders{hint}")
    if not scan.samples:
        raise DataError(f"no images found in {root}")
    return scan


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def subset(scan: Scan, listing: str | Path) -> Scan:
    """Only the samples a list file names (one path per line, relative to the data folder), e.g. a validation split."""
    try:
        wanted = {line.strip() for line in Path(listing).read_text().splitlines() if line.strip()}
    except OSError as exc:
        raise DataError(f"cannot read the file list {listing}: {exc.strerror}") from exc
    samples = [s for s in scan.samples if relative_name(s.path, scan.root) in wanted]
    if not samples:
        raise DataError(f"none of the {len(wanted)} files listed in {listing} is in {scan.root}")
    return Scan(scan.root, scan.layout, samples)


def prepare_layout(src: str | Path, dest: str | Path, overwrite: bool = False) -> Scan:
    """Lay ``src`` out as ``dest/{BACTERIA,NORMAL,VIRUS}/`` (hard links, else copies).

    Refuses a non-empty ``dest`` unless ``overwrite``. Returns the scan of ``src``,
    whose ``unlabeled`` lists the files that were left out.
    """
    scan = scan_dataset(src)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise DataError(f"{dest} is not empty; pass --overwrite to replace its class folders")
        for c in CLASSES:
            shutil.rmtree(dest / c, ignore_errors=True)
    for c in CLASSES:
        (dest / c).mkdir(parents=True, exist_ok=True)
    for s in scan.samples:
        target = dest / s.label / s.path.name
        if target.exists():
            target = dest / s.label / f"{s.path.parent.name}_{s.path.name}"
        _link_or_copy(s.path, target)
    return scan
