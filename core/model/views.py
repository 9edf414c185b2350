"""Test-time views: one X-ray scored as a few copies nobody could tell apart, the probabilities averaged.

A call that flips when the same X-ray is re-encoded, or uploaded at its
original resolution instead of its 224 px copy, is not one a clinician can
trust. Averaging the model over a few such copies of its input (the image
itself, a JPEG re-encoding, a slight blur, a small zoom, the mirror image)
smooths the call over exactly those changes. The views a model uses are
recorded in ``model.json`` (``predict.views``, chosen on the validation split by
``python -m cli choose-views``) and applied by the forward pass of every entry
point (:func:`pneumocam.scoring.forward.compile_forward`) and by Grad-CAM, which explains
the averaged logit and maps each view's heatmap back onto the image.

A view is named by its kind and one number: ``identity``, ``jpeg-75`` (quality),
``blur-0.7`` (Gaussian sigma, pixels), ``zoom-1.1`` (centre crop enlarged by this
factor), ``flip`` (left-right mirror). The first view is always ``identity``: the
validity summary and the pooled features are read from it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from pneumocam.errors import InputError
from pneumocam.options import NO_VIEWS

IDENTITY = NO_VIEWS[0]


def parse_view(name: str) -> tuple[str, float]:
    """``"jpeg-75"`` -> ``("jpeg", 75.0)``; a name we do not know is refused with the ones we do."""
    kind, _, value = name.partition("-")
    try:
        number = float(value) if value else 0.0
    except ValueError:
        number = math.nan
    ok = (
        (kind in (IDENTITY, "flip") and not value)
        or (kind == "jpeg" and number.is_integer() and 1 <= number <= 100)
        or (kind == "blur" and 0 < number <= 5)
        or (kind == "zoom" and 1 < number <= 2)
    )
    if not ok:
        raise InputError(
            f"unknown view {name!r}; views are identity, jpeg-Q (1-100), blur-S (0-5 px), zoom-Z (1-2) and flip"
        )
    return kind, number


def check_views(names: Sequence[str]) -> tuple[str, ...]:
    """A valid view list: every name known, ``identity`` first, no repeats."""
    names = tuple(names)
    for name in names:
        parse_view(name)
    if not names or names[0] != IDENTITY:
        raise InputError("the first view must be 'identity' (the validity score and features come from it)")
    if len(set(names)) < len(names):
        raise InputError("each view may appear once")
    return names


def _jpeg(x: tf.Tensor, quality: int) -> tf.Tensor:
    as_bytes = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
    coded = tf.map_fn(lambda im: tf.image.adjust_jpeg_quality(im, quality), as_bytes, fn_output_signature=tf.uint8)
    return tf.reshape(tf.cast(coded, tf.float32), tf.shape(x))


def _blur(x: tf.Tensor, sigma: float) -> tf.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-(t**2) / (2.0 * sigma**2))
    taps = taps / tf.reduce_sum(taps)
    channels = x.shape[-1]
    column = tf.tile(taps[:, None, None, None], [1, 1, channels, 1])
    padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    out = tf.nn.depthwise_conv2d(padded, column, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(out, tf.transpose(column, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")


@functools.lru_cache(maxsize=32)
def _zoom_matrix(n: int, factor: float, inverse: bool = False) -> np.ndarray:
    """``(n, n)`` bilinear resampling along one axis: a centre crop enlarged ``factor`` times, or its inverse.

    Pixel centres sit at ``(i + 0.5) / n``. Forward, output pixel ``i`` reads the input at
    ``0.5 + (t - 0.5) / factor``; ``inverse`` reads the zoomed image at ``0.5 + (t - 0.5) * factor``,
    and a pixel the zoomed image does not cover gets a zero row (so the row sums are the coverage).
    """
    t = (np.arange(n) + 0.5) / n
    source = 0.5 + (t - 0.5) * (factor if inverse else 1.0 / factor)
    p = source * n - 0.5
    out = np.zeros((n, n), np.float32)
    for i, pos in enumerate(p):
        if pos < -0.5 or pos > n - 0.5:
            continue
        lo = int(np.floor(pos))
        frac = pos - lo
        out[i, min(max(lo, 0), n - 1)] += 1.0 - frac
        out[i, min(max(lo + 1, 0), n - 1)] += frac
    return out


def _resample(x: tf.Tensor, rows: np.ndarray, cols: np.ndarray) -> tf.Tensor:
    """``rows @ image @ cols.T`` for each image (and channel) of a batch ``(b, h, w[, c])``."""
    if x.shape.rank == 4:
        return tf.einsum("ij,bjkc,lk->bilc", rows, x, cols)
    return tf.einsum("ij,bjk,lk->bil", rows, x, cols)


def _zoom(x: tf.Tensor, factor: float) -> tf.Tensor:
    h, w = x.shape[1], x.shape[2]
    return _resample(x, _zoom_matrix(h, factor), _zoom_matrix(w, factor))


def view(x: tf.Tensor, name: str) -> tf.Tensor:
    """One view of a batch of model inputs (float, 0..255, ``(n, h, w, c)``), same shape."""
    kind, number = parse_view(name)
    if kind == "jpeg":
        return _jpeg(x, int(number))
    if kind == "blur":
        return _blur(x, number)
    if kind == "zoom":
        return _zoom(x, number)
    if kind == "flip":
        return tf.reverse(x, axis=[2])
    return x


def make_views(x: tf.Tensor, names: Sequence[str]) -> tf.Tensor:
    """All views of a batch, view-major: ``(len(names) * n, h, w, c)``, the first ``n`` the inputs themselves."""
    return tf.concat([view(x, name) for name in names], axis=0) if len(names) > 1 else x


def average(values: tf.Tensor, n_views: int) -> tf.Tensor:
    """``(views * n, ...)`` view-major -> ``(n, ...)``: the mean over the views."""
    if n_views == 1:
        return values
    shape = tf.concat([[n_views, -1], tf.shape(values)[1:]], axis=0)
    return tf.reduce_mean(tf.reshape(values, shape), axis=0)


def log_average_probability(logits: tf.Tensor, n_views: int) -> tf.Tensor:
    """``(views * n, C)`` logits -> ``(n, C)``: the log of the views' mean softmax, computed stably."""
    log_p = tf.nn.log_softmax(logits)
    if n_views == 1:
        return log_p
    shape = tf.concat([[n_views, -1], tf.shape(log_p)[1:]], axis=0)
    return tf.reduce_logsumexp(tf.reshape(log_p, shape), axis=0) - tf.math.log(float(n_views))


