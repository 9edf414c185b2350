"""Evaluating a labelled folder: score, measure, and write the four report files."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifact import LoadedModel
from core.data import Scan, check_labels
from core.errors import DataError
from core.inference import score_files
from core.metrics import classification_metrics
from core.plots import confusion_matrix_figure, per_class_figure, reliability_figure
from core.reports import save_figure, write_csv, write_json

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"
PER_CLASS_FILE = "per_class_metrics.png"
RELIABILITY_FILE = "reliability.png"
REPORT_FILES = (METRICS_FILE, PREDICTIONS_FILE, CONFUSION_FILE, PER_CLASS_FILE, RELIABILITY_FILE)
GALLERY_DIR = "gallery"


def is_report_entry(name: str) -> bool:
    """Names an evaluate report folder may hold: its files and the galleries drawn from it."""
    return name in REPORT_FILES or name == GALLERY_DIR


@dataclass(frozen=True)
class Prediction:
    """One scored file; ``file`` is relative to the data folder (posix)."""

    file: str
    true: str
    predicted: str
    probabilities: dict[str, float]


@dataclass
class Evaluation:
    predictions: list[Prediction]
    metrics: dict[str, Any]


def relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def evaluate_scan(
    loaded: LoadedModel, scan: Scan, batch_size: int = 32, on_batch: Callable[[int], None] | None = None
) -> Evaluation:
    """Score every sample of a scan and compute the metrics (skipped files listed in them)."""
    classes = loaded.meta.classes
    check_labels(scan, classes)
    label_of = {s.path: s.label for s in scan.samples}
    scores = score_files(loaded.model, loaded.meta.input, [s.path for s in scan.samples], batch_size, on_batch)
    if not scores.paths:
        raise DataError(f"none of the {len(scan.samples)} images in {scan.root} could be read")
    y_true = np.array([classes.index(label_of[p]) for p in scores.paths])
    metrics = classification_metrics(y_true, scores.probabilities, classes)
    metrics["skipped"] = [{"file": relative_name(p, scan.root), "reason": r} for p, r in scores.skipped]
    preds = [
        Prediction(
            file=relative_name(p, scan.root),
            true=label_of[p],
            predicted=classes[int(np.argmax(pr))],
            probabilities={c: float(v) for c, v in zip(classes, pr)},
        )
        for p, pr in zip(scores.paths, scores.probabilities)
    ]
    return Evaluation(preds, metrics)


def write_predictions(path: Path, predictions: list[Prediction], classes: list[str]) -> Path:
    header = ["file", "true", "predicted", *[f"p_{c}" for c in classes]]
    rows = ([p.file, p.true, p.predicted, *[f"{p.probabilities[c]:.6f}" for c in classes]] for p in predictions)
    return write_csv(path, header, rows)


def read_predictions(path: str | Path, classes: list[str]) -> list[Prediction]:
    """Read an evaluate run's ``predictions.csv`` back (for galleries without re-scoring)."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"cannot read predictions {path}: {exc.strerror}") from None
    needed = {"file", "true", "predicted", *[f"p_{c}" for c in classes]}
    if not rows or not needed <= set(rows[0]):
        raise DataError(f"{path} is not an evaluate predictions.csv for classes {', '.join(classes)}")
    try:
        return [
            Prediction(r["file"], r["true"], r["predicted"], {c: float(r[f"p_{c}"]) for c in classes}) for r in rows
        ]
    except ValueError as exc:
        raise DataError(f"{path} has a malformed row: {exc}") from None


def write_report(out: str | Path, evaluation: Evaluation, classes: list[str], title: str = "") -> list[Path]:
    """``metrics.json``, ``predictions.csv`` and three figures, each written atomically."""
    out = Path(out)
    m = evaluation.metrics
    return [
        write_json(out / METRICS_FILE, m),
        write_predictions(out / PREDICTIONS_FILE, evaluation.predictions, classes),
        save_figure(confusion_matrix_figure(m["confusion_matrix"], classes, title), out / CONFUSION_FILE),
        save_figure(per_class_figure(m), out / PER_CLASS_FILE),
        save_figure(reliability_figure(m), out / RELIABILITY_FILE),
    ]
