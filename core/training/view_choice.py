"""Which test-time views a model scores with: every candidate set judged on the validation split by one rule.

Training runs this on its validation split and records the winner in
``model.json`` (``predict``); ``python -m cli choose-views`` runs it for a model
trained before. Each validation image is scored once per view under each
stress perturbation (:mod:`pneumocam.reports.stress`); a set's call is the mean of its
views' probabilities, so the 8 sets cost one pass of 4 views.

The rule (:func:`pneumocam.reports.stress.stability_rank`), fixed before any set was
measured: the sets whose every re-encoding, resampling and "original"
perturbation changes at most 3 % of the calls, ranked by the mean of clean
accuracy and the mean accuracy under the perturbations; if none is stable, the
fewest calls changed. Ties go to fewer views.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumocam.config import PredictDefaults
from pneumocam.errors import DataError
from pneumocam.images.data import Sample, class_indices, labels_of
from pneumocam.options import NO_VIEWS, VIEW_CANDIDATES
from pneumocam.reports.stress import (
    CLEAN,
    ENCODING,
    MAX_CHANGED,
    selection_score,
    stability_rank,
    stress_metrics,
    stress_probabilities,
)
from pneumocam.scoring.metrics import classification_metrics
from pneumocam.scoring.predictor import Predictor

RULE = (
    f"the sets whose every re-encoding, resampling and 'original' perturbation changes at most {MAX_CHANGED:.0%} of "
    "the validation calls, ranked by the mean of clean accuracy and the mean accuracy under the stress "
    "perturbations (none stable: the fewest calls changed); ties to fewer views"
)


def candidate_sets(candidates: Sequence[str] = VIEW_CANDIDATES) -> list[tuple[str, ...]]:
    """``identity`` alone, and with every subset of ``candidates``."""
    return [(*NO_VIEWS, *c) for k in range(len(candidates) + 1) for c in itertools.combinations(candidates, k)]


@dataclass
class ViewChoice:
    """The chosen views, their validation metrics and stress, the image alone's, and every set's row."""

    predict: PredictDefaults
    validation: dict[str, Any]
    shift: dict[str, Any]
    plain_validation: dict[str, Any]
    plain_shift: dict[str, Any]

    def record_into(self, meta: Any) -> None:
        """Put the choice into a model's metadata: what is served, and the image alone beside it."""
        meta.predict = self.predict
        meta.metrics["validation"] = self.validation
        meta.metrics["validation_shift"] = self.shift
        if len(self.predict.views) > 1:
            meta.metrics["validation:no-views"] = self.plain_validation
            meta.metrics["validation_shift:no-views"] = self.plain_shift
        else:
            meta.metrics.pop("validation:no-views", None)
            meta.metrics.pop("validation_shift:no-views", None)


def _row(views: tuple[str, ...], shift: dict[str, Any]) -> dict[str, Any]:
    rows = shift["perturbations"]
    return {
        "views": list(views),
        "stable": stability_rank(shift)[0],
        "score": selection_score(shift),
        "clean_accuracy": rows[CLEAN]["accuracy"],
        "mean_accuracy": shift["mean_accuracy"],
        "max_changed": shift["max_changed_encoding"],
        "changed": {k: rows[k]["changed"] for k in ENCODING if k in rows},
    }


def judge(
    per_view: dict[str, np.ndarray], y: np.ndarray, classes: Sequence[str], union: Sequence[str]
) -> tuple[tuple[str, ...], dict[tuple[str, ...], dict[str, Any]]]:
    """Every candidate set's validation stress from per-view probabilities ``{name: (views, n, classes)}``; the best."""
    shifts = {}
    for views in candidate_sets(union[1:]):
        idx = [list(union).index(v) for v in views]
        shifts[views] = stress_metrics(y, {name: p[idx].mean(axis=0) for name, p in per_view.items()}, classes)
    best = max(shifts, key=lambda v: (*stability_rank(shifts[v]), -len(v)))
    return best, shifts


def choose_views(
    predictor: Predictor,
    val: Sequence[Sample],
    classes: Sequence[str],
    candidates: Sequence[str] = VIEW_CANDIDATES,
    on_batch: Callable[[int], None] | None = None,
) -> ViewChoice:
    """Score the validation split under every perturbation with each view, and choose the set by the rule."""

    union = (*NO_VIEWS, *candidates)
    every_view = Predictor(predictor.loaded, union)
    kept, per_view, _ = stress_probabilities(every_view, [s.path for s in val], on_batch=on_batch, per_view=True)
    if not kept:
        raise DataError("no validation image could be read to choose the test-time views")
    y = class_indices(labels_of(list(val), [Path(p) for p in kept]), list(classes))
    best, shifts = judge(per_view, y, classes, union)

    def clean(views: tuple[str, ...]) -> dict[str, Any]:
        idx = [union.index(v) for v in views]
        return classification_metrics(y, per_view[CLEAN][idx].mean(axis=0), classes)

    choice = {
        "split": "validation",
        "n_images": len(kept),
        "candidates": list(candidates),
        "rule": RULE,
        "table": [_row(v, shifts[v]) for v in shifts],
    }
    return ViewChoice(
        predict=PredictDefaults(views=best, choice=choice),
        validation=clean(best),
        shift=shifts[best],
        plain_validation=clean(NO_VIEWS),
        plain_shift=shifts[NO_VIEWS],
    )


def format_choice(choice: ViewChoice) -> str:
    """The candidate sets for the terminal, best first by the rule."""
    rows = sorted(
        choice.predict.choice["table"],
        key=lambda r: (r["stable"], r["score"] if r["stable"] else -r["max_changed"], -len(r["views"])),
        reverse=True,
    )
    lines = [f"{'views':<40}{'stable':>7}{'score':>8}{'clean':>8}{'mean':>8}{'changed':>9}  worst"]
    for r in rows:
        worst = max(r["changed"], key=r["changed"].get)
        lines.append(
            f"{' + '.join(r['views']):<40}{'yes' if r['stable'] else 'no':>7}{r['score']:>8.1%}"
            f"{r['clean_accuracy']:>8.1%}{r['mean_accuracy']:>8.1%}{r['max_changed']:>9.1%}  {worst}"
        )
    lines.append(f"chosen: {', '.join(choice.predict.views)}")
    return "\n".join(lines)
