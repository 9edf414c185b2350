"""Classification metrics in the seed's shape (per class one-vs-rest), via scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score


def classification_metrics(y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Overall accuracy, macro F1, per-class accuracy/precision/recall/F1/AUC/support, confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted, both in
    ``classes`` order. AUC is None for a class absent from ``y_true`` (undefined).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    labels = list(range(len(classes)))
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=int)
    cm = confusion_matrix(y, pred, labels=labels)
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    n = int(len(y))
    per_class = {}
    for k, name in enumerate(classes):
        tp = cm[k, k]
        fp = cm[:, k].sum() - tp
        fn = cm[k, :].sum() - tp
        tn = n - tp - fp - fn
        positives = y == k
        auc = float(roc_auc_score(positives, p[:, k])) if 0 < positives.sum() < n else None
        per_class[name] = {
            "accuracy": float((tp + tn) / n) if n else 0.0,
            "precision": float(prec[k]),
            "recall": float(rec[k]),
            "f1": float(f1[k]),
            "auc": auc,
            "support": int(support[k]),
        }
    calibration = reliability(y, p) if n else {"ece": 0.0, "bins": []}
    return {
        "classes": list(classes),
        "n_images": n,
        "accuracy": float((pred == y).mean()) if n else 0.0,
        "ece": calibration["ece"],
        "calibration_bins": calibration["bins"],
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)) if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def reliability(y_true: Sequence[int], probabilities: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
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
    except KeyError:
        raise ValueError(f"outcome must be one of {', '.join(masks)}") from None


def format_table(metrics: dict[str, Any]) -> str:
    """The seed's table (per-class accuracy, precision, recall, overall) plus F1 and AUC."""
    head = f"{'class':<10}{'accuracy':>10}{'precision':>11}{'recall':>9}{'f1':>8}{'auc':>8}{'support':>9}"
    lines = [head, "-" * len(head)]
    for name, m in metrics["per_class"].items():
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        lines.append(
            f"{name:<10}{m['accuracy']:>10.1%}{m['precision']:>11.1%}{m['recall']:>9.1%}"
            f"{m['f1']:>8.3f}{auc:>8}{m['support']:>9d}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'overall':<10}{metrics['accuracy']:>10.1%}   macro F1 {metrics['macro_f1']:.3f}   n = {metrics['n_images']}"
    )
    return "\n".join(lines)
