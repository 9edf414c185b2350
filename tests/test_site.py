"""Site adaptation, site calibration, cross-fitting and bootstrap intervals, on tiny real models and files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import make_dataset, run, save_gray, site_fixtures, xray_like
from pneumocam.errors import DataError, ModelLoadError
from pneumocam.explain.explainer import Explainer
from pneumocam.images.data import patient_id, scan_dataset
from pneumocam.images.readers import read_image
from pneumocam.model.artifact import SOURCE_STATS_FILE, VALIDITY_FILE
from pneumocam.model.network import FEATURES_LAYER
from pneumocam.scoring.metrics import bootstrap_ci, classification_metrics
from pneumocam.scoring.predictor import load_predictor
from pneumocam.site import calibration
from pneumocam.site.adaptation import adapted_site, layer_statistics, load_source_stats, measured_layers

CLASSES = ["BACTERIA", "NORMAL", "VIRUS"]


site_data, adaptable_dir = site_fixtures("site", per_class=8)


@pytest.fixture(scope="module")
def darker_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 'site': the same kind of images, darker and lower in contrast."""
    root = tmp_path_factory.mktemp("darker")
    for i in range(12):
        arr = (0.6 * xray_like(seed=500 + i).astype(float) + 10).astype(np.uint8)
        save_gray(root / f"scan_{i:02d}.png", arr)
    return root


# --- calibration ----------------------------------------------------------------------------------


def test_fit_recovers_a_known_temperature_and_biases() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 3))
    true_t, true_b = 2.0, np.array([0.5, -0.3, -0.2])
    z = logits / true_t + true_b
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in p_true])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cal = calibration.fit(probs, y)
    assert cal.temperature == pytest.approx(true_t, rel=0.1)
    b = np.array(cal.biases)
    np.testing.assert_allclose(b - b.mean(), true_b - true_b.mean(), atol=0.12)
    np.testing.assert_allclose(calibration.apply(probs, cal), p_true, atol=0.05)


def test_fit_needs_every_class() -> None:
    probs = np.full((6, 3), 1 / 3)
    with pytest.raises(DataError, match="every class"):
        calibration.fit(probs, [0, 0, 1, 1, 0, 1])


def test_folds_are_stratified_and_keep_patients_together() -> None:
    labels = ["B"] * 40 + ["N"] * 30 + ["V"] * 20
    groups = [f"p{i // 2}" for i in range(90)]  # two images per patient
    fold = calibration.folds(labels, groups, 2, seed=0)
    assert set(fold) == {0, 1}
    for g in set(groups):
        assert len({fold[i] for i in range(90) if groups[i] == g}) == 1
    for lab in "BNV":
        per_fold = [sum(1 for i in range(90) if labels[i] == lab and fold[i] == f) for f in (0, 1)]
        assert min(per_fold) > 0 and abs(per_fold[0] - per_fold[1]) <= 4
    np.testing.assert_array_equal(fold, calibration.folds(labels, groups, 2, seed=0))


def test_cross_fit_scores_each_fold_with_the_other_folds_calibration() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(0, 1, (200, 3)) + 2 * np.eye(3)[y] + np.array([1.0, 0, 0])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fold = np.arange(200) % 2
    fitted = calibration.cross_fit(probs, y, fold)
    for f in (0, 1):
        expected = calibration.apply(probs[fold == f], calibration.fit(probs[fold != f], y[fold != f]))
        np.testing.assert_allclose(fitted.probabilities[fold == f], expected, atol=1e-6)
    assert fitted.calibrations[0] != fitted.calibrations[1]


# --- bootstrap intervals --------------------------------------------------------------------------


