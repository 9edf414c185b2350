"""Evaluating a labelled folder: score, measure, and write the four report files."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocam.atomic import save_figure, write_csv, write_json
from pneumocam.errors import DataError, InputError, none_readable
from pneumocam.images.data import Scan, check_labels, class_indices, labels_of, patient_id, relative_name
from pneumocam.model import conformal
from pneumocam.model.validity import NOTE_SEP, Validity, summarize
from pneumocam.options import (
    ADAPT_BATCH_SIZE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EVALUATE_ADAPT_METHOD,
    DEFAULT_SPLIT_SEED,
    LAME,
    LAME_BLOCK,
    LAME_KNN,
    VALIDITY_ACCEPT,
)
from pneumocam.plots import confusion_matrix_figure, per_class_figure, reliability_figure, risk_coverage_figure
from pneumocam.scoring.engine import LocalEngine
from pneumocam.scoring.metrics import bootstrap_ci, classification_metrics
from pneumocam.scoring.selective import risk_coverage, set_metrics
from pneumocam.site import calibration, tuning

if TYPE_CHECKING:
    from pneumocam.scoring.engine import LocalEngine
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
ADAPT_ENGINE_HINT = (
    "--adapt runs on the local engine; for --engine ray, adapt first (python -m cli adapt DIR --out MODEL) "
    "and evaluate that model folder"
)
TUNE_ENGINE_HINT = (
    "--cross-tune runs on the local engine; for --engine ray, tune first (python -m cli tune DIR --out MODEL) "
    "and evaluate that model folder on other images"
)


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


TRAIN_ONLY = "train-only"
ADAPTED = "site-adapted"
CALIBRATED = "site-calibrated"
TUNED = "site-tuned"
SITE_CURVE = "site-curve"


def metrics_key(split: str, protocol: str = TRAIN_ONLY) -> str:
    """Where ``model.json`` keeps a split's figures: ``test`` for the model as trained, ``test:PROTOCOL`` else."""
    return split if protocol == TRAIN_ONLY else f"{split}:{protocol}"


LAME_TEXT = (
    ", and the probabilities adjusted over the folder by LAME (each image towards its nearest neighbours in pooled "
    "features)"
)
PROTOCOL_TEXT = {
    TRAIN_ONLY: "the model as trained: every choice made on the validation split from train",
    ADAPTED: "unlabelled site adaptation, transductive: batch-norm and pooled-feature statistics "
    "re-standardised on this folder's own images (no label read), then scored",
    CALIBRATED: "labelled site calibration, cross-fitted: the folder split into {k} folds (stratified by class, "
    "grouped by patient, seed {seed}); a temperature and per-class logit biases fitted on the other folds score "
    "each fold, so no image is scored by a calibration that saw it",
    TUNED: "labelled site tuning, cross-fitted: the folder split into {k} folds (stratified by class, grouped by "
    "patient, seed {seed}); the head re-fitted on the other folds' pooled features, the trained logits as offset "
    "(its penalty, or calibration, or nothing, chosen by a patient-grouped inner cross-validation inside those "
    "folds) scores each fold, so no image is scored by a head that saw it",
}


@dataclass(frozen=True)
class Protocol:
    """How a folder is scored: as is, adapted to it (unlabelled), and/or a cross-fitted labelled protocol.

    The labelled protocols are calibration (``cross_calibrate``) or tuning (``cross_tune``), not both:
    tuning's inner cross-validation already falls back to calibration where that fits better.
    """

    adapt: bool = False
    cross_calibrate: int | None = None
    cross_tune: int | None = None
    adapt_method: str = DEFAULT_EVALUATE_ADAPT_METHOD
    split_seed: int = DEFAULT_SPLIT_SEED

    def __post_init__(self) -> None:
        if self.cross_calibrate and self.cross_tune:
            raise InputError("--cross-calibrate and --cross-tune are two protocols: choose one")

    @property
    def folds(self) -> int | None:
        """K of the cross-fitted labelled protocol, if any."""
        return self.cross_calibrate or self.cross_tune

    @property
    def name(self) -> str:
        parts = [ADAPTED] * self.adapt + [CALIBRATED] * bool(self.cross_calibrate) + [TUNED] * bool(self.cross_tune)
        return "+".join(parts) or TRAIN_ONLY

    def describe(self) -> str:
        keys = [k for k in (ADAPTED, CALIBRATED, TUNED) if k in self.name.split("+")] or [TRAIN_ONLY]
        texts = [PROTOCOL_TEXT[k] + (LAME_TEXT if k == ADAPTED and self.with_lame else "") for k in keys]
        return "; then ".join(texts).format(k=self.folds, seed=self.split_seed)

    @property
    def with_lame(self) -> bool:
        """Whether adaptation ends with LAME over the folder (``evaluate --adapt``'s default)."""
        return self.adapt and self.adapt_method.endswith(f"+{LAME}")

    def passes(self) -> int:
        """Passes over the images (for progress bars): adaptation statistics, then scoring."""
        if not self.adapt:
            return 1
        from pneumocam.site.adaptation import stat_passes  # TensorFlow: the CLI checks its input before loading it

        return stat_passes(self.adapt_method) + 1


