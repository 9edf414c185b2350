"""Classification metrics in the seed's shape (per class one-vs-rest), with patient-bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumocam.errors import InputError
from pneumocam.options import ECE_BINS, N_BOOTSTRAP


def classification_metrics(y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Overall accuracy, macro F1, per-class accuracy/precision/recall/F1/AUC/support, confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted, both in
    ``classes`` order. AUC is None for a class absent from ``y_true`` (undefined).
    Counted in NumPy (scikit-learn's definitions, zero where undefined, as the
    bootstrap counts them): training and the site curve call this thousands of times.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    k_all = len(classes)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=int)
    cm = np.bincount(y * k_all + pred, minlength=k_all * k_all).reshape(k_all, k_all)
    n = int(len(y))
    per_class, f1s = {}, []
    for k, name in enumerate(classes):
        tp = int(cm[k, k])
        fp = int(cm[:, k].sum()) - tp
        fn = int(cm[k, :].sum()) - tp
        positives = y == k
        auc = float(weighted_auc(positives, p[:, k], np.ones((1, n)))[0]) if 0 < positives.sum() < n else None
        f1s.append(_share(2 * tp, 2 * tp + fp + fn))
        per_class[name] = {
            "accuracy": _share(n - fp - fn, n),
            "precision": _share(tp, tp + fp),
            "recall": _share(tp, tp + fn),
            "f1": f1s[-1],
            "auc": auc,
            "support": tp + fn,
        }
    calibration = reliability(y, p) if n else {"ece": 0.0, "bins": []}
    return {
        "classes": list(classes),
        "n_images": n,
        "accuracy": _share(int((pred == y).sum()), n),
        "ece": calibration["ece"],
        "calibration_bins": calibration["bins"],
        "macro_f1": float(np.mean(f1s)) if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def _share(part: int, whole: int) -> float:
    """``part / whole``, 0 where ``whole`` is 0 (scikit-learn's ``zero_division=0``)."""
    return float(part / whole) if whole else 0.0


CI_LEVEL = 0.95


def patient_resamples(groups: Sequence[str], n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)``: how often each image is drawn when whole patients are drawn with replacement."""
    _, patient = np.unique(np.asarray(groups), return_inverse=True)
    n_patients = int(patient.max()) + 1 if len(patient) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    per_patient = np.stack([np.bincount(d, minlength=n_patients) for d in draws])  # (B, patients)
    return per_patient[:, patient].astype(float)


def percentile_interval(values: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    """The central ``level`` interval of the finite resampled values (None: undefined in every resample)."""
    v = np.asarray(values)[np.isfinite(values)]
    if not len(v):
        return None
    tail = (1 - level) / 2
    return [float(np.quantile(v, tail)), float(np.quantile(v, 1 - tail))]


def weighted_auc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of ``weights`` (resamples x images) at once; NaN where a row lacks either side.

    The Mann-Whitney form, ties counted half, as ``roc_auc_score(..., sample_weight=row)`` computes it row by
    row: the bootstrap's thousand AUCs per class in one pass instead of a thousand calls.
    """
    _, level = np.unique(score, return_inverse=True)
    n_levels = int(level.max()) + 1 if len(score) else 0
    cell = (np.arange(len(weights))[:, None] * n_levels + level).ravel()  # (resample, distinct score)

    def at_each_score(side: np.ndarray) -> np.ndarray:
        summed = np.bincount(cell, weights=(weights * side).ravel(), minlength=len(weights) * n_levels)
        return summed.reshape(len(weights), n_levels)

    pos, neg = at_each_score(positive), at_each_score(~positive)  # (B, distinct scores): weight at each score
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each score
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(weights), np.nan), where=pairs > 0)


