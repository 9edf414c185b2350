"""The validation split from train (stratified by class, grouped by patient) and the class weights of the loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pneumocam.config import TrainConfig, TrainingRun
from pneumocam.errors import InputError
from pneumocam.images.data import Sample, patient_id


def split_by_patient(
    samples: Sequence[Sample], val_fraction: float = TrainConfig.val_fraction, seed: int = TrainConfig.seed
) -> tuple[list[Sample], list[Sample]]:
    """Validation split from train: stratified by class, no patient on both sides."""
    if not 0 < val_fraction < 0.5:
        raise InputError("val_fraction must be in (0, 0.5)")
    n_splits = max(2, round(1 / val_fraction))
    labels = [s.label for s in samples]
    groups = [patient_id(s.path) for s in samples]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def recorded_split(training: TrainingRun) -> tuple[float, int]:
    """The validation share and seed a model was trained with (``model.json`` ``training``), for its split again."""
    cfg, defaults = training.config, TrainConfig()
    return cfg.get("val_fraction", defaults.val_fraction), cfg.get("seed", defaults.seed)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * count_c): each class contributes equally to the loss."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return {k: float(len(y) / (n_classes * c)) if c else 0.0 for k, c in enumerate(counts)}
