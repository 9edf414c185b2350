"""Metrics agree with counting by hand; reports are written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumocam.atomic import atomic_path, save_figure, write_json
from pneumocam.plots import confusion_matrix_figure, per_class_figure
from pneumocam.scoring.metrics import (
    classification_metrics,
    format_table,
    outcome_mask,
    patient_resamples,
    weighted_auc,
)

CLASSES = ["BACTERIA", "NORMAL", "VIRUS"]


def random_case(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_metrics_match_direct_counts() -> None:
    y, p = random_case()
    m = classification_metrics(y, p, CLASSES)
    pred = p.argmax(1)
    assert m["n_images"] == len(y)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == len(y)
    for k, name in enumerate(CLASSES):
        c = m["per_class"][name]
        tp = np.sum((y == k) & (pred == k))
        assert cm[k, k] == tp
        assert c["support"] == np.sum(y == k) == cm[k].sum()
        assert c["recall"] == pytest.approx(tp / np.sum(y == k))
        assert c["precision"] == pytest.approx(tp / np.sum(pred == k))
        assert c["accuracy"] == pytest.approx(np.mean((y == k) == (pred == k)))
        assert c["f1"] == pytest.approx(2 * c["precision"] * c["recall"] / (c["precision"] + c["recall"]))
        # AUC = probability a positive outranks a negative
        pos, neg = p[y == k, k], p[y != k, k]
        assert c["auc"] == pytest.approx(np.mean(pos[:, None] > neg[None, :]))
    assert m["macro_f1"] == pytest.approx(np.mean([m["per_class"][c]["f1"] for c in CLASSES]))
    json.dumps(m, allow_nan=False)
    table = format_table(m)
    assert "overall" in table and all(c in table for c in CLASSES)


def test_auc_undefined_when_a_class_is_absent() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, p, CLASSES)
    assert m["per_class"]["VIRUS"]["auc"] is None and m["per_class"]["VIRUS"]["support"] == 0


def test_the_metrics_are_scikit_learns_ties_and_empty_classes_included() -> None:
    """Counted in NumPy, defined as scikit-learn defines them: zero where a class is never predicted."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    y, p = random_case(seed=4, n=90)
    p = np.round(p, 1)  # ties in every score
    p[:, 2] = 0.0  # VIRUS never predicted: its precision and F1 are undefined, counted as zero
    pred, labels = p.argmax(1), [0, 1, 2]
    m = classification_metrics(y, p, CLASSES)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for k, name in enumerate(CLASSES):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision[k], recall[k], f1[k]))
        assert got["support"] == support[k] and got["auc"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
    assert m["per_class"]["VIRUS"]["precision"] == 0.0
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro", zero_division=0))


def test_the_bootstraps_auc_equals_scikit_learns_under_each_resample_ties_included() -> None:
    y, p = random_case(3, n=150)
    score = np.round(p[:, 2], 1)  # coarse: many ties
    weights = patient_resamples([str(i // 4) for i in range(len(y))], n_boot=50)
    weights[0] *= y != 2  # a resample without positives: undefined
    got = weighted_auc(y == 2, score, weights)
    assert np.isnan(got[0])
    want = [roc_auc_score(y == 2, score, sample_weight=w) for w in weights[1:]]
    np.testing.assert_allclose(got[1:], want, rtol=0, atol=1e-12)


def test_outcome_masks_partition_the_data() -> None:
    y, p = random_case(1)
    pred = p.argmax(1)
    masks = [outcome_mask(y, pred, 2, o) for o in ("TP", "FP", "FN", "TN")]
    assert np.array_equal(np.sum(masks, axis=0), np.ones(len(y)))
    assert np.all(y[masks[2]] == 2) and np.all(pred[masks[2]] != 2)
    with pytest.raises(ValueError):
        outcome_mask(y, pred, 0, "XX")


def test_figures_are_written(tmp_path: Path) -> None:
    y, p = random_case(2)
    m = classification_metrics(y, p, CLASSES)
    a = save_figure(confusion_matrix_figure(m["confusion_matrix"], CLASSES), tmp_path / "cm.png")
    b = save_figure(per_class_figure(m), tmp_path / "bars.png")
    for f in (a, b):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bars.png", "cm.png"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = write_json(tmp_path / "metrics.json", {"run": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"run": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"run": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(ValueError):
        write_json(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"run": 1}


def test_expected_calibration_error() -> None:
    from pneumocam.scoring.metrics import reliability

    # every prediction 90 % confident, half of them right: ECE = |0.5 - 0.9|
    p = np.tile([0.9, 0.05, 0.05], (100, 1))
    y = np.array([0] * 50 + [1] * 50)
    r = reliability(y, p)
    assert r["ece"] == pytest.approx(0.4)
    assert len(r["bins"]) == 1 and r["bins"][0]["count"] == 100
    # confidences matching accuracy bin by bin give ECE near 0
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.4, 1.0, 20000)
    right = rng.uniform(size=conf.size) < conf
    probs = np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], axis=1)
    labels = np.where(right, 0, 1)
    assert reliability(labels, probs)["ece"] < 0.02
    m = classification_metrics(labels, probs, CLASSES)
    assert m["ece"] == pytest.approx(reliability(labels, probs)["ece"])
