"""How many labelled X-rays a site needs: cross-fitted calibration and tuning against the sample size.

One labelled folder is halved R times (by class, grouped by patient, seeds
0..R-1, the split of ``evaluate --cross-calibrate 2``). For each halving and
each size, a class-stratified sample of that many images is drawn from one
half, calibration and tuning are fitted on it, and the other half is scored;
then the halves swap. Every image is thus scored once per halving by a fit
that never saw it. One forward pass per image serves every size and repeat.

The figures per method and size are means over the halvings; the 95 %
interval resamples patients and recomputes that mean (so it reflects how many
patients the folder holds, with the spread between halvings averaged in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pneumocam.errors import DataError, ModelLoadError, none_readable
from pneumocam.images.data import Scan, check_labels, class_indices, labels_of, patient_id, relative_name
from pneumocam.model import conformal
from pneumocam.options import (
    DEFAULT_BATCH_SIZE,
    SITE_CURVE_REPEATS,
    SITE_CURVE_SIZES,
    TUNE_MIN_PER_CLASS,
)
from pneumocam.scoring.metrics import classification_metrics, patient_resamples, percentile_interval, with_ci
from pneumocam.scoring.predictor import Predictor
from pneumocam.site import calibration, tuning
from pneumocam.site.adaptation import check_adaptable
from pneumocam.site.protocols import Protocol, Scored

SITE_CURVE_FILE = "site_curve.json"
SITE_CURVE_PLOT = "site_curve.png"
SITE_CURVE_FILES = (SITE_CURVE_FILE, SITE_CURVE_PLOT)
METHODS = (tuning.CALIBRATE, tuning.TUNE)
FULL = "half"


def stratified_sample(y: np.ndarray, pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices from ``pool``, each class in its share of the pool (at least the minimum tuning takes)."""
    if size >= len(pool):
        return pool
    picked = []
    for c in np.unique(y[pool]):
        members = pool[y[pool] == c]
        n = max(TUNE_MIN_PER_CLASS, round(size * len(members) / len(pool)))
        picked.append(rng.choice(members, min(n, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def _fit_and_score(
    method: str, p: np.ndarray, f: np.ndarray, y: np.ndarray, g: np.ndarray, train: np.ndarray, held: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out images' probabilities after a fit on ``train``, and the fitted images' own, for the sets: in
    sample for calibration (four parameters), from the inner folds for tuning (a re-fitted head is too sure).
    """
    k = p.shape[1]
    if method == tuning.CALIBRATE:
        cal = calibration.fit(p[train], y[train], k)
        return calibration.apply(p[held], cal), calibration.apply(p[train], cal)
    fitted = tuning.fit(p[train], f[train], y[train], g[train], k)
    return fitted.tuning.apply(p[held], f[held]), fitted.out_of_fold


def curve(
    probabilities: np.ndarray,
    features: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    classes: Sequence[str],
    sizes: Sequence[int] = SITE_CURVE_SIZES,
    repeats: int = SITE_CURVE_REPEATS,
    on_fit: Callable[[int], None] | None = None,
    sets: conformal.PredictionSets | None = None,
) -> list[dict[str, Any]]:
    """The curve's points from one forward pass's outputs: ``{method, size, accuracy, ci95, macro_f1, recall}``.

    ``size`` is the number of labelled images per fit; the last point per method
    is the whole labelled half (``"whole_half": true``, ``size`` its mean size rounded). With ``sets`` (the
    model's rule), each fit's sample also refits the set threshold, and each point gets the held-out images'
    ``coverage`` and ``mean_set_size``.
    """
    y = np.asarray(y, dtype=int)
    g = np.asarray(groups)
    labels = [classes[i] for i in y]
    steps = [*sorted(set(sizes)), FULL]
    oof = {(m, s): np.zeros((repeats, *probabilities.shape), np.float32) for m in METHODS for s in steps}
    kept = {key: np.zeros(v.shape, bool) for key, v in oof.items()}
    n_labelled = {s: [] for s in steps}
    for r in range(repeats):
        fold = calibration.folds(labels, g, 2, seed=r)
        rng = np.random.default_rng(r)
        for k in (0, 1):
            held, pool = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
            for s in steps:
                train = pool if s == FULL else stratified_sample(y, pool, s, rng)
                n_labelled[s].append(len(train))
                for m in METHODS:
                    after, fitted = _fit_and_score(m, probabilities, features, y, g, train, held)
                    oof[(m, s)][r, held] = after
                    if sets is not None:
                        rule = conformal.fit(fitted, y[train], sets.method, sets.level)
                        kept[(m, s)][r, held] = rule.member(after)
                if on_fit:
                    on_fit(1)
    w = patient_resamples(g)
    points = []
    for (m, s), p in oof.items():
        per_repeat = [classification_metrics(y, p[r], classes) for r in range(repeats)]
        correct = (p.argmax(axis=2) == y).mean(axis=0)  # per image, over the halvings
        points.append(
            {
                "method": m,
                "size": round(float(np.mean(n_labelled[s]))) if s == FULL else s,
                "whole_half": s == FULL,
                "n_labelled": float(np.mean(n_labelled[s])),
                "accuracy": float(np.mean([q["accuracy"] for q in per_repeat])),
                "ci95": percentile_interval(w @ correct / w.sum(axis=1)),
                "accuracy_per_repeat": [q["accuracy"] for q in per_repeat],
                "macro_f1": float(np.mean([q["macro_f1"] for q in per_repeat])),
                "recall": {c: float(np.mean([q["per_class"][c]["recall"] for q in per_repeat])) for c in classes},
            }
        )
        if sets is not None:
            member = kept[(m, s)]
            points[-1]["coverage"] = float(member[:, np.arange(len(y)), y].mean())
            points[-1]["mean_set_size"] = float(member.sum(axis=2).mean())
    return points


@dataclass
class SiteScores:
    """One forward pass over a labelled site folder: what every size and repeat of the curve reuses."""

    probabilities: np.ndarray
    features: np.ndarray
    y: np.ndarray
    groups: list[str]
    classes: list[str]
    sets: conformal.PredictionSets | None
    untouched: float
    adapted: float | None
    header: dict[str, Any]


def site_scores(untouched: Scored, adapted: Scored | None, scan: Scan) -> SiteScores:
    """What the curve reuses from a folder scored as trained (features kept) and, optionally, adapted to it."""
    scores, classes = untouched.scores, list(untouched.predictor.meta.classes)
    if not scores.paths:
        raise none_readable(len(scan.samples), scan.root, scores.skipped)
    y = class_indices(labels_of(scan.samples, scores.paths), classes)
    counts = np.bincount(y, minlength=len(classes))
    tuning.check_counts(counts // 2, classes, f"half of {scan.root}")
    reference = None
    if adapted is not None:
        y_adapted = class_indices(labels_of(scan.samples, adapted.scores.paths), classes)
        reference = classification_metrics(y_adapted, adapted.scores.probabilities, classes)["accuracy"]
    header = {
        "data_dir": scan.root.resolve().name,
        "n_images": len(y),
        "counts": dict(zip(classes, counts.tolist())),
        "skipped": [{"file": relative_name(p, scan.root), "reason": r} for p, r in scores.skipped],
        "model": {"name": untouched.predictor.meta.name, "sha256": untouched.predictor.meta.weights_sha256},
    }
    accuracy = classification_metrics(y, scores.probabilities, classes)["accuracy"]
    groups = [patient_id(p) for p in scores.paths]
    return SiteScores(
        scores.probabilities, scores.features, y, groups, classes, untouched.predictor.sets, accuracy, reference, header
    )


def score_site(
    predictor: Predictor,
    scan: Scan,
    *,
    on_batch: Callable[[int], None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SiteScores:
    """Score the folder once (probabilities and pooled features), and once more adapted to it, if the model can be."""
    check_labels(scan, predictor.meta.classes)
    paths = [s.path for s in scan.samples]
    untouched = Protocol().score(predictor, paths, batch_size=batch_size, on_batch=on_batch, features=True)
    adapted = None
    if adapt_passes(predictor):
        adapted = Protocol(adapt=True).score(predictor, paths, batch_size=batch_size, on_batch=on_batch)
    return site_scores(untouched, adapted, scan)


def check_plan(sizes: Sequence[int], repeats: int, n_classes: int) -> None:
    """Refuse sizes too small to hold the fewest images per class that tuning takes, before any scoring."""
    smallest = n_classes * TUNE_MIN_PER_CLASS
    if repeats < 1 or not sizes or min(sizes) < smallest:
        raise DataError(f"each size must be at least {smallest} ({TUNE_MIN_PER_CLASS} per class), repeats at least 1")


def fits_needed(sizes: Sequence[int], repeats: int) -> int:
    """How many fits a curve makes (for progress bars): per halving, both halves, every size and the whole half."""
    return repeats * 2 * (len(set(sizes)) + 1)


def site_curve(
    site: SiteScores,
    sizes: Sequence[int] = SITE_CURVE_SIZES,
    repeats: int = SITE_CURVE_REPEATS,
    on_fit: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The whole ``site_curve.json``: the points, and the untouched and (unlabelled) adapted references."""
    check_plan(sizes, repeats, len(site.classes))
    points = curve(
        site.probabilities, site.features, site.y, site.groups, site.classes, sizes, repeats, on_fit, site.sets
    )
    return {
        **site.header,
        **({"sets": {"method": site.sets.method, "level": site.sets.level}} if site.sets else {}),
        "repeats": repeats,
        "split": "2 folds, StratifiedGroupKFold by class, grouped by patient, seeds 0..repeats-1",
        "reference": {"untouched": site.untouched, "adapted": site.adapted},
        "points": points,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def point_key(point: dict[str, Any]) -> tuple[str, int, bool]:
    """What names a point of the curve: method, size, and whether it is the whole labelled half."""
    return point["method"], point["size"], point.get("whole_half", False)


def format_curve(result: dict[str, Any]) -> str:
    """The curve as a table: accuracy [95 % interval] per size, one column per method; with sets, each method's
    held-out coverage and mean set size beside it.
    """

    ref = result["reference"]
    sets = result.get("sets")
    lines = [f"untouched {ref['untouched']:.1%}" + (f", adapted {ref['adapted']:.1%}" if ref["adapted"] else "")]
    set_head = f"{sets['level']:.0%} set cov/size" if sets else ""
    lines.append(f"{'labels':>8}" + "".join(f"{m:>24}{set_head:>20}" for m in METHODS))
    by = {point_key(p): p for p in result["points"]}
    for s in dict.fromkeys(point_key(p)[1:] for p in result["points"]):
        cells = ""
        for m in METHODS:
            point = by[(m, *s)]
            cells += f"{with_ci(point['accuracy'], point['ci95']):>24}"
            if sets:
                cells += f"{point['coverage']:>13.1%} / {point['mean_set_size']:.2f}"
        lines.append(f"{s[0]:>8}{cells}")
    return "\n".join(lines)


def adapt_passes(predictor: Predictor) -> int:
    """Passes over the images beyond the first (for progress bars): the adapted reference, when there is one."""
    try:
        check_adaptable(predictor)
    except ModelLoadError:
        return 0
    return Protocol(adapt=True).passes()
