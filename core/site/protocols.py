"""How a labelled folder is scored at a site: as trained, adapted to it (unlabelled), and/or a cross-fitted fit.

A :class:`Protocol` does its work in two steps that every consumer shares: :meth:`Protocol.score` (the forward
passes, adapted first under ``adapt``) and :meth:`Protocol.fit` (the labelled, cross-fitted calibration or tuning
and the prediction sets refitted after it). ``evaluate`` runs both; the tests run the first once per session and the
second per protocol, so what they check is what the command computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocam.errors import InputError
from pneumocam.images.data import class_indices
from pneumocam.model import conformal
from pneumocam.options import (
    ADAPT_BATCH_SIZE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EVALUATE_ADAPT_METHOD,
    DEFAULT_SPLIT_SEED,
    LAME,
    LAME_BLOCK,
    LAME_KNN,
)
from pneumocam.scoring.engine import LocalEngine
from pneumocam.scoring.metrics import classification_metrics
from pneumocam.site import calibration, tuning

if TYPE_CHECKING:
    from pneumocam.scoring.forward import Scores
    from pneumocam.scoring.predictor import Predictor
    from pneumocam.scoring.ray_engine import RayEngine

TRAIN_ONLY = "train-only"
ADAPTED = "site-adapted"
CALIBRATED = "site-calibrated"
TUNED = "site-tuned"
SITE_CURVE = "site-curve"

ADAPT_ENGINE_HINT = (
    "--adapt runs on the local engine; for --engine ray, adapt first (python -m cli adapt DIR --out MODEL) "
    "and evaluate that model folder"
)
TUNE_ENGINE_HINT = (
    "--cross-tune runs on the local engine; for --engine ray, tune first (python -m cli tune DIR --out MODEL) "
    "and evaluate that model folder on other images"
)
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


def metrics_key(split: str, protocol: str = TRAIN_ONLY) -> str:
    """Where ``model.json`` keeps a split's figures: ``test`` for the model as trained, ``test:PROTOCOL`` else."""
    return split if protocol == TRAIN_ONLY else f"{split}:{protocol}"


@dataclass(frozen=True)
class Scored:
    """A folder after a protocol's forward passes: the predictor that scored it (adapted under ``adapt``), its
    scores, and what adaptation did (None without it)."""

    predictor: Predictor
    scores: Scores
    adaptation: dict[str, Any] | None = None


@dataclass(frozen=True)
class SiteFit:
    """A folder's probabilities after the labelled step, each image's prediction-set membership (None without a
    set rule), where the sets' thresholds came from, and the protocol's record for ``metrics.json``."""

    probabilities: np.ndarray
    member: np.ndarray | None
    sets_from: str | None
    record: dict[str, Any]


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

    def check_engine(self, engine: str) -> None:
        """Adaptation and tuning need the model in this process: refuse another engine before any scoring."""
        if engine != LocalEngine.name and (self.adapt or self.cross_tune):
            raise InputError(ADAPT_ENGINE_HINT if self.adapt else TUNE_ENGINE_HINT)

    def score(
        self,
        predictor: Predictor,
        paths: Sequence[Path],
        engine: LocalEngine | RayEngine | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_batch: Callable[[int], None] | None = None,
        features: bool = False,
    ) -> Scored:
        """The forward passes: adapted to ``paths`` first under ``adapt`` (then LAME over them), pooled features
        kept where the protocol needs them or ``features`` asks."""
        engine = engine or LocalEngine()
        self.check_engine(engine.name)
        scorer, adaptation = predictor, None
        if self.adapt:
            from pneumocam.site.adaptation import adapted_site, split_method  # TensorFlow: see passes()

            method, _ = split_method(self.adapt_method)
            scorer, info = adapted_site(predictor, paths, method, batch_size=ADAPT_BATCH_SIZE, on_batch=on_batch)
            adaptation = {**info, "method": self.adapt_method}
        keep = features or bool(self.cross_tune) or self.with_lame
        scores = engine.score(scorer, paths, batch_size, on_batch, features=keep)
        if self.with_lame:
            from pneumocam.site.lame import lame_scores

            adjusted = lame_scores(scores)
            changed = adjusted.probabilities.argmax(1) != scores.probabilities.argmax(1)
            share = float(np.mean(changed)) if len(changed) else 0.0
            adaptation["lame"] = {"knn": LAME_KNN, "block": LAME_BLOCK, "calls_changed": share}
            scores = adjusted
        return Scored(scorer, scores, adaptation)

    def fit(self, scored: Scored, labels: Sequence[str], groups: Sequence[str], names: Sequence[str]) -> SiteFit:
        """The labelled step on scored images (their ``labels``, patient ``groups``, relative ``names``): cross-
        fitted calibration or tuning, and each fold's set threshold refitted on the other folds after it."""
        if (scored.adaptation is not None) != self.adapt:
            raise ValueError(f"{self.name} needs images scored {'with' if self.adapt else 'without'} adaptation")
        record: dict[str, Any] = {"name": self.name, "description": self.describe()}
        if scored.adaptation is not None:
            record["adaptation"] = scored.adaptation
        rule, probabilities = scored.predictor.sets, scored.scores.probabilities
        member = None if rule is None else rule.member(probabilities)
        sets_from = None if rule is None else rule.fitted_on
        if not self.folds:
            return SiteFit(probabilities, member, sets_from, record)
        classes = scored.predictor.meta.classes
        y = class_indices(labels, classes)
        fold = calibration.folds(labels, groups, self.folds, self.split_seed)
        before = classification_metrics(y, probabilities, classes)
        record["split"] = {
            "k": self.folds,
            "seed": self.split_seed,
            "method": "StratifiedGroupKFold by class, grouped by patient",
            "fold_sizes": np.bincount(fold).tolist(),
            "folds": {name: int(f) for name, f in zip(names, fold)},
        }
        headline = {"accuracy": before["accuracy"], "macro_f1": before["macro_f1"]}
        if self.cross_calibrate:
            fitted = calibration.cross_fit(probabilities, y, fold)
            record["calibrations"] = [c.to_dict() for c in fitted.calibrations]
            record["before_calibration"] = headline
            others = [calibration.apply(probabilities[fold != f], c) for f, c in enumerate(fitted.calibrations)]
        else:
            fitted = tuning.cross_fit(probabilities, scored.scores.features, y, groups, fold)
            record["tunings"] = [f.to_dict() for f in fitted.fits]
            record["before_tuning"] = headline
            others = [t.out_of_fold for t in fitted.fits]  # a re-fitted head is too sure of its own images
        if rule is not None:
            member, rules = conformal.cross_fit(fitted.probabilities, y, fold, others, rule.method, rule.level)
            record["set_thresholds"] = [list(r.thresholds) for r in rules]
            sets_from = "cross-fitted: each fold's threshold from the other folds, after their site fit"
        return SiteFit(fitted.probabilities, member, sets_from, record)
