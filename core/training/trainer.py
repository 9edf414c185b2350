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
to end with those layers frozen and a fixed set of augmented views.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import StratifiedGroupKFold

from pneumocam.atomic import replace_folder, save_figure, write_json, write_text
from pneumocam.config import ArchConfig, InputSpec, TrainConfig
from pneumocam.errors import DataError, InputError
from pneumocam.images.data import Sample, Scan, class_indices, labels_of, list_images, patient_id, relative_name
from pneumocam.model import validity
from pneumocam.model.artifact import (
    DEFAULT_CLASSES,
    META_FILE,
    SOURCE_STATS_FILE,
    TRAINING_FILES,
    file_sha256,
    is_model_entry,
    new_meta,
    save_artifact,
    store_validity,
)
from pneumocam.model.network import FEATURES_LAYER, backbone_layers, build_model, set_fine_tuning, summary_width
from pneumocam.model.validity import ValidityStats
from pneumocam.options import AUGMENTATIONS, CACHE_PREDICT_BATCH, VALIDITY_DISC_LAYER, VALIDITY_LAYER
from pneumocam.plots import training_curves_figure
from pneumocam.scoring.predictor import Predictor
from pneumocam.site.adaptation import layer_statistics, measured_layers
from pneumocam.training.augment import acquisition_augmenter, augment_params
from pneumocam.training.confidence import fit_confidence
from pneumocam.training.consistency import PerView, ViewBatches, consistency_loss, view_accuracy
from pneumocam.training.view_choice import choose_views

if TYPE_CHECKING:
    from pneumocam.model.artifact import ModelMeta
    from pneumocam.site.adaptation import LayerStats


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


def recorded_split(training: dict[str, Any]) -> tuple[float, int]:
    """The validation share and seed a model was trained with (``model.json`` ``training``), for its split again."""
    cfg, defaults = training.get("config", {}), TrainConfig()
    return cfg.get("val_fraction", defaults.val_fraction), cfg.get("seed", defaults.seed)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * count_c): each class contributes equally to the loss."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return {k: float(len(y) / (n_classes * c)) if c else 0.0 for k, c in enumerate(counts)}


def cut_layer_name(model: keras.Model, fine_tune_from: int | None) -> str:
    """The last frozen layer, whose output is cached: just below ``fine_tune_from``, or the pooling."""
    if fine_tune_from is None:
        return FEATURES_LAYER
    layers = backbone_layers(model)
    if not 1 <= fine_tune_from < len(layers):
        raise InputError(f"fine_tune_from must be between 1 and {len(layers) - 1}")
    return layers[fine_tune_from - 1].name


def upper_model(model: keras.Model, cut: str, until: str | None = None, name: str = "upper") -> keras.Model:
    """The part of ``model`` above layer ``cut`` (to ``until``'s output, default the end), layers shared.

    Fails with a clear message when the cut crosses a residual connection.
    """
    out = model.get_layer(until).output if until else model.outputs[0]
    try:
        return keras.Model(model.get_layer(cut).output, out, name=name)
    except ValueError as exc:
        raise InputError(
            f"cannot fine-tune from just above {cut!r}: a residual connection crosses it; "
            "choose an index at a block boundary (e.g. 125, 134, 143 or 145 for MobileNetV2)"
        ) from exc


def _augment_fn(
    model: keras.Model, augment: str = AUGMENTATIONS[0], seed: int = 42
) -> Callable[[tf.Tensor], tf.Tensor]:
    """The model's own flips and rotations, after the acquisition changes when ``augment`` asks for them."""
    params = augment_params(augment)
    names = {x.name for x in model.layers}
    aug = [model.get_layer(n) for n in ("augment_flip", "augment_rotation") if n in names]
    acquisition = acquisition_augmenter(params, seed) if params is not None else None

    def run(x: tf.Tensor) -> tf.Tensor:
        if acquisition is not None:
            x = acquisition(x)
        for layer in aug:
            x = layer(x, training=True)
        return x

    return run


