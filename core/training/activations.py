"""Cached activations: the frozen part of the backbone run once per image and augmented view, and the parts of the
model above the cut that training fits on them (layers shared with the full model)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pneumocam.config import InputSpec
from pneumocam.errors import InputError
from pneumocam.model.network import FEATURES_LAYER, backbone_layers
from pneumocam.options import AUGMENTATIONS, CACHE_PREDICT_BATCH
from pneumocam.scoring.predictor import Predictor
from pneumocam.training.augment import acquisition_augmenter, augment_params


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
    copies: int = 1,
    batch_size: int = 64,
    seed: int = 42,
    on_batch: Callable[[int], None] | None = None,
    augment: str = AUGMENTATIONS[0],
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Activations of ``layer`` (float16), shape ``(copies, n, ...)``; copy 0 is the plain image.

    Copies 1.. are random flips/rotations made by the model's own augmentation
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
    out: list[list[np.ndarray]] = [[] for _ in range(copies)]
    skipped: list[tuple[Path, str]] = []
    for batch in predictor.batches(paths, batch_size):
        if len(batch.images):
            for c in range(copies):
                out[c].append(forward(batch.images if c == 0 else augmenter(batch.images)).numpy())
        skipped += batch.skipped
        if on_batch:
            on_batch(batch.size)
    shape = probe.output_shape[1:]
    return np.stack([np.concatenate(c) if c else np.zeros((0, *shape), np.float16) for c in out]), skipped


def cache_key(
    paths: Sequence[str | Path],
    model: keras.Model,
    spec: InputSpec,
    layer: str,
    copies: int,
    seed: int,
    augment: str = AUGMENTATIONS[0],
) -> str:
    """Hash of everything cached activations depend on: files, frozen weights, recipe."""
    h = hashlib.sha256()
    h.update(json.dumps([str(p) for p in paths]).encode())
    pooling = type(model.get_layer(FEATURES_LAYER)).__name__
    h.update(json.dumps([spec.to_dict(), layer, copies, seed, pooling]).encode())
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


def predict_cached(net: keras.Model, x: np.ndarray, batch_size: int = CACHE_PREDICT_BATCH) -> np.ndarray:
    """``net`` over cached activations, in large batches."""
    return net.predict(x, batch_size=batch_size, verbose=0)
