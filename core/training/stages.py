"""One training stage: Adam on cross-entropy (or the copies' consistency term), early stopping on validation loss,
and the callbacks that log and report each epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from pneumocam.errors import DataError
from pneumocam.options import CACHE_PREDICT_BATCH
from pneumocam.training.consistency import CopyBatches, PerCopy, clean_accuracy, consistency_loss


def _metrics() -> list:
    return [
        "accuracy",
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.AUC(name="auc"),
    ]


@dataclass(frozen=True)
class Stage:
    """One stage's settings: the step size, how long and in what batches, and what the loss weighs.

    ``consistency`` > 0 adds that weight of the Jensen-Shannon term among each image's copies
    (:mod:`pneumocam.training.consistency`).
    """

    learning_rate: float
    epochs: int
    batch_size: int
    patience: int
    weights: dict[int, float] | None = None
    label_smoothing: float = 0.0
    seed: int = 0
    consistency: float = 0.0


def fit(
    net: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    stage: Stage,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> dict[str, list[float]]:
    """Adam + cross-entropy; the epoch with the best validation loss is kept (early stopping).

    With ``stage.consistency`` > 0, ``x`` is the cache itself, ``(copies, n, ...)``, and ``y`` one label per image.
    The validation loss stays the clean images' cross-entropy either way.
    """
    if len(x) == 0 or len(x_val) == 0:
        raise DataError("training and validation sets must both be non-empty")
    n_classes = net.output_shape[-1]
    keras.utils.set_random_seed(stage.seed)
    val_y = keras.utils.to_categorical(y_val, n_classes)
    if stage.consistency > 0:
        trained, metrics = PerCopy(net), [clean_accuracy]
        loss = consistency_loss(stage.consistency, stage.label_smoothing, n_classes)
        data = {
            "x": CopyBatches(x, y, n_classes, stage.batch_size, stage.weights, stage.seed),
            "validation_data": (x_val[:, None], val_y),
            "validation_batch_size": CACHE_PREDICT_BATCH,
        }
    else:
        trained, metrics = net, _metrics()
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=stage.label_smoothing)
        data = {
            "x": x,
            "y": keras.utils.to_categorical(y, n_classes),
            "validation_data": (x_val, val_y),
            "batch_size": stage.batch_size,
            "class_weight": stage.weights,
            "shuffle": True,
        }
    trained.compile(optimizer=keras.optimizers.Adam(stage.learning_rate), loss=loss, metrics=metrics)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=stage.patience, restore_best_weights=True)
    history = trained.fit(**data, epochs=stage.epochs, verbose=verbose, callbacks=[stop, *callbacks])
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


class EpochLog(keras.callbacks.Callback):
    """Writes one line per epoch (all metrics) to a logger: the training log file."""

    def __init__(self, logger: Any) -> None:
        super().__init__()
        self.logger = logger

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.logger.info("stage %s: %d trainable weights", self.model.name, len(self.model.trainable_weights))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        items = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if isinstance(v, float | int))
        self.logger.info("epoch %d %s", epoch + 1, items)


class EpochReport(keras.callbacks.Callback):
    """Hands each epoch's metrics to ``report(step, metrics)``, steps running on across both stages."""

    def __init__(self, report: Callable[[int, dict[str, float]], None]) -> None:
        super().__init__()
        self.report = report
        self.step = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.report(self.step, {k: float(v) for k, v in (logs or {}).items() if isinstance(v, float | int)})
        self.step += 1