def extract_activations(
    predictor: Predictor,
    paths: Sequence[str | Path],
    layer: str = FEATURES_LAYER,
    views: int = 1,
    batch_size: int = 64,
    seed: int = 42,
    on_batch: Callable[[int], None] | None = None,
    augment: str = AUGMENTATIONS[0],
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Activations of ``layer`` (float16), shape ``(views, n, ...)``; view 0 is the plain image.

    Views 1.. are random flips/rotations made by the model's own augmentation
    layers, after zoom, blur, exposure and noise changes when ``augment`` is
    ``"acquisition"`` or ``"invariance"`` (:mod:`pneumocam.training.augment`). Unreadable files are left out and
    returned separately with their reason. The images go through the predictor's input pipeline.
    """
    model, spec = predictor.model, predictor.spec
    keras.utils.set_random_seed(seed)
    probe = keras.Model(model.inputs[0], model.get_layer(layer).output)
    sig = [tf.TensorSpec([None, *spec.shape], tf.float32)]
    forward = tf.function(lambda x: tf.cast(probe(x, training=False), tf.float16), input_signature=sig)
    augmenter = tf.function(_augment_fn(model, augment, seed), input_signature=sig)
    out: list[list[np.ndarray]] = [[] for _ in range(views)]
    skipped: list[tuple[Path, str]] = []
    for batch in predictor.batches(paths, batch_size):
        if len(batch.images):
            for v in range(views):
                out[v].append(forward(batch.images if v == 0 else augmenter(batch.images)).numpy())
        skipped += batch.skipped
        if on_batch:
            on_batch(batch.size)
    shape = probe.output_shape[1:]
    return np.stack([np.concatenate(v) if v else np.zeros((0, *shape), np.float16) for v in out]), skipped


def cache_key(
    paths: Sequence[str | Path],
    model: keras.Model,
    spec: InputSpec,
    layer: str,
    views: int,
    seed: int,
    augment: str = AUGMENTATIONS[0],
) -> str:
    """Hash of everything cached activations depend on: files, frozen weights, recipe."""
    h = hashlib.sha256()
    h.update(json.dumps([str(p) for p in paths]).encode())
    pooling = type(model.get_layer(FEATURES_LAYER)).__name__
    h.update(json.dumps([spec.to_dict(), layer, views, seed, pooling]).encode())
    params = augment_params(augment)
    if params is not None:
        h.update(json.dumps([augment, params.to_dict()]).encode())
    for lay in backbone_layers(model):
        for w in lay.weights:
            h.update(np.asarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def cached(
    cache_dir: Path | None, key: str, compute: Callable[[], tuple[np.ndarray, list[tuple[Path, str]]]]
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Load activations from ``cache_dir/activations-<key>.npz`` or compute and store them."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"activations-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            pairs = zip(z["skipped_paths"].tolist(), z["skipped_reasons"].tolist())
            return z["activations"], [(Path(p), r) for p, r in pairs]
    acts, skipped = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        activations=acts,
        skipped_paths=np.array([str(p) for p, _ in skipped], dtype=str),
        skipped_reasons=np.array([r for _, r in skipped], dtype=str),
    )
    tmp.replace(path)
    return acts, skipped


def head_model(model: keras.Model) -> keras.Model:
    """Pooled features -> probabilities, built from the full model's own head layers (shared weights)."""
    dim = model.get_layer(FEATURES_LAYER).output.shape[-1]
    inp = keras.Input((dim,), name="features")
    names = [layer.name for layer in model.layers]
    x = inp
    for name in names[names.index(FEATURES_LAYER) + 1 :]:
        x = model.get_layer(name)(x)
    return keras.Model(inp, x, name="head")


def _metrics() -> list:
    return [
        "accuracy",
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.AUC(name="auc"),
    ]


def fit(
    net: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    patience: int,
    weights: dict[int, float] | None,
    label_smoothing: float,
    seed: int,
    consistency: float = 0.0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> dict[str, list[float]]:
    """Adam + cross-entropy; the epoch with the best validation loss is kept (early stopping).

    ``consistency`` > 0 adds that weight of the Jensen-Shannon term among each image's views
    (:mod:`pneumocam.training.consistency`); ``x`` is then the cache itself, ``(views, n, ...)``, and ``y`` one
    label per image. The validation loss stays the clean images' cross-entropy either way.
    """
    if len(x) == 0 or len(x_val) == 0:
        raise DataError("training and validation sets must both be non-empty")
    n_classes = net.output_shape[-1]
    keras.utils.set_random_seed(seed)
    val_y = keras.utils.to_categorical(y_val, n_classes)
    if consistency > 0:
        trained, metrics = PerView(net), [view_accuracy]
        loss = consistency_loss(consistency, label_smoothing, n_classes)
        data = {
            "x": ViewBatches(x, y, n_classes, batch_size, weights, seed),
            "validation_data": (x_val[:, None], val_y),
            "validation_batch_size": CACHE_PREDICT_BATCH,
        }
    else:
        trained, metrics = net, _metrics()
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        data = {
            "x": x,
            "y": keras.utils.to_categorical(y, n_classes),
            "validation_data": (x_val, val_y),
            "batch_size": batch_size,
            "class_weight": weights,
            "shuffle": True,
        }
    trained.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    history = trained.fit(**data, epochs=epochs, verbose=verbose, callbacks=[stop, *callbacks])
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _predict(net: keras.Model, x: np.ndarray, batch_size: int = CACHE_PREDICT_BATCH) -> np.ndarray:
    return net.predict(x, batch_size=batch_size, verbose=0)


@dataclass
class TrainResult:
    """A trained model, its metadata (validation metrics filled in) and each stage's history."""

    model: keras.Model
    meta: ModelMeta
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    source_stats: LayerStats | None = None
    validation_files: list[str] = field(default_factory=list)  # relative to the data folder
    validity: ValidityStats | None = None


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
    """Split by patient, cache activations at the cut, train the baseline then fine-tune."""

    arch = arch or ArchConfig()
    classes = list(DEFAULT_CLASSES)
    keras.utils.set_random_seed(cfg.seed)  # the head's initial weights too, whatever ran before in this process
    model = build_model(arch, spec, backbone_weights)
    meta = new_meta(model, arch, spec, classes)
    served = Predictor.in_memory(model, meta)  # the cache, the views, the statistics: all through its pipeline
    cut = cut_layer_name(model, cfg.fine_tune_from)
    top = upper_model(model, cut, name="fine_tuning") if cfg.fine_tune_from is not None else None
    train, val = split_by_patient(scan.samples, cfg.val_fraction, cfg.seed)

    def activations(samples: list[Sample], views: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [s.path for s in samples]
        key = cache_key(paths, model, spec, cut, views, cfg.seed, cfg.augment)
        acts, skipped = cached(
            cache_dir,
            key,
            lambda: extract_activations(served, paths, cut, views, 64, cfg.seed, on_batch, cfg.augment),
        )
        bad = {p for p, _ in skipped}
        keep = np.array([p not in bad for p in paths])
        y = np.array([classes.index(s.label) for s in samples])
        return acts, y[keep]

    a_train, y_train = activations(train, cfg.views)
    a_val, y_val = activations(val, 1)
    x_train = a_train.reshape(-1, *a_train.shape[2:])
    y_train_all = np.tile(y_train, cfg.views)
    x_val = a_val[0]
    weights = class_weights(y_train, len(classes)) if cfg.class_weight == "balanced" else None
    common = dict(weights=weights, label_smoothing=cfg.label_smoothing, seed=cfg.seed, callbacks=callbacks)

    if top is None:
        f_train, f_val = x_train.astype(np.float32), x_val.astype(np.float32)
    else:
        pool = upper_model(model, cut, until=FEATURES_LAYER)
        f_train, f_val = _predict(pool, x_train), _predict(pool, x_val)
    head = head_model(model)
    history = {
        "baseline": fit(
            head,
            f_train,
            y_train_all,
            f_val,
            y_val,
            learning_rate=cfg.learning_rate,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            patience=cfg.patience,
            verbose=verbose,
            **common,
        )
    }
    if top is not None:
        set_fine_tuning(model, cfg.fine_tune_from)
        stage = dict(
            learning_rate=cfg.learning_rate / cfg.fine_tune_lr_divisor,
            epochs=cfg.fine_tune_epochs,
            batch_size=cfg.fine_tune_batch_size,
            patience=cfg.fine_tune_patience or cfg.fine_tune_epochs,
            verbose=verbose,
            **common,
        )
        x_fit, y_fit = (a_train, y_train) if cfg.consistency > 0 else (x_train, y_train_all)
        history["fine-tuning"] = fit(top, x_fit, y_fit, x_val, y_val, consistency=cfg.consistency, **stage)
        set_fine_tuning(model, None)

    meta.training = {
        "procedure": "two stages on cached activations: head on a frozen backbone, then fine-tuning",
        "config": cfg.to_dict(),
        "augment_params": asdict(params) if (params := augment_params(cfg.augment)) else None,
        "cached_at": cut,
        "class_weights": weights,
        "epochs_run": {stage: len(h.get("loss", [])) for stage, h in history.items()},
        "best_val_loss": {stage: min(h["val_loss"]) for stage, h in history.items()},
        "backbone_weights": "imagenet" if backbone_weights == "imagenet" else Path(str(backbone_weights)).name,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }
    meta.data = {
        "source": "Kermany et al. 2018, Mendeley Data doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
        "train_dir": scan.root.name,
        "layout": scan.layout,
        "counts": scan.counts(),
        "split": "validation taken from train, stratified by class, grouped by patient",
        "n_train": int(len(y_train)),
        "n_val": int(len(y_val)),
    }
    choose_views(served, val, classes).record_into(meta)  # validation metrics and stress, with the views
    stats = source_statistics(served, [s.path for s in train])
    validity, meta.validity = validity_statistics(served, train, val, classes, TRAINING_IMAGES)
    # the temperature folded in when it helps, and the set rule: through the views just chosen
    served, _ = fit_confidence(Predictor.in_memory(model, meta, validity), val)
    files = [relative_name(s.path, scan.root) for s in val]
    return TrainResult(served.model, served.meta, history, stats, files, validity)


def source_statistics(predictor: Predictor, paths: Sequence[str | Path]) -> LayerStats:
    """The training images' statistics that site adaptation maps a new site back to (clean images)."""

    return layer_statistics(predictor, paths, measured_layers(predictor.model))


TRAINING_IMAGES = "the training split (validation excluded), clean, no augmentation"


def validity_statistics(
    predictor: Predictor,
    train: Sequence[Sample],
    val: Sequence[Sample],
    classes: Sequence[str],
    images: str,
    layer: str = VALIDITY_LAYER,
    proxy: Path | None = None,
) -> tuple[ValidityStats, dict[str, Any]]:
    """Fit the validity statistics on the training split, the threshold on validation; and their record.

    ``proxy``: a folder of radiographs that are not pediatric frontal chest X-rays (adult, lateral, other body
    parts), searched recursively; with it, a discriminator on :data:`~pneumocam.options.VALIDITY_DISC_LAYER` joins
    the distance.
    """
    spec = f"{layer}+{VALIDITY_DISC_LAYER}" if proxy else layer
    kept, train_summaries = predictor.summaries([s.path for s in train], spec)
    y = class_indices(labels_of(list(train), kept), list(classes))
    _, val_summaries = predictor.summaries([s.path for s in val], spec)
    d = summary_width(predictor.model, layer)
    stats = validity.fit(train_summaries[:, :d], y, val_summaries[:, :d], layer)
    against = None
    if proxy:
        read, proxy_summaries = predictor.summaries(list_images(proxy), spec)
        stats = validity.with_discriminator(stats, VALIDITY_DISC_LAYER, train_summaries, proxy_summaries, val_summaries)
        against = {"images": len(read), "folder": Path(proxy).name}
    return stats, validity.record(stats, train_summaries, val_summaries, images, against)


def add_validity(predictor: Predictor, scan: Scan, proxy: Path | None = None) -> Path:
    """Fit and store the validity statistics of a model trained before they were kept (``proxy``: see
    :func:`validity_statistics`).

    The training and validation splits are rebuilt from the configuration in
    ``model.json`` (same fraction and seed, so the same patients), which makes
    the result what training would have stored.
    """

    train, val = split_by_patient(scan.samples, *recorded_split(predictor.meta.training))
    images = TRAINING_IMAGES + "; measured after training"
    stats, record = validity_statistics(predictor, train, val, predictor.meta.classes, images, proxy=proxy)
    predictor.meta.validity = record
    path = store_validity(predictor.directory, predictor.meta, stats)
    write_json(predictor.directory / META_FILE, predictor.meta.to_dict())
    return path


def add_views(predictor: Predictor, scan: Scan, on_batch: Callable[[int], None] | None = None) -> Any:
    """Choose and store the test-time views of a model trained before they were chosen (its rebuilt validation split).

    Returns the :class:`pneumocam.training.view_choice.ViewChoice`; ``model.json`` gets ``predict`` and the validation
    figures with the chosen views (those of the image alone beside them).
    """

    _, val = split_by_patient(scan.samples, *recorded_split(predictor.meta.training))
    choice = choose_views(predictor, val, predictor.meta.classes, on_batch=on_batch)
    choice.record_into(predictor.meta)
    write_json(predictor.directory / META_FILE, predictor.meta.to_dict())
    return choice


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


def add_source_stats(predictor: Predictor, scan: Scan) -> Path:
    """Measure and store the training statistics of a model trained before they were kept.

    The training split is rebuilt from the configuration in ``model.json``
    (same fraction and seed, so the same patients), which makes the result what
    training would have stored.
    """

    train, _ = split_by_patient(scan.samples, *recorded_split(predictor.meta.training))
    stats = source_statistics(predictor, [s.path for s in train])
    path = stats.save(predictor.directory / SOURCE_STATS_FILE)
    predictor.meta.adaptation["source_stats"] = {
        "file": SOURCE_STATS_FILE,
        "sha256": file_sha256(path),
        "n_images": stats.n_images,
        "images": "the training split (validation excluded), clean, no augmentation; measured after training",
    }
    write_json(predictor.directory / META_FILE, predictor.meta.to_dict())
    return path


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
            result.meta.training["wall_minutes"] = round(minutes, 1)
            if recipe:
                result.meta.training["recipe"] = recipe
            metrics = result.meta.metrics
            log.info("done in %.1f min", minutes)
            log.info(
                "validation %s", json.dumps({k: v for k, v in metrics["validation"].items() if k != "calibration_bins"})
            )
            log.info("validation under perturbation %s", json.dumps(metrics["validation_shift"]))
            save_artifact(
                result.model, result.meta, staging, source_stats=result.source_stats, validity=result.validity
            )
            write_json(staging / history_file, result.history)
            save_figure(training_curves_figure(result.history), staging / curves_file)
            write_text(staging / validation_file, "".join(f"{f}\n" for f in result.validation_files))
        finally:
            log.removeHandler(handler)
            handler.close()
    return result
