"""Evaluating a labelled folder: score it under a protocol (:mod:`pneumocam.site.protocols`), measure, report."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocam.atomic import save_figure, write_csv, write_json
from pneumocam.errors import DataError, none_readable
from pneumocam.images.data import Scan, check_labels, class_indices, labels_of, patient_id, relative_name
from pneumocam.model import conformal
from pneumocam.model.validity import NOTE_SEP, Validity, summarize
from pneumocam.options import DEFAULT_BATCH_SIZE, VALIDITY_ACCEPT
from pneumocam.plots import confusion_matrix_figure, per_class_figure, reliability_figure, risk_coverage_figure
from pneumocam.scoring.engine import LocalEngine
from pneumocam.scoring.metrics import bootstrap_ci, classification_metrics
from pneumocam.scoring.selective import risk_coverage, set_metrics
from pneumocam.site.protocols import TRAIN_ONLY, Protocol, Scored

if TYPE_CHECKING:
    from pneumocam.scoring.predictor import Predictor
    from pneumocam.scoring.ray_engine import RayEngine

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"
PER_CLASS_FILE = "per_class_metrics.png"
RELIABILITY_FILE = "reliability.png"
RISK_COVERAGE_FILE = "risk_coverage.png"
REPORT_FILES = (METRICS_FILE, PREDICTIONS_FILE, CONFUSION_FILE, PER_CLASS_FILE, RELIABILITY_FILE, RISK_COVERAGE_FILE)
GALLERY_DIR = "gallery"


def is_report_entry(name: str) -> bool:
    """Names an evaluate report folder may hold: its files and the galleries drawn from it."""
    return name in REPORT_FILES or name == GALLERY_DIR


def provenance(predictor: Predictor, data_dir: Path) -> dict[str, Any]:
    """What a report was made from and with: the model, the data folder, when, and the software."""
    from datetime import UTC, datetime
    from importlib.metadata import version

    import tensorflow as tf

    import pneumocam

    packages = {name: version(name) for name in ("keras", "numpy", "scikit-learn", "pillow", "pydicom")}
    return {
        "model": {"name": predictor.meta.name, "sha256": predictor.meta.weights_sha256, "source": predictor.source},
        "views": list(predictor.views),
        "input": predictor.spec.to_dict(),
        "data_dir": Path(data_dir).resolve().name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"pneumocam": pneumocam.__version__, "tensorflow": tf.__version__, **packages},
    }


@dataclass(frozen=True)
class Prediction:
    """One scored file; ``file`` is relative to the data folder (posix).

    ``in_distribution``, ``ood_score`` and ``reasons``: the call's validity (:mod:`pneumocam.model.validity`);
    None where it was not measured (a predictions.csv written before it was). ``prediction_set``: the classes of
    its prediction set, most probable first (:mod:`pneumocam.model.conformal`); None without a set rule.
    """

    file: str
    true: str
    predicted: str
    probabilities: dict[str, float]
    in_distribution: bool | None = None
    ood_score: float | None = None
    reasons: tuple[str, ...] = ()
    prediction_set: tuple[str, ...] | None = None


@dataclass
class Evaluation:
    predictions: list[Prediction]
    metrics: dict[str, Any]


def evaluate_scan(
    predictor: Predictor,
    scan: Scan,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    protocol: Protocol = Protocol(),
    engine: LocalEngine | RayEngine | None = None,
) -> Evaluation:
    """Score every sample of a scan under a protocol and compute the metrics with 95 % intervals.

    ``engine`` (default: this process) does the scoring; the rest is the same for every engine.
    """
    engine = engine or LocalEngine()
    check_labels(scan, predictor.meta.classes)
    scored = protocol.score(predictor, [s.path for s in scan.samples], engine, batch_size, on_batch)
    return evaluate_scored(scored, scan, protocol, engine.info())


def evaluate_scored(scored: Scored, scan: Scan, protocol: Protocol, engine: dict[str, Any]) -> Evaluation:
    """The metrics and per-file predictions of a scored folder under the protocol's labelled step.

    Skipped files are listed in the metrics; ``metrics["protocol"]`` names the protocol and, for cross-fitting,
    the split and each fold's fit.
    """
    scores, classes = scored.scores, scored.predictor.meta.classes
    if not scores.paths:
        raise none_readable(len(scan.samples), scan.root, scores.skipped)
    labels = labels_of(scan.samples, scores.paths)
    y_true = class_indices(labels, classes)
    groups = [patient_id(p) for p in scores.paths]
    names = [relative_name(p, scan.root) for p in scores.paths]
    site = protocol.fit(scored, labels, groups, names)
    metrics = classification_metrics(y_true, site.probabilities, classes)
    metrics["ci95"] = bootstrap_ci(y_true, site.probabilities, classes, groups)
    validity = scores.verdicts()
    metrics["validity"] = validity_block(
        validity, y_true, site.probabilities, classes, scored.predictor.validity_stats is not None
    )
    rule = scored.predictor.sets
    if site.member is not None:
        sets = set_metrics(site.member, y_true, classes, groups, rule.level)
        metrics["sets"] = {"method": rule.method, "fitted_on": site.sets_from, **sets}
    metrics["risk_coverage"] = risk_coverage(site.probabilities, y_true)
    metrics["protocol"] = site.record
    metrics["skipped"] = [{"file": relative_name(p, scan.root), "reason": r} for p, r in scores.skipped]
    metrics["provenance"] = {**provenance(scored.predictor, scan.root), "engine": engine}
    member = [None] * len(labels) if site.member is None else site.member
    preds = [
        Prediction(
            file=name,
            true=label,
            predicted=classes[int(np.argmax(pr))],
            probabilities={c: float(v) for c, v in zip(classes, pr)},
            in_distribution=v.in_distribution,
            ood_score=v.ood_score,
            reasons=v.reasons,
            prediction_set=None if keep is None else tuple(conformal.member_names(pr, keep, classes)),
        )
        for name, label, pr, v, keep in zip(names, labels, site.probabilities, validity, member)
    ]
    return Evaluation(preds, metrics)


def validity_block(
    validity: list[Validity], y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], scored: bool
) -> dict[str, Any]:
    """How many calls were flagged and why, and the figures on the accepted images alone."""
    correct = probabilities.argmax(1) == y_true if len(y_true) else np.zeros(0, bool)
    block = summarize(validity, correct)
    block["scored"] = scored
    block["threshold"] = 1.0
    block["accept"] = VALIDITY_ACCEPT
    accepted = np.array([v.in_distribution for v in validity], bool)
    if accepted.any():
        m = classification_metrics(y_true[accepted], probabilities[accepted], classes)
        block["accepted"] = {"n_images": int(accepted.sum()), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return block


VALIDITY_COLUMNS = ("in_distribution", "ood_score", "validity_reasons")
SET_COLUMN = "prediction_set"


def write_predictions(path: Path, predictions: list[Prediction], classes: list[str]) -> Path:
    header = ["file", "true", "predicted", *[f"p_{c}" for c in classes], *VALIDITY_COLUMNS, SET_COLUMN]
    rows = (
        [
            p.file,
            p.true,
            p.predicted,
            *[f"{p.probabilities[c]:.6f}" for c in classes],
            "" if p.in_distribution is None else str(p.in_distribution).lower(),
            "" if p.ood_score is None else f"{p.ood_score:.4f}",
            NOTE_SEP.join(p.reasons),
            "" if p.prediction_set is None else conformal.SET_SEP.join(p.prediction_set),
        ]
        for p in predictions
    )
    return write_csv(path, header, rows)


def _validity_of(row: dict[str, str]) -> dict[str, Any]:
    """The validity columns of a predictions.csv row (absent in files written before them)."""
    flag, score, why = (row.get(k) or "" for k in VALIDITY_COLUMNS)
    named = row.get(SET_COLUMN) or ""
    return {
        "in_distribution": {"true": True, "false": False}.get(flag),
        "ood_score": float(score) if score else None,
        "reasons": tuple(why.split(NOTE_SEP)) if why else (),
        "prediction_set": tuple(named.split(conformal.SET_SEP)) if named else None,
    }


def read_predictions(path: str | Path, classes: list[str]) -> list[Prediction]:
    """Read an evaluate run's ``predictions.csv`` back (for galleries without re-scoring)."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"cannot read predictions {path}: {exc.strerror}") from exc
    needed = {"file", "true", "predicted", *[f"p_{c}" for c in classes]}
    if not rows or not needed <= set(rows[0]):
        raise DataError(f"{path} is not an evaluate predictions.csv for classes {', '.join(classes)}")
    try:
        return [
            Prediction(
                r["file"], r["true"], r["predicted"], {c: float(r[f"p_{c}"]) for c in classes}, **_validity_of(r)
            )
            for r in rows
        ]
    except ValueError as exc:
        raise DataError(f"{path} has a malformed row: {exc}") from exc


def matching_predictions(report: Path, meta: Any, data_dir: Path) -> Path | None:
    """An evaluate report's ``predictions.csv`` made by this model (same weights) on this folder, as trained.

    So a gallery after an evaluate need not score the folder again.
    """
    try:
        m = json.loads((Path(report) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    prov = m.get("provenance", {})
    same = (
        prov.get("model", {}).get("sha256") == meta.weights_sha256
        and prov.get("data_dir") == Path(data_dir).resolve().name
        and m.get("protocol", {}).get("name", TRAIN_ONLY) == TRAIN_ONLY
    )
    path = Path(report) / PREDICTIONS_FILE
    return path if same and path.is_file() else None


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
        save_figure(risk_coverage_figure(m), out / RISK_COVERAGE_FILE),
    ]