def bootstrap_ci(
    y_true: Sequence[int],
    probabilities: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[str],
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """Percentile bootstrap intervals, resampling patients (``groups``), shaped like the metrics.

    Images of one patient are not independent, so whole patients are drawn with
    replacement. Returns ``{"accuracy": [lo, hi], "macro_f1": [...], "per_class":
    {cls: {"accuracy", "precision", "recall", "f1", "auc"}}, "n_boot", "level", "unit"}``.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    pred = p.argmax(axis=1)
    w = patient_resamples(groups, n_boot, seed)
    total = w.sum(axis=1)

    def interval(values: np.ndarray) -> list[float] | None:
        return percentile_interval(values, level)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.full_like(a, np.nan), where=b > 0)

    per_class, f1s = {}, []
    for k, name in enumerate(classes):
        is_k, said_k = y == k, pred == k
        tp = w @ (is_k & said_k)
        fp = w @ (~is_k & said_k)
        fn = w @ (is_k & ~said_k)
        f1 = ratio(2 * tp, 2 * tp + fp + fn)
        f1s.append(np.nan_to_num(f1))
        aucs = weighted_auc(is_k, p[:, k], w)
        per_class[name] = {
            "accuracy": interval(ratio(total - fp - fn, total)),
            "precision": interval(ratio(tp, tp + fp)),
            "recall": interval(ratio(tp, tp + fn)),
            "f1": interval(f1),
            "auc": interval(aucs),
        }
    return {
        "accuracy": interval(ratio(w @ (pred == y), total)),
        "macro_f1": interval(np.mean(f1s, axis=0)),
        "per_class": per_class,
        "n_boot": n_boot,
        "level": level,
        "unit": "patient",
    }


def reliability(y_true: Sequence[int], probabilities: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-label calibration: per confidence bin, mean confidence vs accuracy; ECE = weighted gap.

    ECE (expected calibration error) = sum over bins of (bin share) x |accuracy - confidence|.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = idx == b
        if not m.any():
            continue
        acc, mean_conf = float(correct[m].mean()), float(conf[m].mean())
        ece += m.mean() * abs(acc - mean_conf)
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(m.sum()),
                "accuracy": acc,
                "confidence": mean_conf,
            }
        )
    return {"ece": float(ece), "bins": bins}


def outcome_mask(y_true: np.ndarray, y_pred: np.ndarray, k: int, outcome: str) -> np.ndarray:
    """One-vs-rest outcome for class index ``k``: TP, FP, FN or TN."""
    t, p = np.asarray(y_true) == k, np.asarray(y_pred) == k
    masks = {"TP": t & p, "FP": ~t & p, "FN": t & ~p, "TN": ~t & ~p}
    try:
        return masks[outcome.upper()]
    except KeyError as exc:
        raise InputError(f"outcome must be one of {', '.join(masks)}") from exc


def with_ci(value: float, ci: Sequence[float] | None) -> str:
    """``83.0 [79.1, 86.4]`` (percent), or just the value when there is no interval."""
    if ci is None:
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_table(metrics: dict[str, Any]) -> str:
    """The seed's table (per-class one-vs-rest accuracy, precision, recall) plus F1, AUC and 95 % intervals."""
    ci = metrics.get("ci95") or {}
    cols = ("accuracy (1-vs-rest)", "precision", "recall")
    head = f"{'class':<10}" + "".join(f"{c:>22}" for c in cols) + f"{'f1':>7}{'auc':>7}{'n':>6}"
    lines = [head, "-" * len(head)]
    for name, m in metrics["per_class"].items():
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        cells = "".join(f"{with_ci(m[c], ci.get('per_class', {}).get(name, {}).get(c)):>22}" for c in cols[1:])
        acc = with_ci(m["accuracy"], ci.get("per_class", {}).get(name, {}).get("accuracy"))
        lines.append(f"{name:<10}{acc:>22}{cells}{m['f1']:>7.3f}{auc:>7}{m['support']:>6d}")
    lines.append("-" * len(head))
    lines.append(
        f"{'overall':<10}{with_ci(metrics['accuracy'], ci.get('accuracy')):>22}   macro F1 {metrics['macro_f1']:.3f}"
        f"   ECE {metrics['ece']:.3f}   n = {metrics['n_images']}"
    )
    if ci:
        lines.append(
            f"[low, high]: {100 * ci['level']:.0f} % bootstrap intervals, {ci['n_boot']} resamples of patients"
        )
    return "\n".join(lines)
