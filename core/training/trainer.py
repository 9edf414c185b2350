"""Training on cached activations: the seed's two-stage recipe, fast enough for a laptop CPU.

The frozen part of the backbone (batch norm in inference mode) maps each image,
and each augmented view of it, to the same activations in every epoch. So we
run it once per view, cache the activations at the *cut* (the input of the
first layer to be fine-tuned), and train only what lies above:

1. baseline: the head alone, on pooled features computed from the cache by the
   frozen layers above the cut;
2. fine-tuning: the backbone layers from ``fine_tune_from`` on plus the head,
   on the cached activations themselves.

The sub-models share their layers with the full model, so training them trains
the model that is saved. The result is the same kind of model as training end
to end with those layers frozen and a fixed set of augmented copies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from pneumocam.atomic import replace_folder, save_figure, write_json, write_text
from pneumocam.config import ArchConfig, InputSpec, TrainConfig, TrainingData, TrainingRun
from pneumocam.images.data import Sample, Scan, relative_name
from pneumocam.model.artifact import DEFAULT_CLASSES, TRAINING_FILES, is_model_entry, new_meta, save_artifact
from pneumocam.model.network import FEATURES_LAYER, build_model, set_fine_tuning
from pneumocam.model.validity import ValidityStats
from pneumocam.plots import training_curves_figure
from pneumocam.scoring.predictor import Predictor
from pneumocam.training.activations import (
    cache_key,
    cached,
    cut_layer_name,
    extract_activations,
    head_model,
    predict_cached,
    upper_model,
)
from pneumocam.training.augment import augment_params
from pneumocam.training.completion import complete
from pneumocam.training.split import class_weights, split_by_patient
from pneumocam.training.stages import EpochLog, EpochReport, Stage, fit

if TYPE_CHECKING:
    from pneumocam.model.artifact import ModelMeta
    from pneumocam.site.adaptation import LayerStats


@dataclass
class TrainResult:
    """A trained model, its metadata (validation metrics filled in) and each stage's history."""

    model: keras.Model
    meta: ModelMeta
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    source_stats: LayerStats | None = None
    validation_files: list[str] = field(default_factory=list)  # relative to the data folder
    validity_stats: ValidityStats | None = None


