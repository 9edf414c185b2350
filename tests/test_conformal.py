"""How sure: prediction sets (fitted, served, refitted at a site, cross-fitted), the temperature, risk-coverage."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import make_dataset, run
from pneumocam.model import conformal
from pneumocam.model.artifact import read_meta
from pneumocam.scoring.metrics import reliability
from pneumocam.scoring.predictor import load_predictor
from pneumocam.scoring.selective import risk_coverage, set_metrics
from pneumocam.site import calibration


def noisy_calls(n: int, seed: int, sharp: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a three-class model that is right more often than not, with the true classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += sharp
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("method", conformal.METHODS)
def test_sets_fitted_on_a_sample_cover_new_images_at_the_level(method: str) -> None:
    fit_p, fit_y = noisy_calls(3000, 0)
    new_p, new_y = noisy_calls(3000, 1)
    rule = conformal.fit(fit_p, fit_y, method, 0.9)
    keep = rule.member(new_p)
    covered = keep[np.arange(len(new_y)), new_y]
    assert 0.88 <= covered.mean() <= 0.93  # the guarantee, up to sampling noise
    assert keep[np.arange(len(new_p)), new_p.argmax(1)].all()  # the call is always in its set
    assert 1.0 < keep.sum(1).mean() < 3.0
    if method == "class-lac":  # one threshold per class: every class covered at the level
        assert all(covered[new_y == c].mean() >= 0.87 for c in range(3))
    again = conformal.PredictionSets.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert again == rule


def test_a_sample_too_small_for_the_level_keeps_every_class() -> None:
    p, y = noisy_calls(5, 0)
    rule = conformal.fit(p, y, "lac", 0.9)
    assert rule.member(p).all()
    assert rule.to_dict()["thresholds"] == [None, None, None]
    assert conformal.PredictionSets.from_dict(rule.to_dict()).member(p).all()


def test_the_choice_follows_its_rule_and_fits_the_winner_on_the_whole_sample() -> None:
    p, y = noisy_calls(1200, 2)
    groups = [str(i // 2) for i in range(len(y))]
    rule, choice = conformal.choose(p, y, groups, 0.9)
    table = choice["table"]
    assert set(table) == set(conformal.METHODS) and all(r["sites"] > 150 for r in table.values())
    passing = [m for m, r in table.items() if r["passes"]]
    assert passing == [m for m, r in table.items() if r["p10_coverage"] >= 0.85]
    assert rule.method == min(passing, key=lambda m: table[m]["mean_size"])
    assert rule.thresholds == conformal.fit(p, y, rule.method, 0.9).thresholds and rule.n_images == len(y)


def test_cross_fitting_fits_each_fold_on_the_others() -> None:
    p, y = noisy_calls(800, 3)
    fold = np.arange(len(y)) % 2
    keep, rules = conformal.cross_fit(p, y, fold, [p[fold != f] for f in (0, 1)], "lac", 0.9)
    assert len(rules) == 2 and rules[0] != rules[1]
    np.testing.assert_array_equal(keep[fold == 0], rules[0].member(p[fold == 0]))
    assert 0.85 <= keep[np.arange(len(y)), y].mean() <= 0.95


def test_sets_in_words() -> None:
    classes = ["BACTERIA", "NORMAL", "VIRUS"]
    two = conformal.in_words(["BACTERIA", "VIRUS"], 0.9, classes)
    assert two.startswith("bacterial or viral pneumonia: the model cannot tell which") and "90% prediction set" in two
    assert conformal.in_words(["NORMAL"], 0.9, classes).startswith("normal (no pneumonia): the 90% prediction set")
    assert "cannot tell for this X-ray" in conformal.in_words(classes, 0.9, classes)


def test_set_metrics_and_the_risk_coverage_curve() -> None:
    p, y = noisy_calls(600, 4)
    keep = conformal.fit(p, y, "class-lac", 0.9).member(p)
    block = set_metrics(keep, y, ["A", "B", "C"], [str(i) for i in range(len(y))], 0.9, n_boot=50)
    assert block["coverage"] == pytest.approx(keep[np.arange(len(y)), y].mean())
    lo, hi = block["coverage_ci95"]
    assert lo <= block["coverage"] <= hi and hi - lo > 0.01
    assert sum(block["size_counts"].values()) == len(y)
    assert sum(b["n_images"] for b in block["per_class"].values()) == len(y)
    curve = risk_coverage(p, y)
    accuracy = {pt["share"]: pt["accuracy"] for pt in curve["points"]}
    assert accuracy[1.0] == pytest.approx((p.argmax(1) == y).mean())
    assert accuracy[0.5] > accuracy[0.8] > accuracy[1.0]  # the most confident answers are right more often
    assert accuracy[1.0] < curve["area"] <= 1.0


def test_a_temperature_fitted_on_an_underconfident_model_lowers_its_calibration_error() -> None:
    p, y = noisy_calls(2000, 5, sharp=3.0)  # the true posterior is softmax(3 * logits): p itself is too soft
    soft = calibration.apply(p, calibration.Calibration(2.5, (0.0, 0.0, 0.0)))  # softer still
    t = calibration.fit_temperature(soft, y)
    assert t == pytest.approx(1 / (3 * 2.5), rel=0.1)
    after = calibration.apply(soft, calibration.Calibration(t, (0.0, 0.0, 0.0)))
    assert reliability(y, after)["ece"] < reliability(y, soft)["ece"] / 2
    np.testing.assert_array_equal(after.argmax(1), soft.argmax(1))


@pytest.fixture(scope="module")
def set_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """The tiny model given a temperature and a set rule by fit-conformal on a generated training folder."""
    root = tmp_path_factory.mktemp("conformal")
    data = root / "train"
    make_dataset(data, per_class=12)
    folder = root / "model"
    shutil.copytree(tiny_model_dir, folder)
    output = run("fit-conformal", data, "--model-dir", folder).output
    assert "prediction sets:" in output and "temperature" in output
    return folder, data


def test_fit_conformal_records_the_rule_and_every_call_carries_its_set(set_model: tuple[Path, Path]) -> None:
    folder, data = set_model
    meta = read_meta(folder)
    rule = meta.conformal.rule
    assert rule.method in conformal.METHODS and rule.level == 0.9
    assert "validation split" in rule.fitted_on and meta.conformal.choice["table"]
    assert 0 < meta.conformal.validation["coverage"] <= 1 and not meta.conformal.previous
    t = meta.temperature
    assert t is not None and t.value > 0 and t.used == (t.ece_after_cross_fitted < t.ece_before)
    predictor = load_predictor(folder)  # the hash still matches if the temperature was folded in
    calls = json.loads(run("predict", data, "--model", folder, "--json").stdout)
    rule = predictor.sets
    for call in calls:
        assert call["set_level"] == 0.9
        assert call["prediction_set"][0] == call["predicted"]
        expected = rule.names([call["probabilities"][c] for c in predictor.classes], predictor.classes)
        assert call["prediction_set"] == expected


def test_evaluate_reports_coverage_and_risk_coverage(set_model: tuple[Path, Path], tmp_path: Path) -> None:
    folder, data = set_model
    output = run("evaluate", data, "--model", folder, "--out", tmp_path / "r").output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    with open(tmp_path / "r" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    covered = [r["true"] in r["prediction_set"].split("|") for r in rows]
    assert m["sets"]["coverage"] == pytest.approx(np.mean(covered))
    assert m["sets"]["mean_size"] == pytest.approx(np.mean([len(r["prediction_set"].split("|")) for r in rows]))
    assert "validation split" in m["sets"]["fitted_on"] and "90% prediction sets" in output
    assert [p["share"] for p in m["risk_coverage"]["points"]] == [1.0, 0.9, 0.8, 0.7, 0.5]
    assert (tmp_path / "r" / "risk_coverage.png").stat().st_size > 1000
    from pneumocam.reports.evaluation import read_predictions

    back = read_predictions(tmp_path / "r" / "predictions.csv", load_predictor(folder).classes)
    assert [list(p.prediction_set) for p in back] == [r["prediction_set"].split("|") for r in rows]


def test_cross_calibration_refits_the_sets_on_the_other_folds(set_model: tuple[Path, Path], tmp_path: Path) -> None:
    folder, data = set_model
    run("evaluate", data, "--model", folder, "--out", tmp_path / "c", "--cross-calibrate", 2)
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert m["sets"]["fitted_on"].startswith("cross-fitted")
    assert len(m["protocol"]["set_thresholds"]) == 2
    assert m["sets"]["per_class"]["VIRUS"]["n_images"] == 14


def test_calibrating_at_a_site_refits_the_sets_there(set_model: tuple[Path, Path], tmp_path: Path) -> None:
    folder, data = set_model
    run("calibrate", data, "--model", folder, "--out", tmp_path / "site")
    meta = read_meta(tmp_path / "site")
    rule, before = meta.conformal.rule, read_meta(folder).conformal.rule
    assert "labelled site sample" in rule.fitted_on and rule.n_images == 12 * 3 + 3 and rule.method == before.method
    assert meta.conformal.previous["fitted_on"] == before.fitted_on and not meta.conformal.choice
    raw = json.loads((tmp_path / "site" / "model.json").read_text())["conformal"]  # as written: None for "all"
    assert raw["previous"]["thresholds"] == [None if np.isinf(t) else t for t in before.thresholds]


def test_a_re_fitted_head_is_surer_of_its_own_images_than_of_unseen_ones() -> None:
    from pneumocam.site import tuning

    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(3), 40)
    features = rng.normal(0, 1, (120, 40)) + np.eye(3, 40)[y] * 1.5  # the features know the class; the model not
    p, _ = noisy_calls(120, 7, sharp=0.0)
    fitted = tuning.fit(p, features, y, [str(i) for i in range(120)], 3)
    assert fitted.tuning.kind == tuning.TUNE
    own = fitted.tuning.apply(p, features)[np.arange(120), y]
    unseen = fitted.out_of_fold[np.arange(120), y]
    assert own.mean() > unseen.mean() + 0.02


def test_tuning_fits_its_sets_on_images_its_head_did_not_see(set_model: tuple[Path, Path], tmp_path: Path) -> None:
    from pneumocam.images.data import class_indices, labels_of, patient_id, scan_dataset
    from pneumocam.site import tuning

    folder, data = set_model
    predictor = load_predictor(folder)
    scan = scan_dataset(data)
    scores = predictor.score([s.path for s in scan.samples], features=True)
    y = class_indices(labels_of(scan.samples, scores.paths), predictor.classes)
    groups = [patient_id(p) for p in scores.paths]
    fitted = tuning.fit(scores.probabilities, scores.features, y, groups, 3)
    unseen = fitted.out_of_fold
    assert unseen.shape == scores.probabilities.shape and np.allclose(unseen.sum(1), 1.0, atol=1e-4)
    run("tune", data, "--model", folder, "--out", tmp_path / "tuned")
    sets = read_meta(tmp_path / "tuned").conformal.rule
    expected = conformal.fit(unseen, y, sets.method, sets.level)
    assert sets.thresholds == expected.thresholds
    assert "labelled site sample" in sets.fitted_on
