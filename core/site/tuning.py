"""Labelled site tuning: the classifier head re-fitted on a few hundred of a site's own X-rays.

A site that labels some of its images can do more than recalibrate: a new
linear read-out of the pooled features (1,280 values per image) learns what
tells the classes apart in *its* images. With few labels a freshly fitted head
is worse than the trained one, so the trained logits stay in as an offset:

    logits' = a * log p + standardise(features) @ W + b

(``p``: the model's own probabilities, so ``log p`` is its logits up to a
constant per image). The penalty on ``W`` is chosen by a patient-grouped,
class-stratified inner cross-validation (log loss) on the labelled sample
alone, among a grid of strengths and two fall-backs: ``W = 0`` (exactly
:mod:`pneumocam.site.calibration`: a temperature and class biases) and the model
untouched. So a small sample falls back to calibration or to nothing, and a
large one re-fits the head.

The fitted read-out is folded into the Keras model as one dense ``logits``
layer on the concatenation of the old logits' input and the pooled features:
every entry point serves a tuned model like any other, and Grad-CAM explains
its tuned logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedGroupKFold

from pneumocam.errors import DataError
from pneumocam.options import TUNE_INNER_FOLDS, TUNE_MIN_PER_CLASS, TUNE_PENALTIES
from pneumocam.site import calibration

if TYPE_CHECKING:
    import keras

_EPS = 1e-12
_BIAS_PENALTY = 1e-4  # as in calibration: biases are defined up to a constant
_MIN_SPREAD = 1e-6
UNTOUCHED = "untouched"
CALIBRATE = "calibrate"
TUNE = "tune"
TUNED_INPUT_LAYER = "tuned_head_input"


@dataclass(frozen=True)
class HeadTuning:
    """``softmax(scale * log p + ((features - mean) / spread) @ weights + biases)``."""

    kind: str  # UNTOUCHED, CALIBRATE or TUNE
    penalty: float | None  # the L2 strength on ``weights`` (TUNE only)
    scale: float
    biases: np.ndarray  # (k,)
    weights: np.ndarray  # (d, k); zero unless TUNE
    mean: np.ndarray  # (d,)
    spread: np.ndarray  # (d,)

    def apply(self, probabilities: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Tuned probabilities from the model's own and its pooled features."""
        z = self.logits(probabilities, features)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def logits(self, probabilities: np.ndarray, features: np.ndarray) -> np.ndarray:
        z = self.scale * _log_probs(probabilities) + self.biases
        if self.kind == TUNE:
            z = z + _standardise(features, self.mean, self.spread) @ self.weights
        return z

    def summary(self) -> dict[str, Any]:
        """What model.json records: the choice and its parameters' size, not the 1,280 x k weights."""
        return {
            "kind": self.kind,
            "penalty": self.penalty,
            "temperature": 1.0 / self.scale,
            "biases": [float(b) for b in self.biases],
            "weights_norm": float(np.linalg.norm(self.weights)),
        }


@dataclass
class TuneFit:
    """A fitted tuning and the inner cross-validation that chose it (mean log loss per candidate)."""

    tuning: HeadTuning
    inner_log_loss: dict[str, float]
    inner_folds: int
    counts: list[int] = field(default_factory=list)
    #: The sample's probabilities from the inner folds' fits of the chosen kind, each image by a fit that did not
    #: see it: what a prediction-set threshold is fitted on (the in-sample ones of a re-fitted head are too sure).
    out_of_fold: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.tuning.summary(),
            "inner_cv": {
                "folds": self.inner_folds,
                "method": "StratifiedGroupKFold by class, grouped by patient; mean log loss",
                "log_loss": self.inner_log_loss,
            },
        }


def _log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0))


