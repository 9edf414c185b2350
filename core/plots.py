"""The evaluation and training figures (matplotlib, no display); gallery pages: explain.pages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix_figure(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> Figure:
    """Counts and row percentages (recall per true class), rows true, columns predicted."""
    m = np.asarray(cm, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    pct = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if pct[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(m[i, j])}\n{pct[i, j]:.1%}", ha="center", va="center", color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ax.set_title(title or "Confusion matrix")
    fig.tight_layout()
    return fig


def per_class_figure(metrics: dict[str, Any], title: str = "") -> Figure:
    """Grouped bars of accuracy, precision, recall and F1 per class."""
    names = ("accuracy", "precision", "recall", "f1")
    classes = list(metrics["per_class"])
    x = np.arange(len(classes))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, key in enumerate(names):
        vals = [metrics["per_class"][c][key] for c in classes]
        label = "accuracy (one-vs-rest)" if key == "accuracy" else key
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    ax.set_title(title or f"Per-class metrics (overall accuracy {metrics['accuracy']:.1%})")
    fig.tight_layout()
    return fig


def reliability_figure(metrics: dict[str, Any], title: str = "") -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, with bin counts."""
    bins = metrics["calibration_bins"]
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.8, 5.2), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    ax.bar(centers, [b["accuracy"] for b in bins], widths, alpha=0.6, edgecolor="black", label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C3", label="observed")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or f"Reliability (ECE {metrics['ece']:.3f})")
    ax_n.bar(centers, [b["count"] for b in bins], widths, edgecolor="black", color="C0")
    ax_n.set_xlabel("confidence of the predicted class")
    ax_n.set_ylabel("images")
    fig.tight_layout()
    return fig


def risk_coverage_figure(metrics: dict[str, Any], title: str = "") -> Figure:
    """Accuracy of the most confident answers against the share answered, the reported shares marked."""
    block = metrics["risk_coverage"]
    fig, ax = plt.subplots(figsize=(5.2, 4))
    if block["curve"]:
        share, acc = np.asarray(block["curve"]).T
        ax.plot(100 * share, 100 * acc, "-", color="C0", label=f"most confident first (area {block['area']:.3f})")
        for p in block["points"]:
            ax.plot(100 * p["share"], 100 * p["accuracy"], "o", color="C3")
            ax.annotate(
                f"{p['accuracy']:.1%}",
                (100 * p["share"], 100 * p["accuracy"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
        ax.axhline(100 * metrics["accuracy"], ls="--", color="grey", label="answering every image")
    ax.set_xlabel("share of images answered (%)")
    ax.set_ylabel("accuracy of those answers (%)")
    ax.set_xlim(0, 102)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or "Risk-coverage: answering only when most sure")
    fig.tight_layout()
    return fig


def training_curves_figure(history: dict[str, dict[str, list[float]]]) -> Figure:
    """One row per training stage: train vs validation for each metric every stage recorded."""
    stages = list(history)
    keys = [
        k
        for k in history[stages[0]]
        if not k.startswith("val_") and all(f"val_{k}" in h and k in h for h in history.values())
    ]
    fig, axes = plt.subplots(len(stages), len(keys), figsize=(3.4 * len(keys), 2.9 * len(stages)), squeeze=False)
    for row, stage in zip(axes, stages):
        h = history[stage]
        for ax, key in zip(row, keys):
            epochs = range(1, len(h[key]) + 1)
            ax.plot(epochs, h[key], label="train")
            ax.plot(epochs, h[f"val_{key}"], label="validation")
            ax.set_title(f"{stage}: {key}", fontsize=9)
            ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def stress_figure(shift: dict[str, Any], title: str = "") -> Figure:
    """Rows: clean then each perturbation; columns: accuracy and recall per class, shaded 0..1."""
    rows = shift["perturbations"]
    names = list(rows)
    classes = list(next(iter(rows.values()))["recall"])
    cols = ["accuracy", *[f"recall {c}" for c in classes]]
    m = np.array([[rows[n]["accuracy"], *[rows[n]["recall"][c] for c in classes]] for n in names])
    fig, ax = plt.subplots(figsize=(1.5 * len(cols) + 2, 0.42 * len(names) + 1.4))
    im = ax.imshow(m, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    labels = [f"{n}  ({rows[n]['changed']:.1%} calls changed)" if rows[n].get("changed") else n for n in names]
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    for i in range(len(names)):
        for j in range(len(cols)):
            ax.text(j, i, f"{m[i, j]:.1%}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or f"Under perturbation: mean accuracy {shift['mean_accuracy']:.1%}", fontsize=10)
    fig.tight_layout()
    return fig


def site_curve_figure(result: dict[str, Any], title: str = "") -> Figure:
    """Accuracy against the number of labelled site images, calibration and tuning, with the references."""
    colours = {"calibrate": "tab:blue", "tune": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for method, colour in colours.items():
        pts = sorted((p for p in result["points"] if p["method"] == method), key=lambda p: p["n_labelled"])
        if not pts:
            continue
        x = [p["n_labelled"] for p in pts]
        lo, hi = zip(*[p["ci95"] or (p["accuracy"], p["accuracy"]) for p in pts])
        ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
        ax.plot(x, [p["accuracy"] for p in pts], "o-", color=colour, label=f"{method} (95 % interval)")
    ref = result["reference"]
    ax.axhline(ref["untouched"], color="0.3", linestyle="--", label=f"untouched {ref['untouched']:.1%}")
    if ref.get("adapted") is not None:
        ax.axhline(ref["adapted"], color="tab:green", linestyle=":", label=f"adapted, no labels {ref['adapted']:.1%}")
    ax.set_xscale("log")
    ticks = sorted({round(p["n_labelled"]) for p in result["points"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("labelled site images per fit (log scale; the last point: the whole labelled half)")
    ax.set_ylabel("accuracy on the other half")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "How many labelled X-rays a site needs")
    fig.tight_layout()
    return fig