def evaluate_scan(
    predictor: Predictor,
    scan: Scan,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    protocol: Protocol = Protocol(),
    engine: LocalEngine | RayEngine | None = None,
) -> Evaluation:
    """Score every sample of a scan under a protocol and compute the metrics with 95 % intervals.

    Skipped files are listed in the metrics; ``metrics["protocol"]`` names the
    protocol and, for cross-fitting, the split and each fold's calibration.
    ``engine`` (default: this process) does the scoring; the rest is the same for every engine.
    """

    engine = engine or LocalEngine()
    classes = predictor.meta.classes
    check_labels(scan, classes)
    paths = [s.path for s in scan.samples]
    scored, block = predictor, {"name": protocol.name, "description": protocol.describe()}
    if protocol.cross_tune and engine.name != LocalEngine.name:
        raise InputError(TUNE_ENGINE_HINT)
    with_lame = False
    if protocol.adapt:
        if engine.name != LocalEngine.name:
            raise InputError(ADAPT_ENGINE_HINT)
        from pneumocam.site.adaptation import adapted_site, split_method  # TensorFlow: see passes()
        from pneumocam.site.lame import lame_scores

        method, with_lame = split_method(protocol.adapt_method)
        scored, info = adapted_site(predictor, paths, method, batch_size=ADAPT_BATCH_SIZE, on_batch=on_batch)
        block["adaptation"] = {**info, "method": protocol.adapt_method}
    scores = engine.score(scored, paths, batch_size, on_batch, features=bool(protocol.cross_tune) or with_lame)
    if with_lame:
        adjusted = lame_scores(scores)
        changed = np.mean(adjusted.probabilities.argmax(1) != scores.probabilities.argmax(1)) if scores.paths else 0.0
        block["adaptation"]["lame"] = {"knn": LAME_KNN, "block": LAME_BLOCK, "calls_changed": float(changed)}
        scores = adjusted
    if not scores.paths:
        raise none_readable(len(scan.samples), scan.root, scores.skipped)
    labels = labels_of(scan.samples, scores.paths)
    y_true = class_indices(labels, classes)
    groups = [patient_id(p) for p in scores.paths]
    probabilities = scores.probabilities
    rule = scored.sets
    member = None if rule is None else rule.member(probabilities)
    sets_from = None if rule is None else rule.fitted_on
    if protocol.folds:
        fold = calibration.folds(labels, groups, protocol.folds, protocol.split_seed)
        before = classification_metrics(y_true, probabilities, classes)
        block["split"] = {
            "k": protocol.folds,
            "seed": protocol.split_seed,
            "method": "StratifiedGroupKFold by class, grouped by patient",
            "fold_sizes": np.bincount(fold).tolist(),
            "folds": {relative_name(p, scan.root): int(f) for p, f in zip(scores.paths, fold)},
        }
        raw = probabilities
        if protocol.cross_calibrate:
            fitted = calibration.cross_fit(probabilities, y_true, fold)
            block["calibrations"] = [c.to_dict() for c in fitted.calibrations]
            block["before_calibration"] = {"accuracy": before["accuracy"], "macro_f1": before["macro_f1"]}
            others = [calibration.apply(raw[fold != f], c) for f, c in enumerate(fitted.calibrations)]
        else:
            fitted = tuning.cross_fit(probabilities, scores.features, y_true, groups, fold)
            block["tunings"] = [f.to_dict() for f in fitted.fits]
            block["before_tuning"] = {"accuracy": before["accuracy"], "macro_f1": before["macro_f1"]}
            others = [t.out_of_fold for t in fitted.fits]  # a re-fitted head is too sure of its own images
        probabilities = fitted.probabilities
        if rule is not None:
            member, rules = conformal.cross_fit(probabilities, y_true, fold, others, rule.method, rule.level)
            block["set_thresholds"] = [list(r.thresholds) for r in rules]
            sets_from = "cross-fitted: each fold's threshold from the other folds, after their site fit"
    metrics = classification_metrics(y_true, probabilities, classes)
    metrics["ci95"] = bootstrap_ci(y_true, probabilities, classes, groups)
    validity = scores.validity()
    metrics["validity"] = validity_block(validity, y_true, probabilities, classes, scored.validity is not None)
    if member is not None:
        metrics["sets"] = {
            "method": rule.method,
            "fitted_on": sets_from,
            **set_metrics(member, y_true, classes, groups, rule.level),
        }
    metrics["risk_coverage"] = risk_coverage(probabilities, y_true)
    metrics["protocol"] = block
    metrics["skipped"] = [{"file": relative_name(p, scan.root), "reason": r} for p, r in scores.skipped]
    metrics["provenance"] = {**provenance(predictor, scan.root), "engine": engine.info()}
    preds = [
        Prediction(
            file=relative_name(p, scan.root),
            true=label,
            predicted=classes[int(np.argmax(pr))],
            probabilities={c: float(v) for c, v in zip(classes, pr)},
            in_distribution=v.in_distribution,
            ood_score=v.ood_score,
            reasons=v.reasons,
            prediction_set=None if member is None else tuple(conformal.member_names(pr, keep, classes)),
        )
        for p, label, pr, v, keep in zip(
            scores.paths, labels, probabilities, validity, [None] * len(labels) if member is None else member
        )
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