def test_bootstrap_intervals_bracket_the_estimate_and_widen_with_correlated_images() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.1)
    right = rng.random(300) < 0.8
    probs[np.arange(300), np.where(right, y, (y + 1) % 3)] = 0.8
    m = classification_metrics(y, probs, CLASSES)
    ci = bootstrap_ci(y, probs, CLASSES, [f"p{i}" for i in range(300)], n_boot=300)
    lo, hi = ci["accuracy"]
    assert lo < m["accuracy"] < hi and 0.05 < hi - lo < 0.15
    for c in CLASSES:
        for key in ("accuracy", "precision", "recall", "f1", "auc"):
            low, high = ci["per_class"][c][key]
            assert low <= high
        assert ci["per_class"][c]["recall"][0] <= m["per_class"][c]["recall"] <= ci["per_class"][c]["recall"][1]
    # the same 300 images as 30 patients of 10 (identical outcomes within a patient): far less information
    yy, pp = np.repeat(y[:30], 10), np.repeat(probs[:30], 10, axis=0)
    wide = bootstrap_ci(yy, pp, CLASSES, [f"p{i // 10}" for i in range(300)], n_boot=300)
    narrow = bootstrap_ci(yy, pp, CLASSES, [f"p{i}" for i in range(300)], n_boot=300)
    assert np.diff(wide["accuracy"])[0] > 2 * np.diff(narrow["accuracy"])[0]


# --- adaptation -----------------------------------------------------------------------------------


def test_adapting_to_the_training_images_changes_nothing(adaptable_dir: Path, site_data: Path) -> None:
    loaded = load_predictor(adaptable_dir)
    from pneumocam.training.split import split_by_patient

    train, _ = split_by_patient(scan_dataset(site_data).samples)
    paths = [s.path for s in train]
    adapted, info = adapted_site(loaded, paths, batch_size=32)
    before = loaded.score(paths).probabilities
    after = adapted.score(paths).probabilities
    np.testing.assert_allclose(after, before, atol=2e-3)
    assert info["n_images"] == len(paths) and info["labels_read"] is False


def test_adaptation_maps_the_site_statistics_onto_the_training_ones(adaptable_dir: Path, darker_site: Path) -> None:
    loaded = load_predictor(adaptable_dir)
    source = load_source_stats(adaptable_dir, loaded.meta.adaptation)
    paths = sorted(darker_site.glob("*.png"))
    bns = measured_layers(loaded.model)[:-1]
    deep = bns[-1]
    before = layer_statistics(loaded, paths, [deep])
    adapted, _ = adapted_site(loaded, paths, batch_size=len(paths))  # one batch: batch statistics are exact
    adapted = adapted.model
    # what the deepest batch norm now outputs for the site equals what it output for the training images
    import keras

    def bn_output_stats(model: keras.Model) -> np.ndarray:
        probe = keras.Model(model.inputs[0], model.get_layer(deep).output)
        out = probe(np.stack([loaded.model_input(read_image(p)) for p in paths]), training=False).numpy()
        return out.reshape(-1, out.shape[-1]).mean(0)

    layer = loaded.model.get_layer(deep)
    gamma, beta, mean, var = [np.array(w) for w in layer.get_weights()]
    eps = layer.epsilon
    source_out = gamma * (source.mean[deep] - mean) / np.sqrt(var + eps) + beta
    gap_before = np.abs(bn_output_stats(loaded.model) - source_out).mean()
    gap_after = np.abs(bn_output_stats(adapted) - source_out).mean()
    assert np.abs(before.mean[deep] - source.mean[deep]).mean() > 0  # the site really differs
    assert gap_after < 0.02 * gap_before
    # the loaded model itself is untouched
    assert np.array_equal(loaded.model.get_layer(deep).get_weights()[2], mean)


@pytest.mark.parametrize(("method", "bn_moves", "head_moves"), [("bn", True, False), ("features", False, True)])
def test_each_method_moves_only_its_own_layers(
    method: str, bn_moves: bool, head_moves: bool, adaptable_dir: Path, darker_site: Path
) -> None:
    from pneumocam.site.adaptation import first_head_dense, stat_passes

    loaded = load_predictor(adaptable_dir)
    paths = sorted(darker_site.glob("*.png"))
    site, info = adapted_site(loaded, paths, method=method, batch_size=len(paths))
    adapted = site.model
    assert info["method"] == method and stat_passes(method) == 1 and stat_passes("bn+features") == 2
    deep = measured_layers(loaded.model, "bn")[-1]
    assert FEATURES_LAYER not in measured_layers(loaded.model, "bn")
    assert measured_layers(loaded.model, "features") == [FEATURES_LAYER]

    def moved(name: str, i: int) -> bool:
        return not np.allclose(adapted.get_layer(name).get_weights()[i], loaded.model.get_layer(name).get_weights()[i])

    assert (moved(deep, 2), moved(first_head_dense(loaded.model).name, 1)) == (bn_moves, head_moves)
    before = loaded.score(paths).probabilities
    assert not np.allclose(site.score(paths).probabilities, before, atol=1e-3)