def first_view(values: tf.Tensor, n_views: int) -> tf.Tensor:
    """``(views * n, ...)`` view-major -> the ``identity`` view's ``(n, ...)``."""
    if n_views == 1:
        return values
    return values[: tf.shape(values)[0] // n_views]


def map_back(maps: tf.Tensor, names: Sequence[str]) -> tf.Tensor:
    """Heatmaps of every view ``(views * n, h, w)`` -> one ``(n, h, w)`` per image, on the image's own grid.

    A mirrored view's map is mirrored back; a zoomed view's map covers the centre
    of the image only, so each cell is averaged over the views that saw it.
    """
    if len(names) == 1:
        return maps
    h, w = maps.shape[1], maps.shape[2]
    per_view = tf.split(maps, len(names), axis=0)
    total, cover = 0.0, 0.0
    for m, name in zip(per_view, names):
        kind, number = parse_view(name)
        ones = tf.ones_like(m)
        if kind == "flip":
            m = tf.reverse(m, axis=[2])
        if kind == "zoom":
            rows, cols = _zoom_matrix(h, number, inverse=True), _zoom_matrix(w, number, inverse=True)
            m, ones = _resample(m, rows, cols), _resample(ones, rows, cols)
        total += m
        cover += ones
    return total / tf.maximum(cover, 1e-6)
