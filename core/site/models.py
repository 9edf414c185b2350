"""A model for a new site: adapted to its unlabelled images, or calibrated on a labelled sample.

Each writes a new model folder (whole or not at all) whose ``model.json``
says what was done: the kind, the folder, how many images, when, the
parameters, and the figures before and after where labels exist. Every entry
point then serves it like any other model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumocam.atomic import replace_folder
from pneumocam.config import FEATURES_LAYER, SiteFit
from pneumocam.errors import DataError, none_readable
from pneumocam.images.data import Scan, check_labels, class_indices, labels_of, list_images, patient_id
from pneumocam.model import conformal
from pneumocam.model.artifact import ModelMeta, is_model_entry, save_artifact
from pneumocam.options import ADAPT_BATCH_SIZE, DEFAULT_ADAPT_METHOD, DEFAULT_BATCH_SIZE, SET_LEVEL
from pneumocam.scoring.forward import Scores
from pneumocam.scoring.metrics import classification_metrics
from pneumocam.scoring.predictor import Predictor
from pneumocam.site import calibration, tuning
from pneumocam.site.adaptation import adapted_site, clone


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def site_images(folder: str | Path) -> list[Path]:
    """Every image under ``folder`` (labels, if any, are not read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"no images found in {folder}")
    return paths


def _derived_meta(predictor: Predictor, suffix: str) -> ModelMeta:
    """The base model's metadata for a derived model: its test figures no longer apply."""
    meta = copy.deepcopy(predictor.meta)
    meta.name = f"{predictor.meta.name}-{suffix}"
    meta.metrics = {k: v for k, v in meta.metrics.items() if k != "test"}
    base = {"name": predictor.meta.name, "sha256": predictor.meta.weights_sha256}
    meta.training = replace(meta.training, base_model=base)
    return meta