def test_adapt_cli_writes_a_model_every_entry_point_serves(
    adaptable_dir: Path, darker_site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapted"
    result = run("adapt", darker_site, "--out", out, "--model", adaptable_dir, "--batch-size", 4)
    assert "adapted to 12 image(s)" in result.output
    loaded = load_predictor(out)  # safe mode, hash and consistency checks pass
    applied = loaded.meta.adaptation.applied
    assert applied["folder"] == darker_site.name and applied["n_images"] == 12 and applied["method"] == "bn+features"
    assert applied["date"] and loaded.meta.name.endswith("-adapted") and "test" not in loaded.meta.metrics
    base = load_predictor(adaptable_dir)
    image = next(darker_site.glob("*.png"))
    e_base = Explainer(base).explain_file(image, n_layers=2)
    e_new = Explainer(loaded).explain_file(image, n_layers=2)
    assert e_new.layer_names == e_base.layer_names and len(e_new.heatmaps) == 2
    assert any(abs(e_new.probabilities[c] - e_base.probabilities[c]) > 1e-4 for c in CLASSES)
    predicted = run("predict", image, "--model", out, "--json")
    assert json.loads(predicted.stdout)[0]["probabilities"] == pytest.approx(e_new.probabilities, abs=1e-4)
    again = run("adapt", darker_site, "--out", tmp_path / "twice", "--model", out, code=1)
    assert "already adapted" in again.output


@pytest.mark.parametrize(
    ("setup", "message"),
    [("empty", "no images found"), ("missing", "does not exist"), ("no-stats", "no training statistics")],
)
def test_adapt_errors_are_one_line(setup: str, message: str, tiny_model_dir: Path, adaptable_dir: Path, tmp_path):
    folder, model = tmp_path / "site", adaptable_dir
    if setup == "empty":
        folder.mkdir()
    elif setup == "no-stats":
        save_gray(folder / "a.png", xray_like())
        model = tiny_model_dir
    result = run("adapt", folder, "--out", tmp_path / "out", "--model", model, code=1)
    assert message in result.output
    assert len(result.output.strip().splitlines()) <= 2  # the model line and the error
    assert not (tmp_path / "out").exists()


# --- calibration as a model -----------------------------------------------------------------------


def test_calibrate_cli_folds_the_fit_into_the_logits(adaptable_dir: Path, site_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated"
    result = run("calibrate", site_data, "--out", out, "--model", adaptable_dir)
    assert "temperature" in result.output and "in-sample" in result.output
    base, cal_model = load_predictor(adaptable_dir), load_predictor(out)
    rec = cal_model.meta.calibration
    cal = calibration.Calibration(rec.params["temperature"], tuple(rec.params["biases"]))
    assert rec.n_images == sum(scan_dataset(site_data).counts().values()) and rec.folder == site_data.name
    assert rec.previous is None and "labelled site calibration" in rec.kind
    paths = [s.path for s in scan_dataset(site_data).samples]
    p_base = base.score(paths).probabilities
    p_cal = cal_model.score(paths).probabilities
    np.testing.assert_allclose(p_cal, calibration.apply(p_base, cal), atol=1e-4)
    e = Explainer(cal_model).explain_file(paths[0], n_layers=1)
    assert e.probabilities == pytest.approx(dict(zip(CLASSES, p_cal[0].tolist())), abs=1e-4)
    # Calibration leaves the features alone, so the validity statistics travel unchanged.
    assert cal_model.validity_stats is not None and cal_model.validity_stats.threshold == base.validity_stats.threshold
    assert e.validity.ood_score == pytest.approx(Explainer(base).explain_file(paths[0]).validity.ood_score, rel=1e-4)


def test_calibrate_refuses_a_folder_with_a_class_missing(adaptable_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "three-folder", per_class=3)
    shutil.rmtree(root / "VIRUS")
    (root / "VIRUS").mkdir()
    result = run("calibrate", root, "--out", tmp_path / "cal", "--model", adaptable_dir, code=1)
    assert "no VIRUS images" in result.output
    assert not (tmp_path / "cal").exists()


# --- evaluate under each protocol -----------------------------------------------------------------


def test_evaluate_reports_intervals_and_the_protocol(adaptable_dir: Path, site_data: Path, tmp_path: Path) -> None:
    plain, adapted, crossed = tmp_path / "plain", tmp_path / "adapted", tmp_path / "crossed"
    run("evaluate", site_data, "--model", adaptable_dir, "--out", plain)
    r = run("evaluate", site_data, "--model", adaptable_dir, "--out", adapted, "--adapt", "--batch-size", 8)
    r = run("evaluate", site_data, "--model", adaptable_dir, "--out", crossed, "--cross-calibrate", 2)
    assert "site-calibrated" in r.output and "[" in r.output
    reports = {p.name: json.loads((p / "metrics.json").read_text()) for p in (plain, adapted, crossed)}
    assert reports["plain"]["protocol"]["name"] == "train-only"
    assert reports["adapted"]["protocol"]["name"] == "site-adapted"
    assert reports["adapted"]["protocol"]["adaptation"]["labels_read"] is False
    split = reports["crossed"]["protocol"]["split"]
    assert split["k"] == 2 and sorted(split["folds"]) == sorted(
        r["file"] for r in csv.DictReader(open(crossed / "predictions.csv"))
    )
    assert len(reports["crossed"]["protocol"]["calibrations"]) == 2
    for m in reports.values():
        assert set(m) >= {"ci95", "per_class", "accuracy", "confusion_matrix"}
        lo, hi = m["ci95"]["accuracy"]
        assert lo <= m["accuracy"] <= hi
        assert set(m["ci95"]["per_class"]["VIRUS"]) == {"accuracy", "precision", "recall", "f1", "auc"}
    # patients of a fold never appear in the other fold
    by_patient: dict[str, set[int]] = {}
    for f, k in split["folds"].items():
        by_patient.setdefault(patient_id(f), set()).add(k)
    assert all(len(v) == 1 for v in by_patient.values())


def test_model_without_statistics_cannot_be_adapted_in_evaluate(tiny_model_dir: Path, site_data: Path, tmp_path):
    result = run("evaluate", site_data, "--model", tiny_model_dir, "--adapt", "--out", tmp_path / "r", code=1)
    assert "no training statistics" in result.output


def test_source_stats_are_checked_against_their_hash(adaptable_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(adaptable_dir, copy)
    stats = np.load(copy / SOURCE_STATS_FILE)
    arrays = {k: stats[k] for k in stats.files}
    arrays[f"mean/{FEATURES_LAYER}"] = arrays[f"mean/{FEATURES_LAYER}"] + 1
    np.savez(copy / SOURCE_STATS_FILE, **arrays)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_source_stats(copy, load_predictor(copy).meta.adaptation)


def test_a_hub_model_brings_its_training_statistics(adaptable_dir: Path, darker_site: Path, tmp_path: Path) -> None:
    """hf_hub_download fetches source_stats.npz and validity.npz with the model (a pre-filled cache, offline)."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--pneumocam"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in ("model.json", "model.keras", SOURCE_STATS_FILE, VALIDITY_FILE):
        shutil.copy(adaptable_dir / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    mp = pytest.MonkeyPatch()
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        loaded = load_predictor(repo_id="org/pneumocam", revision=commit, cache_dir=tmp_path / "hub")
    finally:
        mp.undo()
    assert loaded.from_hub and loaded.directory == snap and loaded.validity_stats is not None
    model, info = adapted_site(loaded, sorted(darker_site.glob("*.png")), batch_size=6)
    model = model.model
    assert info["n_images"] == 12 and model is not loaded.model


def test_a_stacked_calibration_record_reads_and_writes_key_for_key() -> None:
    """model.json's calibration block, a calibration stacked on another: typed, and written back unchanged."""
    from pneumocam.config import SiteFit

    first = {"kind": "labelled site calibration", "temperature": 1.2, "biases": [0.1, 0.0, -0.1], "folder": "a"}
    first |= {"n_images": 30, "counts": {"NORMAL": 30}, "date": "2026-12-04", "in_sample": {"before": {}}}
    second = {**first, "temperature": 0.9, "folder": "b", "previous": first}
    fit = SiteFit.from_dict(second)
    assert fit.params == {"temperature": 0.9, "biases": [0.1, 0.0, -0.1]} and fit.folder == "b"
    assert fit.previous is not None and fit.previous.folder == "a" and fit.previous.previous is None
    assert list(fit.to_dict().items()) == list(second.items())
