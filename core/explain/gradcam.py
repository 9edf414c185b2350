"""Grad-CAM and its kin for several conv layers at once: one forward, one backward pass.

:class:`BaseCAM` builds a model exposing the chosen conv activations and the
pre-softmax logits, compiles a single-tape function once (variable batch size,
so new batch sizes do not retrace), and turns activations into maps: the map
is ``relu(sum over channels of contributions(A, dY/dA))``. A CAM method is a
short subclass that overrides :meth:`BaseCAM.contributions` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pneumocam.config import check_cam_score
from pneumocam.errors import InputError
from pneumocam.model.network import LOGITS_LAYER, validity_summary
from pneumocam.model.views import (
    NO_VIEWS,
    average,
    check_views,
    first_view,
    log_average_probability,
    make_views,
    map_back,
)
from pneumocam.options import CAM_METHODS, DEFAULT_CAM_SCORE, LOG_PROBABILITY
from pneumocam.scoring.predictor import Predictor


@dataclass
class CamResult:
    """Per image: class probabilities, the explained class, one [0, 1] map per layer."""

    probabilities: np.ndarray  # (B, n_classes)
    target_classes: np.ndarray  # (B,)
    layer_names: list[str]
    maps: list[np.ndarray]  # one (B, h_l, w_l) array per layer, values in [0, 1]
    empty: list[np.ndarray]  # one (B,) bool array per layer: no positive evidence, the map is all zeros
    summaries: np.ndarray | None = None  # (B, d) the validity summary, when the CAM was built with one


EMPTY_MAX = 1e-12


def is_empty(cam: np.ndarray) -> bool:
    """No positive evidence anywhere: the rectified map is flat at zero (or not finite)."""
    hi = float(cam.max())
    return not np.isfinite(hi) or hi <= EMPTY_MAX


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Rescale one map to [0, 1]; a flat (e.g. all-zero) map becomes zeros, never NaN."""
    lo, hi = float(cam.min()), float(cam.max())
    if not np.isfinite(hi) or hi - lo <= EMPTY_MAX:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32)


class BaseCAM:
    """Gradient-weighted class activation maps; subclasses override :meth:`contributions`.

    :meth:`serving` builds one for a predictor: its views, validity summary and explained score, as served.
    """

    @classmethod
    def serving(cls, predictor: Predictor, layer_names: list[str], score: str | None = None) -> BaseCAM:
        """This CAM of ``predictor`` as it serves: its views, its validity summary, its explained score by default."""
        stats = predictor.validity_stats
        return cls(
            predictor.model,
            layer_names,
            predictor.meta.logits_layer,
            stats.layer if stats is not None else None,
            predictor.views,
            score or predictor.score_name,
        )

    def __init__(
        self,
        model: keras.Model,
        layer_names: list[str],
        logits_layer: str = LOGITS_LAYER,
        summary_layer: str | None = None,
        views: Sequence[str] = NO_VIEWS,
        score: str = DEFAULT_CAM_SCORE,
    ) -> None:
        """``summary_layer``: also return that layer's validity summary (channel spreads) from the same pass.

        ``views``: the test-time views (:mod:`pneumocam.model.views`); the map then explains their averaged logit, or
        the log of their averaged probability. ``score``: ``logit`` or ``log-probability`` (see
        :data:`pneumocam.options.CAM_SCORES`).
        """
        if not layer_names:
            raise InputError("at least one layer to explain is needed")
        self.layer_names = list(layer_names)
        self.score = check_cam_score(score)
        self.views = check_views(views)
        self.with_summary = summary_layer is not None
        outputs = [model.get_layer(n).output for n in self.layer_names]
        outputs.append(model.get_layer(logits_layer).output)
        if summary_layer is not None:
            outputs.append(validity_summary(model, summary_layer))
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        self._model = keras.Model(inputs, outputs, name="gradcam_probe")
        spec = [
            tf.TensorSpec([None, *model.input_shape[1:]], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
        self._run = tf.function(self._raw_maps, input_signature=spec)

    @staticmethod
    def contributions(activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """(B, h, w, C) activations and gradients -> (B, h, w, C) per-pixel, per-channel evidence."""
        raise NotImplementedError

    def _raw_maps(self, images: tf.Tensor, targets: tf.Tensor):
        n_views = len(self.views)
        with tf.GradientTape() as tape:
            outs = self._model(make_views(images, self.views), training=False)
            summary = outs[-1] if self.with_summary else tf.zeros([tf.shape(images)[0] * n_views, 0])
            *acts, logits = outs[:-1] if self.with_summary else outs
            probabilities = average(tf.nn.softmax(logits), n_views)
            predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            classes = tf.where(targets >= 0, targets, predicted)
            if self.score == LOG_PROBABILITY:
                explained = log_average_probability(logits, n_views)
            else:
                explained = average(logits, n_views)
            score = tf.reduce_sum(tf.gather(explained, classes, axis=1, batch_dims=1))
        grads = tape.gradient(score, acts)
        maps = [
            map_back(tf.nn.relu(tf.reduce_sum(self.contributions(a, g), axis=-1)), self.views)
            for a, g in zip(acts, grads)
        ]
        return probabilities, classes, maps, first_view(summary, n_views)

    def __call__(self, images: np.ndarray, target: int | np.ndarray | None = None) -> CamResult:
        """Explain a batch; ``target`` is a class index (or one per image), default the predicted one."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if target is None:
            t = np.full(len(x), -1, dtype=np.int32)
        else:
            t = np.broadcast_to(np.asarray(target, dtype=np.int32), (len(x),)).copy()
        probs, classes, raw, summary = self._run(tf.constant(x), tf.constant(t))
        raw = [layer.numpy() for layer in raw]
        maps = [np.stack([normalize_map(m) for m in layer]) for layer in raw]
        empty = [np.array([is_empty(m) for m in layer], dtype=bool) for layer in raw]
        summaries = summary.numpy() if self.with_summary else None
        return CamResult(probs.numpy(), classes.numpy(), self.layer_names, maps, empty, summaries)


def _weighted(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Activations scaled by one weight per image and channel."""
    return activations * weights[:, None, None, :]


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: each channel weighted by the spatial mean of its gradient."""

    @staticmethod
    def contributions(activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return _weighted(activations, tf.reduce_mean(grads, axis=(1, 2)))


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhyay et al. 2018: positive gradients weighted by higher-order terms."""

    @staticmethod
    def contributions(activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        g2 = tf.square(grads)
        g3 = g2 * grads
        denom = 2.0 * g2 + tf.reduce_sum(activations, axis=(1, 2), keepdims=True) * g3
        pixel_weight = g2 / tf.where(tf.abs(denom) > 1e-12, denom, tf.ones_like(denom))
        return _weighted(activations, tf.reduce_sum(pixel_weight * tf.nn.relu(grads), axis=(1, 2)))


class HiResCAM(BaseCAM):
    """Draelos and Carin 2020: gradient times activation at each position, no spatial averaging."""

    @staticmethod
    def contributions(activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return activations * grads


class LayerCAM(BaseCAM):
    """Jiang et al. 2021: each position weighted by its own positive gradient."""

    @staticmethod
    def contributions(activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return activations * tf.nn.relu(grads)


METHODS: dict[str, type[BaseCAM]] = dict(zip(CAM_METHODS, (GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM)))