def adapt_to_site(
    predictor: Predictor,
    folder: str | Path,
    out: str | Path,
    method: str = DEFAULT_ADAPT_METHOD,
    batch_size: int = ADAPT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> ModelMeta:
    """Adapt to the images under ``folder`` (no label read) and write the adapted model to ``out``."""
    paths = site_images(folder)
    adapted, info = adapted_site(predictor, paths, method, batch_size, on_batch)
    meta = _derived_meta(predictor, "adapted")
    site = Path(folder).resolve().name
    meta.adaptation = replace(meta.adaptation, applied={**info, "folder": site, "date": _now()})
    if adapted.validity_stats is not None:
        meta.validity = replace(meta.validity, rematched={"folder": site, "n_images": info["n_images"]})
    return _write_site_model(adapted.model, meta, out, overwrite, adapted.validity_stats)


CALIBRATE, TUNE = "calibrate", "tune"


def fit_to_site(
    kind: str,
    predictor: Predictor,
    scan: Scan,
    out: str | Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> ModelMeta:
    """Calibrate (a temperature and per-class biases) or tune (the head re-fitted) on a labelled folder.

    The labelled folder is scored once; the fitted model goes to ``out``, and ``model.json`` records the fit under
    ``calibration`` or ``tuning``.
    """
    classes = predictor.meta.classes
    check_labels(scan, classes)
    fitters = {CALIBRATE: _calibrated, TUNE: _tuned}
    if kind not in fitters:
        raise ValueError(f"unknown site fit {kind!r}")
    if kind == TUNE and predictor.meta.tuning:
        raise DataError(f"{predictor.source} is already site-tuned; tune the original (or adapted) model instead")
    counts = scan.counts()
    if kind == CALIBRATE and (missing := [c for c in classes if not counts.get(c)]):
        raise DataError(f"{scan.root} has no {missing[0]} images; calibration needs every class")
    if kind == TUNE:
        tuning.check_counts([counts.get(c, 0) for c in classes], classes, str(scan.root))
    scores, y = _score_labelled(predictor, scan, batch_size, on_batch, features=kind == TUNE)
    if kind == TUNE:
        tuning.check_counts(np.bincount(y, minlength=len(classes)), classes, f"{scan.root} (readable images)")
    model, text, fitted, after, counts, unseen = fitters[kind](predictor, scores, y, counts)
    meta = _derived_meta(predictor, {CALIBRATE: "calibrated", TUNE: "tuned"}[kind])
    record = _site_record(text, fitted, scan, len(y), counts, _in_sample(y, scores.probabilities, after, classes))
    if kind == CALIBRATE:
        meta.calibration = replace(record, previous=predictor.meta.calibration)
    else:
        meta.tuning = record
    meta.conformal = _site_sets(predictor, unseen, y, f"{scan.root.resolve().name} ({len(y)} labelled images)")
    return _write_site_model(model, meta, out, overwrite, predictor.validity_stats)


def _site_sets(predictor: Predictor, probabilities: np.ndarray, y: np.ndarray, where: str) -> conformal.SetRecord:
    """The set rule refitted on the site's labelled sample, after the fit: the score and level stay the model's.

    Here the guarantee holds for the site's images (the threshold of a rule fitted on train's validation does
    not). ``probabilities``: the sample's after the fit, from fits that did not see each image where the fit has
    many parameters (tuning's inner folds); calibration's own (four parameters).
    """
    rule = predictor.sets
    method, level = (rule.method, rule.level) if rule else (conformal.METHODS[0], SET_LEVEL)
    fitted = conformal.fit(probabilities, y, method, level, f"the labelled site sample {where}, after the fit")
    previous = predictor.meta.conformal
    return previous.replaced_by(fitted) if previous else conformal.SetRecord(fitted)


def _calibrated(
    predictor: Predictor, scores: Scores, y: np.ndarray, counts: dict[str, int]
) -> tuple[Any, str, dict[str, Any], np.ndarray, dict[str, int], np.ndarray]:
    """The calibrated model, what it is, its parameters, the sample's probabilities after, the counts, and the
    probabilities the set threshold is fitted on (the same).
    """
    cal = calibration.fit(scores.probabilities, y, len(predictor.meta.classes))
    model = clone(predictor.model)
    logits = model.get_layer(predictor.meta.logits_layer)
    logits.set_weights(list(calibration.fold_into_logits(*[np.array(w) for w in logits.get_weights()], cal)))
    text = "labelled site calibration (temperature and per-class logit biases)"
    after = calibration.apply(scores.probabilities, cal)
    return model, text, cal.to_dict(), after, counts, after


def _tuned(
    predictor: Predictor, scores: Scores, y: np.ndarray, counts: dict[str, int]
) -> tuple[Any, str, dict[str, Any], np.ndarray, dict[str, int], np.ndarray]:
    """The tuned model (:mod:`.tuning`), what it is, the fit, the sample's probabilities after, the counts, and
    the inner folds' probabilities (what the set threshold is fitted on).
    """
    classes = predictor.meta.classes
    groups = [patient_id(p) for p in scores.paths]
    fitted = tuning.fit(scores.probabilities, scores.features, y, groups, len(classes))
    model = tuning.tuned_model(clone(predictor.model), predictor.meta.logits_layer, FEATURES_LAYER, fitted.tuning)
    text = "labelled site tuning (the head re-fitted on the pooled features, the trained logits as offset)"
    after = fitted.tuning.apply(scores.probabilities, scores.features)
    return model, text, fitted.to_dict(), after, dict(zip(classes, fitted.counts)), fitted.out_of_fold


def _site_record(
    kind: str, fitted: dict[str, Any], scan: Scan, n_images: int, counts: dict[str, int], in_sample: dict[str, Any]
) -> SiteFit:
    """What model.json says about a fit on a labelled site folder: its parameters, the folder, the counts, when.

    A fit that names its own kind (tuning: untouched, calibrate or tune) is recorded as that kind.
    """
    params = {k: v for k, v in fitted.items() if k != "kind"}
    folder = scan.root.resolve().name
    return SiteFit(fitted.get("kind", kind), params, folder, n_images, counts, _now(), in_sample)


def _write_site_model(model: Any, meta: ModelMeta, out: str | Path, overwrite: bool, validity_stats: Any) -> ModelMeta:
    """A site model's folder, written whole (built beside ``out`` and swapped in)."""
    with replace_folder(out, is_model_entry, overwrite) as staging:
        save_artifact(model, meta, staging, validity_stats=validity_stats)
    return meta


def _score_labelled(
    predictor: Predictor,
    scan: Scan,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
    features: bool = False,
) -> tuple[Scores, np.ndarray]:
    """Score a labelled folder once; the readable files' scores and their class indices."""
    scores = predictor.score([s.path for s in scan.samples], batch_size, on_batch, features)
    if not scores.paths:
        raise none_readable(len(scan.samples), scan.root, scores.skipped)
    return scores, class_indices(labels_of(scan.samples, scores.paths), predictor.meta.classes)


def _in_sample(y: np.ndarray, before: np.ndarray, after: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The sample's own figures before and after a fit (in-sample: optimistic by construction)."""
    return {k: _summary(classification_metrics(y, p, classes)) for k, p in (("before", before), ("after", after))}


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "ece": m["ece"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
    }