def train_model(
    scan: Scan,
    cfg: TrainConfig = TrainConfig(),
    arch: ArchConfig | None = None,
    spec: InputSpec = InputSpec(),
    backbone_weights: str | None = "imagenet",
    cache_dir: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> TrainResult:
    """Split by patient, cache activations at the cut, train the baseline then fine-tune; then complete the model
    (:func:`pneumocam.training.completion.complete`)."""

    arch = arch or ArchConfig()
    classes = list(DEFAULT_CLASSES)
    keras.utils.set_random_seed(cfg.seed)  # the head's initial weights too, whatever ran before in this process
    model = build_model(arch, spec, backbone_weights)
    meta = new_meta(model, arch, spec, classes)
    served = Predictor.in_memory(model, meta)  # the cache, the views, the statistics: all through its pipeline
    cut = cut_layer_name(model, cfg.fine_tune_from)
    train, val = split_by_patient(scan.samples, cfg.val_fraction, cfg.seed)

    def activations(samples: list[Sample], copies: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [s.path for s in samples]
        key = cache_key(paths, model, spec, cut, copies, cfg.seed, cfg.augment)
        acts, skipped = cached(
            cache_dir,
            key,
            lambda: extract_activations(served, paths, cut, copies, 64, cfg.seed, on_batch, cfg.augment),
        )
        bad = {p for p, _ in skipped}
        keep = np.array([p not in bad for p in paths])
        y = np.array([classes.index(s.label) for s in samples])
        return acts, y[keep]

    a_train, y_train = activations(train, cfg.copies)
    a_val, y_val = activations(val, 1)
    weights = class_weights(y_train, len(classes)) if cfg.class_weight == "balanced" else None
    history = _two_stages(model, cut, cfg, (a_train, y_train), (a_val[0], y_val), weights, callbacks, verbose)
    meta.training = TrainingRun(
        procedure="two stages on cached activations: head on a frozen backbone, then fine-tuning",
        config=cfg.to_dict(),
        augment_params=asdict(params) if (params := augment_params(cfg.augment)) else None,
        cached_at=cut,
        class_weights=weights,
        epochs_run={stage: len(h.get("loss", [])) for stage, h in history.items()},
        best_val_loss={stage: min(h["val_loss"]) for stage, h in history.items()},
        backbone_weights="imagenet" if backbone_weights == "imagenet" else Path(str(backbone_weights)).name,
        keras=keras.__version__,
        tensorflow=tf.__version__,
    )
    meta.data = TrainingData(
        source="Kermany et al. 2018, Mendeley Data doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
        train_dir=scan.root.name,
        layout=scan.layout,
        counts=scan.counts(),
        split="validation taken from train, stratified by class, grouped by patient",
        n_train=int(len(y_train)),
        n_val=int(len(y_val)),
    )
    served, stats, validity = complete(served, train, val, classes)
    files = [relative_name(s.path, scan.root) for s in val]
    return TrainResult(served.model, served.meta, history, stats, files, validity)


def _two_stages(
    model: keras.Model,
    cut: str,
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    weights: dict[int, float] | None,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: int | str,
) -> dict[str, dict[str, list[float]]]:
    """The head on pooled features of the cache, then (``fine_tune_from``) the layers above the cut with it.

    ``train``: the cached activations ``(copies, n, ...)`` and one label per image; ``val``: clean activations.
    """
    (a_train, y_train), (x_val, y_val) = train, val
    x_train = a_train.reshape(-1, *a_train.shape[2:])
    y_train_all = np.tile(y_train, len(a_train))
    common = {"weights": weights, "label_smoothing": cfg.label_smoothing, "seed": cfg.seed}
    if cfg.fine_tune_from is None:
        f_train, f_val = x_train.astype(np.float32), x_val.astype(np.float32)
    else:
        pool = upper_model(model, cut, until=FEATURES_LAYER)
        f_train, f_val = predict_cached(pool, x_train), predict_cached(pool, x_val)
    baseline = Stage(cfg.learning_rate, cfg.epochs, cfg.batch_size, cfg.patience, **common)
    history = {"baseline": fit(head_model(model), f_train, y_train_all, f_val, y_val, baseline, callbacks, verbose)}
    if cfg.fine_tune_from is not None:
        top = upper_model(model, cut, name="fine_tuning")
        set_fine_tuning(model, cfg.fine_tune_from)
        stage = Stage(
            cfg.learning_rate / cfg.fine_tune_lr_divisor,
            cfg.fine_tune_epochs,
            cfg.fine_tune_batch_size,
            cfg.fine_tune_patience or cfg.fine_tune_epochs,
            consistency=cfg.consistency,
            **common,
        )
        x_fit, y_fit = (a_train, y_train) if cfg.consistency > 0 else (x_train, y_train_all)
        history["fine-tuning"] = fit(top, x_fit, y_fit, x_val, y_val, stage, callbacks, verbose)
        set_fine_tuning(model, None)
    return history


def train_to_folder(
    scan: Scan,
    out: str | Path,
    cfg: TrainConfig = TrainConfig(),
    arch: ArchConfig = ArchConfig(),
    spec: InputSpec = InputSpec(),
    backbone_weights: str | None = "imagenet",
    cache_dir: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    overwrite: bool = False,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    recipe: dict[str, Any] | None = None,
) -> TrainResult:
    """Train and write the whole model folder: model, metadata, statistics, history, curves and log.

    ``on_epoch(step, metrics)`` follows the training live (e.g. into MLflow), epoch by epoch;
    ``recipe`` (:meth:`pneumocam.training.recipe.Recipe.record`) goes into ``model.json`` as ``training.recipe``.

    The folder is built beside ``out`` and swapped in at the end, so a failed or
    interrupted run leaves ``out`` as it was; the log handler is removed either way.
    """
    import logging
    import time

    log = logging.getLogger("pneumocam")
    log.setLevel(logging.INFO)
    with replace_folder(out, is_model_entry, overwrite) as staging:
        history_file, curves_file, log_file, validation_file = TRAINING_FILES
        handler = logging.FileHandler(staging / log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        try:
            log.info("train %s -> %s", scan.root, out)
            settings = {"train": cfg.to_dict(), "arch": arch.to_dict(), "backbone": backbone_weights}
            log.info("config %s", json.dumps(settings))
            started = time.perf_counter()
            callbacks = [EpochLog(log), *([EpochReport(on_epoch)] if on_epoch else [])]
            result = train_model(scan, cfg, arch, spec, backbone_weights, cache_dir, on_batch, callbacks)
            minutes = (time.perf_counter() - started) / 60
            result.meta.training = replace(result.meta.training, wall_minutes=round(minutes, 1), recipe=recipe or {})
            metrics = result.meta.metrics
            log.info("done in %.1f min", minutes)
            log.info(
                "validation %s", json.dumps({k: v for k, v in metrics["validation"].items() if k != "calibration_bins"})
            )
            log.info("validation under perturbation %s", json.dumps(metrics["validation_shift"]))
            save_artifact(
                result.model,
                result.meta,
                staging,
                source_stats=result.source_stats,
                validity_stats=result.validity_stats,
            )
            write_json(staging / history_file, result.history)
            save_figure(training_curves_figure(result.history), staging / curves_file)
            write_text(staging / validation_file, "".join(f"{f}\n" for f in result.validation_files))
        finally:
            log.removeHandler(handler)
            handler.close()
    return result
