"""Training the head on cached backbone features (the frozen-backbone stage).

With the backbone frozen and batch norm in inference mode, each image (and each
augmented view of it) maps to the same pooled features in every epoch. So we
compute them once, for a few flip/rotation views per image, and train only the
layers above on that cache. The head layers are shared with the full model, so
training them here trains the model that is saved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import StratifiedGroupKFold

from core.data import Sample, Scan, patient_id
from core.errors import DataError
from core.inference import image_dataset
from core.model import FEATURES_LAYER, backbone_layers
from core.preprocess import InputSpec

if TYPE_CHECKING:
    from core.artifact import ModelMeta
    from core.model import ArchConfig


@dataclass(frozen=True)
class HeadTrainConfig:
    """The seed's baseline stage by default: batch 100, Adam 1e-3, early stopping."""

    epochs: int = 50
    batch_size: int = 100
    learning_rate: float = 1e-3
    patience: int = 5
    views: int = 3
    val_fraction: float = 0.2
    seed: int = 42
    class_weight: str = "balanced"
    label_smoothing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def split_by_patient(
    samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 42
) -> tuple[list[Sample], list[Sample]]:
    """Validation split from train: stratified by class, no patient on both sides."""
    if not 0 < val_fraction < 0.5:
        raise ValueError("val_fraction must be in (0, 0.5)")
    n_splits = max(2, round(1 / val_fraction))
    labels = [s.label for s in samples]
    groups = [patient_id(s.path) for s in samples]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * count_c): each class contributes equally to the loss."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return {k: float(len(y) / (n_classes * c)) if c else 0.0 for k, c in enumerate(counts)}


def _augment_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    aug = [model.get_layer(n) for n in ("augment_flip", "augment_rotation") if n in {x.name for x in model.layers}]

    def run(x: tf.Tensor) -> tf.Tensor:
        for layer in aug:
            x = layer(x, training=True)
        return x

    return run


def extract_features(
    model: keras.Model,
    spec: InputSpec,
    paths: Sequence[str | Path],
    views: int = 1,
    batch_size: int = 64,
    seed: int = 42,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Pooled backbone features, shape ``(views, n, d)``; view 0 is the plain image.

    Views 1.. are random flips/rotations made by the model's own augmentation
    layers. Unreadable files are returned separately and get zero features.
    """
    keras.utils.set_random_seed(seed)
    features = keras.Model(model.inputs[0], model.get_layer(FEATURES_LAYER).output)
    sig = [tf.TensorSpec([None, *spec.shape], tf.float32)]
    forward = tf.function(lambda x: features(x, training=False), input_signature=sig)
    augment = tf.function(_augment_fn(model), input_signature=sig)
    out: list[list[np.ndarray]] = [[] for _ in range(views)]
    skipped: list[tuple[Path, str]] = []
    start = 0
    for x, errors in image_dataset(paths, spec, batch_size):
        for v in range(views):
            out[v].append(forward(x if v == 0 else augment(x)).numpy())
        for i, err in enumerate(errors.numpy()):
            if err:
                skipped.append((Path(paths[start + i]), err.decode("utf-8", "replace")))
        start += len(x)
        if on_batch:
            on_batch(len(x))
    return np.stack([np.concatenate(v) for v in out]), skipped


def feature_cache_key(paths: Sequence[str | Path], model: keras.Model, spec: InputSpec, views: int, seed: int) -> str:
    """Hash of everything the cached features depend on (files, backbone weights, recipe)."""
    h = hashlib.sha256()
    h.update(json.dumps([str(p) for p in paths]).encode())
    pooling = type(model.get_layer(FEATURES_LAYER)).__name__
    h.update(json.dumps([spec.to_dict(), views, seed, pooling]).encode())
    for layer in backbone_layers(model):
        for w in layer.weights:
            h.update(np.asarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def cached_features(
    cache_dir: Path | None, key: str, compute: Callable[[], tuple[np.ndarray, list[tuple[Path, str]]]]
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Load features from ``cache_dir/key.npz`` or compute and store them."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"features-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            skipped = [(Path(p), r) for p, r in zip(z["skipped_paths"].tolist(), z["skipped_reasons"].tolist())]
            return z["features"], skipped
    feats, skipped = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        features=feats,
        skipped_paths=np.array([str(p) for p, _ in skipped], dtype=str),
        skipped_reasons=np.array([r for _, r in skipped], dtype=str),
    )
    tmp.replace(path)
    return feats, skipped


def head_model(model: keras.Model) -> keras.Model:
    """Features -> probabilities, built from the full model's own head layers (shared weights)."""
    dim = model.get_layer(FEATURES_LAYER).output.shape[-1]
    inp = keras.Input((dim,), name="features")
    names = [layer.name for layer in model.layers]
    x = inp
    for name in names[names.index(FEATURES_LAYER) + 1 :]:
        x = model.get_layer(name)(x)
    return keras.Model(inp, x, name="head")


def train_head(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: HeadTrainConfig,
    verbose: int = 2,
) -> dict[str, list[float]]:
    """Fit the head on cached features; early stopping on validation loss, best weights kept."""
    n_classes = model.output_shape[-1]
    if len(x_train) == 0 or len(x_val) == 0:
        raise DataError("training and validation sets must both be non-empty")
    keras.utils.set_random_seed(cfg.seed)
    head = head_model(model)
    head.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    weights = class_weights(y_train, n_classes) if cfg.class_weight == "balanced" else None
    history = head.fit(
        x_train,
        keras.utils.to_categorical(y_train, n_classes),
        validation_data=(x_val, keras.utils.to_categorical(y_val, n_classes)),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        class_weight=weights,
        shuffle=True,
        verbose=verbose,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)],
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


