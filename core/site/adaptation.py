"""Unlabelled site adaptation: re-standardise the model's internal statistics to a new site.

X-rays from another site or period reach each batch-norm layer, and the pooled
features, with other channel means and spreads than the training images did.
AdaBN (Li et al. 2016) maps them back: each layer's input is standardised with
the site's statistics and re-scaled to the training ones. Both are measured
here, per channel, over every pixel of every image:

* the training statistics once, at training time, stored beside the model
  (``source_stats.npz``, its SHA-256 in ``model.json``);
* the site's from a folder of its unlabelled images, no label read.

The correction is folded into the weights (batch-norm mean and scale, the first
dense layer of the head), so an adapted model is an ordinary model: same
architecture, same Grad-CAM layers, explained on its own logits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pneumocam.config import Adaptation
from pneumocam.errors import InputError, ModelLoadError, none_readable
from pneumocam.model.artifact import SOURCE_STATS_FILE, file_sha256
from pneumocam.model.hub import download_optional
from pneumocam.model.network import FEATURES_LAYER, validity_summary
from pneumocam.options import ADAPT_BATCH_SIZE, ADAPT_METHODS, DEFAULT_ADAPT_METHOD, LAME
from pneumocam.scoring.predictor import Predictor
from pneumocam.site.lame import content_order

_MIN_STD = 1e-3
#: The key of the validity summary's moments in a :class:`LayerStats` (per image, not per pixel).
VALIDITY_SUMMARY = "validity_summary"


@dataclass
class LayerStats:
    """Per-channel mean and standard deviation of some layers' inputs (pooled features: outputs)."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    n_images: int

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {f"mean/{k}": v for k, v in self.mean.items()} | {f"std/{k}": v for k, v in self.std.items()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, n_images=np.array(self.n_images), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerStats:
        with np.load(path, allow_pickle=False) as z:
            mean = {k[5:]: z[k] for k in z.files if k.startswith("mean/")}
            std = {k[4:]: z[k] for k in z.files if k.startswith("std/")}
            return cls(mean, std, int(z["n_images"]))


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def measured_layers(model: keras.Model, method: str = DEFAULT_ADAPT_METHOD) -> list[str]:
    """The layers a method re-standardises, shallow to deep (pooled features last).

    ``bn+features``: every batch norm, then the pooled features; ``features``:
    the pooled features alone; ``bn``: the batch norms alone (AdaBN as published).
    """
    bn, features = _method_parts(method)
    bns = [layer.name for layer in batchnorm_layers(model)] if bn else []
    return [*bns, *([FEATURES_LAYER] if features else [])]


def _method_parts(method: str) -> tuple[bool, bool]:
    """Whether a method re-standardises the batch norms, and whether the pooled features."""
    if method not in ADAPT_METHODS:
        raise InputError(f"unknown adaptation method {method!r}; use one of {', '.join(ADAPT_METHODS)}")
    return method.startswith("bn"), method.endswith("features")


def layer_statistics(
    predictor: Predictor,
    paths: Sequence[str | Path],
    layer_names: Sequence[str],
    batch_size: int = ADAPT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    summary_layer: str | None = None,
) -> LayerStats:
    """Per-channel mean and std of each named layer's input (``pooled_features``: its output).

    ``summary_layer``: also the moments of that layer's validity summary over the
    images, under :data:`VALIDITY_SUMMARY`. Sums are reduced inside the graph,
    batch by batch, so only two vectors per layer leave it. Unreadable files are left out.
    """
    model = predictor.model
    tensors = [model.get_layer(n).output if n == FEATURES_LAYER else model.get_layer(n).input for n in layer_names]
    names = list(layer_names)
    if summary_layer:
        tensors.append(validity_summary(model, summary_layer))
        names.append(VALIDITY_SUMMARY)
    moments = [part for t in tensors for part in _BatchMoments()(t)]
    probe = _Probe(keras.Model(model.inputs[0], moments), names)
    return _site_moments(probe, predictor, paths, batch_size, on_batch)


def _ratio(source_std: np.ndarray, target_std: np.ndarray) -> np.ndarray:
    """target/source spread per channel; 1 where either is degenerate (a dead channel)."""
    ok = (source_std > _MIN_STD) & (target_std > _MIN_STD)
    return np.where(ok, target_std / np.where(ok, source_std, 1.0), 1.0).astype(np.float32)


def adapt_batchnorm(layer: keras.layers.BatchNormalization, source: LayerStats, target: LayerStats) -> None:
    """Make ``layer`` see site inputs as the training inputs: x -> (x - mu_t) * s_s / s_t + mu_s, then the layer.

    Folded exactly into its weights: gamma' = gamma / r and mean' = mu_t - (mu_s - mean) * r, r = s_t / s_s.
    """
    gamma, beta, mean, var = (np.array(w) for w in layer.get_weights())
    n = layer.name
    r = _ratio(source.std[n], target.std[n])
    layer.set_weights([gamma / r, beta, target.mean[n] - (source.mean[n] - mean) * r, var])


def adapt_features(dense: keras.layers.Dense, source: LayerStats, target: LayerStats) -> None:
    """Fold f -> (f - mu_t) * s_s / s_t + mu_s (pooled features) into the first dense layer of the head."""
    kernel, bias = (np.array(w) for w in dense.get_weights())
    a = 1.0 / _ratio(source.std[FEATURES_LAYER], target.std[FEATURES_LAYER])
    c = source.mean[FEATURES_LAYER] - a * target.mean[FEATURES_LAYER]
    dense.set_weights([kernel * a[:, None], bias + c @ kernel])


def first_head_dense(model: keras.Model) -> keras.layers.Dense:
    """The dense layer that reads the pooled features (through dropout only)."""
    names = [layer.name for layer in model.layers]
    for layer in model.layers[names.index(FEATURES_LAYER) + 1 :]:
        if isinstance(layer, keras.layers.Dense):
            return layer
    raise ModelLoadError("the model has no dense layer after its pooled features, so it cannot be adapted")


class _BatchMoments(keras.layers.Layer):
    """Per-channel mean and variance of a batch over every axis but the channels (two passes, float32)."""

    def call(self, x):
        axes = tuple(range(len(x.shape) - 1))
        return keras.ops.mean(x, axis=axes), keras.ops.var(x, axis=axes)


class _SiteStandardize(_BatchMoments):
    """Standardise a batch-norm input with the batch's own statistics, re-scaled to the training ones.

    Used only inside the measuring pass of :func:`adapt_model` (never saved):
    like AdaBN's forward in training mode, every deeper layer then sees inputs
    already corrected for the site, so one pass measures all layers consistently.
    Returns the batch's moments too: the site statistics are made of them.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source_mean = np.asarray(mean, np.float32)
        self.source_std = np.asarray(std, np.float32)

    def call(self, x):
        ops = keras.ops
        mean, var = super().call(x)
        ok = ops.logical_and(ops.sqrt(var) > _MIN_STD, self.source_std > _MIN_STD)
        scale = ops.where(ok, self.source_std / ops.sqrt(var + 1e-12), 1.0)
        shift = ops.where(ok, self.source_mean - mean * scale, 0.0)
        return x * scale + shift, mean, var


@dataclass(frozen=True)
class _Probe:
    """A model whose outputs are each named tensor's batch moments: mean, variance, in ``names`` order."""

    model: keras.Model
    names: list[str]


def _measuring_model(model: keras.Model, source: LayerStats, bn_names: Sequence[str]) -> _Probe:
    """The model with each batch norm's input standardised per batch; outputs the moments of each raw input and
    of the pooled features."""
    moments: dict[str, tuple] = {}
    wanted = set(bn_names)

    def call(layer: keras.layers.Layer, *args, **kwargs):
        if layer.name in wanted:
            x, *moments[layer.name] = _SiteStandardize(source.mean[layer.name], source.std[layer.name])(args[0])
            return layer(x, *args[1:], **kwargs)
        out = layer(*args, **kwargs)
        if layer.name == FEATURES_LAYER:
            moments[FEATURES_LAYER] = _BatchMoments()(out)
        return out

    inputs = keras.Input(model.input_shape[1:], name="site_image")
    keras.models.clone_model(model, inputs, clone_function=lambda layer: layer, call_function=call)
    names = [*bn_names, FEATURES_LAYER]
    outputs = [part for n in names for part in moments[n]]
    return _Probe(keras.Model(inputs, outputs), names)


def _site_moments(
    probe: _Probe,
    predictor: Predictor,
    paths: Sequence[str | Path],
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> LayerStats:
    """Per-channel mean and std of each probed tensor over every pixel of every readable image: the batches'
    moments pooled in float64 (the spread within batches plus the spread of their means)."""
    sig = [tf.TensorSpec([None, *predictor.spec.shape], tf.float32)]
    batch_moments = tf.function(lambda x: probe.model(x, training=False), input_signature=sig)
    sizes: list[int] = []
    parts: list[list[np.ndarray]] = []
    skipped: list[tuple[Path, str]] = []
    for batch in predictor.batches(paths, batch_size):
        skipped += batch.skipped
        if len(batch.images):
            parts.append([np.asarray(m, np.float64) for m in batch_moments(batch.images)])
            sizes.append(len(batch.images))
        if on_batch:
            on_batch(batch.size)
    if not sizes:
        where = Path(os.path.commonpath([str(p) for p in paths])) if paths else Path(".")
        raise none_readable(len(paths), where, skipped)
    weight = np.asarray(sizes, np.float64)[:, None] / sum(sizes)  # each image gives a tensor as many values
    mean, std = {}, {}
    for i, name in enumerate(probe.names):
        means = np.stack([p[2 * i] for p in parts])
        variances = np.stack([p[2 * i + 1] for p in parts])
        pooled = (weight * means).sum(axis=0)
        var = (weight * (variances + (means - pooled) ** 2)).sum(axis=0)
        mean[name], std[name] = pooled.astype(np.float32), np.sqrt(var).astype(np.float32)
    return LayerStats(mean, std, sum(sizes))


def split_method(method: str) -> tuple[str, bool]:
    """An ``evaluate --adapt`` method: the part folded into the weights, and whether LAME follows."""
    suffix = f"+{LAME}"
    base, with_lame = (method[: -len(suffix)], True) if method.endswith(suffix) else (method, False)
    _method_parts(base)
    return base, with_lame


def adapt_model(
    site: Predictor,
    source: LayerStats,
    paths: Sequence[str | Path],
    method: str = DEFAULT_ADAPT_METHOD,
    batch_size: int = ADAPT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    summary_layer: str | None = None,
) -> LayerStats:
    """Adapt ``site.model`` (a fresh copy) in place to the images in ``paths``; returns the site statistics measured.

    ``summary_layer``: the last pass also measures the adapted model's validity
    summaries of the site (:data:`VALIDITY_SUMMARY`), so its validity statistics can follow.

    The images are batched in :func:`content_order`, so the same images give the
    same model whatever their names, order or folder layout.

    ``bn`` and ``bn+features``: one pass in which every batch norm's input is
    standardised with the batch's statistics and mapped to the training ones
    (AdaBN), measuring the site's statistics of every layer under the corrected
    shallower layers; they are folded into the batch norms. Then, for
    ``features`` and ``bn+features``, one pass measures the pooled features of
    the (adapted) model and folds their re-standardisation into the head's
    first dense layer.
    """
    model = site.model
    names = measured_layers(model, method)
    missing = [n for n in names if n not in source.mean]
    if missing:
        raise ModelLoadError(f"the stored training statistics lack layers {', '.join(missing[:3])}")
    bn_names = [n for n in names if n != FEATURES_LAYER]
    paths = content_order(paths)
    target = None
    if bn_names:
        target = _site_moments(_measuring_model(model, source, bn_names), site, paths, batch_size, on_batch)
        for n in bn_names:
            adapt_batchnorm(model.get_layer(n), source, target)
    last = [FEATURES_LAYER] if FEATURES_LAYER in names else []
    if not last and not summary_layer:
        return target
    feats = layer_statistics(site, paths, last, batch_size, on_batch, summary_layer)
    if last:
        adapt_features(first_head_dense(model), source, feats)
    if target is None:
        return feats
    return LayerStats(target.mean | feats.mean, target.std | feats.std, feats.n_images)


def stat_passes(method: str, validity: bool = False) -> int:
    """How many passes over the images :func:`adapt_model` makes (for progress bars).

    ``validity``: the model has validity statistics, whose site summaries need a last pass if the method has none.
    """
    bn, features = _method_parts(split_method(method)[0])
    return bn + (features or validity)


def load_source_stats(directory: str | Path, recorded: Adaptation) -> LayerStats:
    """The training statistics stored beside a model, checked against the hash in its metadata."""
    info = recorded.source_stats
    path = Path(directory) / SOURCE_STATS_FILE
    if not info or not path.is_file():
        raise ModelLoadError(
            f"the model in {directory} has no training statistics ({SOURCE_STATS_FILE}), so it cannot be adapted; "
            "retrain it with this version, which stores them"
        )
    if file_sha256(path) != info.sha256:
        raise ModelLoadError(f"{path} does not match the SHA-256 recorded in model.json")
    return LayerStats.load(path)


def check_adaptable(predictor: Predictor) -> LayerStats:
    """Refuse, before any work, a model that cannot be adapted; returns its training statistics."""
    if applied := predictor.meta.adaptation.applied:
        raise ModelLoadError(
            f"{predictor.source} is already adapted to {applied.get('folder')}; adapt the original model instead"
        )
    if predictor.meta.calibration:
        raise ModelLoadError(f"{predictor.source} is calibrated; adapt the uncalibrated model first, then calibrate")
    if predictor.meta.tuning:
        raise ModelLoadError(f"{predictor.source} is site-tuned; adapt the untuned model first, then tune")
    directory = predictor.directory
    if predictor.hub is not None and not (directory / SOURCE_STATS_FILE).is_file():
        fetched = download_optional(predictor.hub, SOURCE_STATS_FILE)
        directory = fetched.parent if fetched else directory
    return load_source_stats(directory, predictor.meta.adaptation)


def clone(model: keras.Model) -> keras.Model:
    """A separate copy with the same layers, names and weights (adaptation never touches the loaded model)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def adapted_site(
    predictor: Predictor,
    paths: Sequence[str | Path],
    method: str = DEFAULT_ADAPT_METHOD,
    batch_size: int = ADAPT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Predictor, dict]:
    """A new predictor adapted to ``paths`` (a copy; validity statistics re-matched to the site), and what was done.

    The site's validity summaries are re-standardised to the training ones, as
    the features are, so the site's own X-rays stay accepted.
    """
    source = check_adaptable(predictor)
    site = predictor.derived(model=clone(predictor.model))
    layer = predictor.validity_stats.layer if predictor.validity_stats is not None else None
    target = adapt_model(site, source, paths, method, batch_size, on_batch, layer)
    validity = predictor.validity_stats
    if validity is not None:
        validity = validity.rematched(target.mean[VALIDITY_SUMMARY], target.std[VALIDITY_SUMMARY])
    info = {
        "kind": "unlabelled site adaptation (AdaBN-style re-standardisation)",
        "method": method,
        "layers": len(measured_layers(site.model, method)),
        "n_images": target.n_images,
        "source_images": source.n_images,
        "labels_read": False,
    }
    return site.derived(validity_stats=validity), info
