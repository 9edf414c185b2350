"""Labelled site calibration: a temperature and one logit bias per class, fitted on a site's sample.

A site's case mix and image appearance move the model's scores; a small
labelled sample from the site can correct their scale (temperature) and the
class priors (biases), nothing else, so a few hundred images are enough and
the ranking the model learnt is kept. The fit minimises the negative
log-likelihood; the correction is folded into the logits layer, so a
calibrated model is an ordinary model and Grad-CAM explains its calibrated
logits.

For a benchmark on one labelled folder, :func:`cross_fit` splits it into K
folds (stratified by class, grouped by patient, fixed seed) and scores every
image with a calibration fitted on the other folds only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedGroupKFold

from pneumocam.errors import DataError, InputError
from pneumocam.options import DEFAULT_SPLIT_SEED

_EPS = 1e-12
_BIAS_PENALTY = 1e-4  # biases are defined up to a constant; this picks the zero-mean one


@dataclass(frozen=True)
class Calibration:
    """softmax(logits / temperature + biases)."""

    temperature: float
    biases: tuple[float, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["biases"] = list(self.biases)
        return d


def _log_probs(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0))


def apply(probabilities: np.ndarray, cal: Calibration) -> np.ndarray:
    """Calibrated probabilities from uncalibrated ones (log-probabilities are logits up to a constant)."""
    z = _log_probs(probabilities) / cal.temperature + np.asarray(cal.biases)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def fit(probabilities: np.ndarray, y_true: Sequence[int], n_classes: int | None = None) -> Calibration:
    """Temperature and biases that minimise the negative log-likelihood of ``y_true``."""
    logp = _log_probs(probabilities)
    y = np.asarray(y_true, dtype=int)
    k = n_classes or logp.shape[1]
    missing = sorted(set(range(k)) - set(y.tolist()))
    if missing:
        raise DataError(f"the labelled sample has no image of class index {missing[0]}; every class is needed")
    onehot = np.eye(k)[y]
    n = len(y)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t, b = np.exp(-theta[0]), theta[1:]
        z = logp * inv_t + b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        nll = -np.sum(onehot * np.log(np.clip(p, _EPS, 1.0))) / n + _BIAS_PENALTY * np.sum(b * b)
        resid = (p - onehot) / n
        grad_b = resid.sum(axis=0) + 2 * _BIAS_PENALTY * b
        grad_t = -np.sum(resid * logp) * inv_t
        return float(nll), np.concatenate([[grad_t], grad_b])

    res = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B")
    return Calibration(float(np.exp(res.x[0])), tuple(float(v) for v in res.x[1:]))


def fit_temperature(probabilities: np.ndarray, y_true: Sequence[int]) -> float:
    """The one temperature that minimises the negative log-likelihood (no biases: the ranking and priors stay)."""
    from scipy.optimize import minimize_scalar

    logp = _log_probs(probabilities)
    y = np.asarray(y_true, dtype=int)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        z = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-z[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def folds(labels: Sequence[str], groups: Sequence[str], k: int, seed: int = DEFAULT_SPLIT_SEED) -> np.ndarray:
    """Fold index per image: stratified by class, no patient in two folds."""
    if k < 2:
        raise InputError("cross-fitting needs at least 2 folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(labels), -1, dtype=int)
    for i, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold[held_out] = i
    return fold


@dataclass
class CrossFit:
    """Out-of-fold calibrated probabilities, the fold of each image and each fold's calibration."""

    probabilities: np.ndarray
    fold: np.ndarray
    calibrations: list[Calibration]


def cross_fit(probabilities: np.ndarray, y_true: Sequence[int], fold: np.ndarray) -> CrossFit:
    """Score each fold with a calibration fitted on all the other folds (cross-fitting)."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probabilities)
    out = np.zeros_like(p, dtype=np.float32)
    cals = []
    for f in range(int(fold.max()) + 1):
        held = fold == f
        cal = fit(p[~held], y[~held], p.shape[1])
        out[held] = apply(p[held], cal)
        cals.append(cal)
    return CrossFit(out, fold, cals)


def fold_into_logits(kernel: np.ndarray, bias: np.ndarray, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """Dense logits weights that output ``logits / T + b`` (what a calibrated model stores)."""
    return kernel / cal.temperature, bias / cal.temperature + np.asarray(cal.biases, dtype=bias.dtype)
