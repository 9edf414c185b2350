"""How sure the answers are, measured on a labelled folder: prediction sets' coverage and answers ranked by confidence.

Two figures a hospital asks before trusting the percentages:

* **coverage and set size**: how often the prediction set holds the true class and how many classes it holds,
  overall and per true class, with patient-bootstrap intervals like the other metrics;
* **risk-coverage**: the accuracy of the k % most confident answers (the model abstains on the rest), and the
  area under that curve (Geifman & El-Yaniv 2017): what answering only when sure would buy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumocam.options import N_BOOTSTRAP, RISK_COVERAGE_SHARES
from pneumocam.scoring.metrics import patient_resamples, percentile_interval


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.full_like(a, np.nan, dtype=float), where=b > 0)


def set_metrics(
    member: np.ndarray,
    y_true: Sequence[int],
    classes: Sequence[str],
    groups: Sequence[str],
    level: float,
    n_boot: int = N_BOOTSTRAP,
) -> dict[str, Any]:
    """Coverage, mean set size, the share of single-class sets and their accuracy; per true class too."""
    keep = np.asarray(member, bool)
    y = np.asarray(y_true, int)
    n = len(y)
    covered = keep[np.arange(n), y] if n else np.zeros(0, bool)
    size = keep.sum(1).astype(float)
    single = size == 1
    w = patient_resamples(groups, n_boot)

    def figures(mask: np.ndarray) -> dict[str, Any]:
        if not mask.any():
            return {"n_images": 0}
        weights = w * mask
        total = weights.sum(1)
        return {
            "n_images": int(mask.sum()),
            "coverage": float(covered[mask].mean()),
            "coverage_ci95": percentile_interval(_ratio(weights @ covered, total)),
            "mean_size": float(size[mask].mean()),
            "mean_size_ci95": percentile_interval(_ratio(weights @ size, total)),
        }

    out = {"level": level, **figures(np.ones(n, bool))}
    out["single_share"] = float(single.mean()) if n else 0.0
    out["single_accuracy"] = float(covered[single].mean()) if single.any() else None
    out["size_counts"] = {str(s): int((size == s).sum()) for s in range(1, len(classes) + 1)}
    out["per_class"] = {c: figures(y == k) for k, c in enumerate(classes)}
    return out


def risk_coverage(
    probabilities: np.ndarray,
    y_true: Sequence[int],
    shares: Sequence[float] = RISK_COVERAGE_SHARES,
) -> dict[str, Any]:
    """Accuracy of the most confident answers at each share kept, the whole curve and its area.

    Confidence is the call's own probability; ties keep the file order, so the curve is reproducible.
    """
    p = np.asarray(probabilities, float)
    y = np.asarray(y_true, int)
    n = len(y)
    if not n:
        return {"points": [], "curve": [], "area": None}
    order = np.argsort(-p.max(1), kind="stable")
    correct = (p.argmax(1) == y)[order]
    running = np.cumsum(correct) / np.arange(1, n + 1)  # accuracy of the first i+1 answers
    points = []
    for share in shares:
        k = max(1, int(round(share * n)))
        points.append({"share": float(share), "n_answered": k, "accuracy": float(running[k - 1])})
    curve_at = np.unique(np.linspace(1, n, min(n, 101)).round().astype(int))
    return {
        "points": points,
        "curve": [[float(k / n), float(running[k - 1])] for k in curve_at],
        "area": float(running.mean()),
        "confidence": "the call's probability",
    }


def format_sets(block: dict[str, Any]) -> str:
    """One line per figure for the printed summary."""
    if not block.get("n_images"):
        return "prediction sets: no image"

    def ci(v: list[float] | None, pct: bool = True) -> str:
        if v is None:
            return ""
        return f" [{100 * v[0]:.1f}, {100 * v[1]:.1f}]" if pct else f" [{v[0]:.2f}, {v[1]:.2f}]"

    line = (
        f"{block['level']:.0%} prediction sets ({block.get('fitted_on', 'the model')}): coverage "
        f"{block['coverage']:.1%}{ci(block['coverage_ci95'])}, mean size {block['mean_size']:.2f}"
        f"{ci(block['mean_size_ci95'], False)}, one class in {block['single_share']:.0%}"
    )
    if block.get("single_accuracy") is not None:
        line += f" (right {block['single_accuracy']:.1%})"
    per = ", ".join(
        f"{c} {b['coverage']:.1%}/{b['mean_size']:.2f}" for c, b in block["per_class"].items() if b["n_images"]
    )
    return f"{line}\n  per true class, coverage/size: {per}"


def format_risk_coverage(block: dict[str, Any]) -> str:
    if not block.get("points"):
        return "risk-coverage: no image"
    cells = ", ".join(f"{p['share']:.0%} {p['accuracy']:.1%}" for p in block["points"])
    return f"accuracy of the most confident answers: {cells} (area {block['area']:.3f})"