def _standardise(f: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> np.ndarray:
    return (np.asarray(f, dtype=np.float64) - mean) / spread


def candidate_name(kind: str, penalty: float | None = None) -> str:
    return f"{TUNE} {penalty:g}" if kind == TUNE else kind


@dataclass(frozen=True)
class _Design:
    """A labelled sample as the fits read it: log-probabilities, and the standardised features in the coordinates
    of the rows' span. The penalised read-out's optimum lies in that span (its gradient does), so fitting ``r``
    coordinates per class instead of ``d`` weights gives the same fit with fewer parameters when ``n < d``."""

    probabilities: np.ndarray
    logp: np.ndarray
    x: np.ndarray  # (n, r): the standardised features in ``basis`` coordinates
    basis: np.ndarray  # (d, r), orthonormal columns spanning the rows (the identity when n >= d)
    mean: np.ndarray
    spread: np.ndarray


def _design(probabilities: np.ndarray, features: np.ndarray) -> _Design:
    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    spread = np.maximum(features.std(axis=0), _MIN_SPREAD)
    x = _standardise(features, mean, spread)
    n, d = x.shape
    basis = np.linalg.qr(x.T)[0] if n < d else np.eye(d)
    return _Design(np.asarray(probabilities), _log_probs(probabilities), x @ basis, basis, mean, spread)


def _fit_one(
    sample: _Design,
    y: np.ndarray,
    k: int,
    kind: str,
    penalty: float | None = None,
    start: np.ndarray | None = None,
) -> tuple[HeadTuning, np.ndarray | None]:
    """One candidate fitted by maximum likelihood (L-BFGS); returns it and its parameters (a warm start)."""
    mean, spread = sample.mean, sample.spread
    zeros = np.zeros((len(mean), k))
    if kind == UNTOUCHED:
        return HeadTuning(UNTOUCHED, None, 1.0, np.zeros(k), zeros, mean, spread), None
    if kind == CALIBRATE:
        cal = calibration.fit(sample.probabilities, y, k)
        return HeadTuning(CALIBRATE, None, 1.0 / cal.temperature, np.asarray(cal.biases), zeros, mean, spread), None
    logp, x = sample.logp, sample.x
    onehot = np.eye(k)[y]
    n, r = x.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s, w, b = np.exp(theta[0]), theta[1 : 1 + r * k].reshape(r, k), theta[1 + r * k :]
        z = s * logp + x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        nll = -np.sum(onehot * np.log(np.clip(p, _EPS, 1.0))) / n
        value = nll + 0.5 * penalty * np.sum(w * w) + _BIAS_PENALTY * np.sum(b * b)
        resid = (p - onehot) / n
        grad = np.concatenate(
            [[np.sum(resid * logp) * s], (x.T @ resid + penalty * w).ravel(), resid.sum(axis=0) + 2 * _BIAS_PENALTY * b]
        )
        return float(value), grad

    theta0 = np.zeros(1 + r * k + k) if start is None else start
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    s, w, b = float(np.exp(res.x[0])), res.x[1 : 1 + r * k].reshape(r, k), res.x[1 + r * k :]
    return HeadTuning(TUNE, float(penalty), s, b, sample.basis @ w, mean, spread), res.x


def _mean_log_loss(t: HeadTuning, probabilities: np.ndarray, features: np.ndarray, y: np.ndarray) -> float:
    p = t.apply(probabilities, features)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


def check_counts(counts: Sequence[int], classes: Sequence[str], where: str = "the labelled sample") -> None:
    """Refuse a sample that lacks a class or has too few images of one (one line, which class)."""
    for c, n in zip(classes, counts):
        if n == 0:
            raise DataError(f"{where} has no {c} images; tuning needs every class")
        if n < TUNE_MIN_PER_CLASS:
            raise DataError(f"{where} has {n} {c} image(s); tuning needs at least {TUNE_MIN_PER_CLASS} of each class")


def fit(
    probabilities: np.ndarray,
    features: np.ndarray,
    y_true: Sequence[int],
    groups: Sequence[str],
    n_classes: int,
    penalties: Sequence[float] = TUNE_PENALTIES,
    inner_folds: int = TUNE_INNER_FOLDS,
    seed: int = 0,
) -> TuneFit:
    """Choose among untouched, calibration and the penalised re-fits by inner CV on this sample; fit the winner."""
    y = np.asarray(y_true, dtype=int)
    p, f = np.asarray(probabilities), np.asarray(features)
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() == 0:
        raise DataError("the labelled sample lacks a class; tuning needs every class")
    k_inner = int(min(inner_folds, counts.min(), len(set(groups))))
    if k_inner < 2:
        raise DataError("the labelled sample is too small to choose the tuning: each class needs 2 patients or more")
    splits = list(StratifiedGroupKFold(k_inner, shuffle=True, random_state=seed).split(f, y, groups))
    candidates = [(UNTOUCHED, None), (CALIBRATE, None), *[(TUNE, lam) for lam in sorted(penalties, reverse=True)]]
    losses = {candidate_name(*c): 0.0 for c in candidates}
    held_out = {candidate_name(*c): np.zeros(p.shape, np.float32) for c in candidates}
    for train, held in splits:
        start, sample = None, _design(p[train], f[train])
        for kind, lam in candidates:
            t, start_next = _fit_one(sample, y[train], n_classes, kind, lam, start)
            start = start_next if start_next is not None else start
            losses[candidate_name(kind, lam)] += _mean_log_loss(t, p[held], f[held], y[held]) * len(held) / len(y)
            held_out[candidate_name(kind, lam)][held] = t.apply(p[held], f[held])
    best = min(candidates, key=lambda c: losses[candidate_name(*c)])
    tuning, _ = _fit_one(_design(p, f), y, n_classes, *best)
    return TuneFit(tuning, losses, k_inner, counts.tolist(), held_out[candidate_name(*best)])


@dataclass
class CrossTune:
    """Out-of-fold tuned probabilities, the fold of each image and each fold's fit."""

    probabilities: np.ndarray
    fold: np.ndarray
    fits: list[TuneFit]


def cross_fit(
    probabilities: np.ndarray,
    features: np.ndarray,
    y_true: Sequence[int],
    groups: Sequence[str],
    fold: np.ndarray,
    train_mask: np.ndarray | None = None,
) -> CrossTune:
    """Score each fold with a tuning fitted on the other folds only (their images where ``train_mask`` is set)."""
    y = np.asarray(y_true, dtype=int)
    p, f, g = np.asarray(probabilities), np.asarray(features), np.asarray(groups)
    use = np.ones(len(y), bool) if train_mask is None else np.asarray(train_mask, bool)
    out = np.zeros_like(p, dtype=np.float32)
    fits = []
    for k in range(int(fold.max()) + 1):
        held = fold == k
        train = ~held & use
        fitted = fit(p[train], f[train], y[train], g[train], p.shape[1])
        out[held] = fitted.tuning.apply(p[held], f[held])
        fits.append(fitted)
    return CrossTune(out, fold, fits)


def tuned_model(model: keras.Model, logits_layer: str, features_layer: str, tuning: HeadTuning) -> keras.Model:
    """The model with its logits replaced by the tuned ones, folded into one dense layer (same layer names).

    ``scale * logits + standardise(f) @ W + b`` is linear in ``[logits input, f]``:
    kernel ``[[scale * K], [W / spread]]``, bias ``scale * c + b - (mean / spread) @ W``.
    """
    import keras
    from keras import layers

    old = model.get_layer(logits_layer)
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in old.get_weights())
    w_f = tuning.weights / tuning.spread[:, None]
    new_kernel = np.concatenate([tuning.scale * kernel, w_f], axis=0)
    new_bias = tuning.scale * bias + tuning.biases - (tuning.mean / tuning.spread) @ tuning.weights
    head_input = layers.Concatenate(name=TUNED_INPUT_LAYER)([old.input, model.get_layer(features_layer).output])
    dense = layers.Dense(kernel.shape[1], name=logits_layer)
    logits = dense(head_input)
    out_layer = model.layers[-1]
    probs = layers.Activation("softmax", name=out_layer.name)(logits)
    tuned = keras.Model(model.inputs[0], probs, name=model.name)
    dense.set_weights([new_kernel.astype(np.float32), new_bias.astype(np.float32)])
    return tuned
