"""Consistency training: one image's copies must get one call (AugMix's Jensen-Shannon term).

Augmented copies alone teach a model that each copy's label is the image's
label; they do not teach it that two copies of one image get the *same*
probabilities, and the published model changed 8.5 % of its validation calls
under a JPEG re-encoding. Hendrycks et al. 2020 (AugMix) add the
Jensen-Shannon divergence between the predictions of the clean image and two
augmented copies to the cross-entropy. Here the copies come from the activation
cache of :mod:`pneumocam.training.activations`: each step takes, for every image of the batch,
the clean copy and two other cached copies drawn at random.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

#: Copies per image in one step: the clean one and two drawn from the cached augmented copies.
STEP_COPIES = 3
_EPS = 1e-7


def consistency_loss(weight: float, label_smoothing: float, n_classes: int) -> Callable:
    """Cross-entropy of every copy plus ``weight`` times the Jensen-Shannon divergence among the copies.

    ``y_true``: (batch, classes) one-hot; ``y_pred``: (batch, copies, classes) probabilities.
    Returns one value per image, so class weights apply as sample weights.
    """

    def loss(y_true, y_pred):
        y = y_true * (1.0 - label_smoothing) + label_smoothing / n_classes
        p = ops.clip(y_pred, _EPS, 1.0)
        log_p = ops.log(p)
        ce = -ops.mean(ops.sum(y[:, None, :] * log_p, axis=-1), axis=1)
        mixture = ops.clip(ops.mean(p, axis=1, keepdims=True), _EPS, 1.0)
        js = ops.mean(ops.sum(p * (log_p - ops.log(mixture)), axis=-1), axis=1)
        return ce + weight * js

    return loss


def clean_accuracy(y_true, y_pred):
    """Accuracy of the first copy (the clean image), reported as ``accuracy`` like the plain stage's."""
    return ops.cast(ops.equal(ops.argmax(y_true, axis=-1), ops.argmax(y_pred[:, 0], axis=-1)), "float32")


clean_accuracy.__name__ = "accuracy"


class PerCopy(keras.Model):
    """``net`` applied to each of several copies per image: (batch, copies, ...) -> (batch, copies, classes).

    The layers are ``net``'s own, so training this trains ``net``.
    """

    def __init__(self, net: keras.Model, **kwargs: object) -> None:
        super().__init__(name=f"{net.name}_copies", **kwargs)
        self.net = net

    def call(self, x, training=None):
        shape = ops.shape(x)
        out = self.net(ops.reshape(x, (-1, *x.shape[2:])), training=training)
        return ops.reshape(out, (shape[0], shape[1], -1))


class CopyBatches(keras.utils.PyDataset):
    """Batches of ``(copies, one-hot labels, class weights)``: each image's clean copy and random others.

    ``activations`` has shape ``(copies, n, ...)`` with copy 0 clean; the draws are
    seeded and new in every epoch. An epoch passes over the images about
    ``copies / 3`` times, so it reads as many copies as an epoch of the plain stage
    and the two stages' epoch counts and patience mean the same.
    """

    def __init__(
        self,
        activations: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        batch_size: int,
        weights: dict[int, float] | None,
        seed: int,
    ) -> None:
        super().__init__()
        if activations.shape[0] < STEP_COPIES:
            raise ValueError(f"consistency training needs at least {STEP_COPIES} cached copies per image")
        self.acts, self.y, self.batch_size = activations, y, batch_size
        self.onehot = np.eye(n_classes, dtype=np.float32)[y]
        table = np.array([(weights or {}).get(k, 1.0) for k in range(n_classes)], np.float32)
        self.sample_weight = table[y]
        self.rng = np.random.default_rng(seed)
        # An epoch reads about as many cached copies as the plain stage's (all of them, once).
        self.passes = max(1, round(activations.shape[0] / STEP_COPIES))
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        """New draws: ``passes`` shuffled passes over the images, each with the clean copy and others at random."""
        n, copies = len(self.y), self.acts.shape[0]
        self.order = np.concatenate([self.rng.permutation(n) for _ in range(self.passes)])
        others = np.argsort(self.rng.random((len(self.order), copies - 1)), axis=1)[:, : STEP_COPIES - 1] + 1
        self.picks = np.concatenate([np.zeros((len(self.order), 1), int), others], axis=1)

    def __len__(self) -> int:
        return int(np.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        idx = self.order[part]
        x = self.acts[self.picks[part], idx[:, None]].astype(np.float32)
        return x, self.onehot[idx], self.sample_weight[idx]
