"""What a served answer's confidence means: a temperature and a prediction-set rule, both fitted on validation.

Training (and ``python -m cli fit-conformal`` for a model trained before) completes a model folder with:

* **a temperature**, fitted on the validation split's served probabilities and kept only if it lowers the
  validation split's calibration error when cross-fitted (two patient-grouped halves, each scored with the other's
  temperature), so the gain is not an in-sample artefact. It is folded into the logits layer, so every entry point,
  Grad-CAM included, serves it; ``model.json`` ``temperature`` records the value and the figures;
* **a prediction-set rule** (:mod:`pneumocam.model.conformal`): the score chosen by the rule fixed there, its
  threshold fitted on the validation split's served probabilities (after the temperature), in ``model.json``
  ``conformal``. It holds for images like validation; a site refits it (``calibrate``, ``tune``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumocam.atomic import write_json
from pneumocam.config import Temperature
from pneumocam.errors import DataError
from pneumocam.images.data import Sample, Scan, class_indices, labels_of, patient_id
from pneumocam.model import conformal
from pneumocam.model.artifact import META_FILE, MODEL_FILE, file_sha256
from pneumocam.options import DEFAULT_SPLIT_SEED, SET_LEVEL
from pneumocam.scoring.metrics import classification_metrics, reliability
from pneumocam.scoring.predictor import Predictor
from pneumocam.site import calibration
from pneumocam.training.split import recorded_split, split_by_patient

VALIDATION = "the validation split from train"


def served_validation(
    predictor: Predictor, val: Sequence[Sample], on_batch: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The validation split's served probabilities, class indices and patients."""
    scores = predictor.score([s.path for s in val], on_batch=on_batch)
    if not scores.paths:
        raise DataError("no validation image could be read")
    y = class_indices(labels_of(list(val), scores.paths), predictor.classes)
    return scores.probabilities, y, [patient_id(p) for p in scores.paths]


def temperature_choice(probabilities: np.ndarray, y: np.ndarray, groups: Sequence[str]) -> Temperature:
    """The temperature fitted on all of validation, and whether its cross-fitted calibration error is lower."""
    fold = calibration.folds([str(v) for v in y], groups, 2, DEFAULT_SPLIT_SEED)
    crossed = np.zeros_like(probabilities, dtype=np.float32)
    for f in range(2):
        held = fold == f
        t = calibration.fit_temperature(probabilities[~held], y[~held])
        crossed[held] = calibration.apply(
            probabilities[held], calibration.Calibration(t, (0.0,) * probabilities.shape[1])
        )
    value = calibration.fit_temperature(probabilities, y)
    before, after = reliability(y, probabilities)["ece"], reliability(y, crossed)["ece"]
    return Temperature(
        value=value,
        used=bool(after < before),
        fitted_on=f"{VALIDATION} ({len(y)} images), served probabilities",
        ece_before=before,
        ece_after_cross_fitted=after,
        rule="kept when the validation ECE, each patient-grouped half scored with the other half's temperature, "
        "is below the ECE without it",
    )


def folded(predictor: Predictor, temperature: float) -> Any:
    """A copy of the model with ``logits / temperature`` (what every entry point then serves)."""
    from pneumocam.site.adaptation import clone

    model = clone(predictor.model)
    layer = model.get_layer(predictor.meta.logits_layer)
    k = predictor.model.output_shape[-1]
    cal = calibration.Calibration(temperature, (0.0,) * k)
    layer.set_weights(list(calibration.fold_into_logits(*[np.array(w) for w in layer.get_weights()], cal)))
    return model


def fit_confidence(
    predictor: Predictor, val: Sequence[Sample], on_batch: Callable[[int], None] | None = None
) -> tuple[Predictor, dict[str, Any]]:
    """Fit the temperature (folded in when it helps) and the set rule on validation; the served predictor after.

    Returns the predictor to save (a new one when the temperature was folded in, its ``meta`` holding
    ``temperature``, ``conformal`` and the validation figures as served) and the choice's record.
    """
    p, y, groups = served_validation(predictor, val, on_batch)
    temperature = temperature_choice(p, y, groups)
    served = predictor
    if temperature.used:
        served = predictor.derived(model=folded(predictor, temperature.value))
        p, y, groups = served_validation(served, val, on_batch)
        served.meta.metrics["validation"] = classification_metrics(y, p, served.classes)
    served.meta.temperature = temperature
    rule, choice = conformal.choose(p, y, groups, SET_LEVEL, f"{VALIDATION} ({len(y)} images)")
    keep = rule.member(p)
    covered = keep[np.arange(len(y)), y]
    figures = {"coverage": float(covered.mean()), "mean_size": float(keep.sum(1).mean())}
    served.meta.conformal = conformal.SetRecord(rule, choice, figures)
    return served, {"temperature": temperature, "sets": served.meta.conformal}


def add_confidence(predictor: Predictor, scan: Scan, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Complete a model folder trained before: the temperature folded into ``model.keras`` and the set rule."""

    if predictor.meta.temperature and predictor.meta.temperature.used:
        raise DataError(f"{predictor.source} already serves a validation temperature; fit the rule on the original")
    _, val = split_by_patient(scan.samples, *recorded_split(predictor.meta.training))
    served, record = fit_confidence(predictor, val, on_batch)
    directory = Path(predictor.directory)
    if served is not predictor:
        tmp = directory / (MODEL_FILE + ".tmp.keras")
        served.model.save(tmp)
        tmp.replace(directory / MODEL_FILE)
        served.meta.weights_sha256 = file_sha256(directory / MODEL_FILE)
    write_json(directory / META_FILE, served.meta.to_dict())
    return record


def format_record(record: dict[str, Any]) -> str:
    """What ``fit-conformal`` prints: the temperature and its effect, the scores' simulated figures, the rule."""
    t, sets = record["temperature"], record["sets"]
    verdict = "folded into the logits" if t.used else "not used"
    lines = [
        f"temperature {t.value:.3f} ({verdict}): validation ECE {t.ece_before:.3f} -> "
        f"{t.ece_after_cross_fitted:.3f} cross-fitted"
    ]
    for method, row in sets.choice["table"].items():
        if row["sites"]:
            lines.append(
                f"  {method:<10} coverage in 90 % of simulated sites >= {row['p10_coverage']:.1%}, "
                f"mean size {row['mean_size']:.2f}{'' if row['passes'] else ' (fails the rule)'}"
            )
    rule = sets.rule
    lines.append(
        f"prediction sets: {rule.method} at {rule.level:.0%}, thresholds {rule.threshold_text()}; validation "
        f"coverage {sets.validation['coverage']:.1%}, mean size {sets.validation['mean_size']:.2f}"
    )
    return "\n".join(lines)