@dataclass
class TrainResult:
    """A trained model, its metadata (validation metrics filled in) and the epoch history."""

    model: keras.Model
    meta: ModelMeta
    history: dict[str, list[float]]


def train_frozen(
    scan: Scan,
    cfg: HeadTrainConfig = HeadTrainConfig(),
    arch: ArchConfig | None = None,
    spec: InputSpec = InputSpec(),
    backbone_weights: str | None = "imagenet",
    cache_dir: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    verbose: int = 2,
) -> TrainResult:
    """The baseline stage end to end: split by patient, cache features, fit the head, measure on validation."""
    from core.artifact import DEFAULT_CLASSES, new_meta
    from core.metrics import classification_metrics
    from core.model import ArchConfig, build_model

    arch = arch or ArchConfig()
    classes = list(DEFAULT_CLASSES)
    model = build_model(arch, spec, backbone_weights)
    train, val = split_by_patient(scan.samples, cfg.val_fraction, cfg.seed)

    def features(samples: list[Sample], views: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [s.path for s in samples]
        key = feature_cache_key(paths, model, spec, views, cfg.seed)
        feats, skipped = cached_features(
            cache_dir, key, lambda: extract_features(model, spec, paths, views, 64, cfg.seed, on_batch)
        )
        bad = {p for p, _ in skipped}
        keep = np.array([p not in bad for p in paths])
        y = np.array([classes.index(s.label) for s in samples])
        return feats[:, keep], y[keep]

    f_train, y_train = features(train, cfg.views)
    f_val, y_val = features(val, 1)
    x_train = f_train.reshape(-1, f_train.shape[-1])
    history = train_head(model, x_train, np.tile(y_train, cfg.views), f_val[0], y_val, cfg, verbose)
    val_probs = head_model(model).predict(f_val[0], verbose=0)
    meta = new_meta(model, arch, spec, classes)
    meta.training = {
        "stage": "frozen backbone, head on cached features",
        "config": cfg.to_dict(),
        "class_weights": class_weights(y_train, len(classes)) if cfg.class_weight == "balanced" else None,
        "epochs_run": len(history.get("loss", [])),
        "backbone_weights": "imagenet" if backbone_weights == "imagenet" else Path(str(backbone_weights)).name,
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
    meta.metrics = {"validation": classification_metrics(y_val, val_probs, classes)}
    return TrainResult(model, meta, history)
