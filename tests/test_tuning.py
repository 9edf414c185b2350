"""Site tuning of the head, its cross-fitted protocol, the site curve, and adaptation that ignores file order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_dataset, run, site_fixtures
from pneumocam.errors import DataError
from pneumocam.explain.explainer import Explainer
from pneumocam.images.data import class_indices, labels_of, patient_id, scan_dataset
from pneumocam.options import TUNE_PENALTIES
from pneumocam.reports.site_curve import curve
from pneumocam.scoring.predictor import load_predictor
from pneumocam.site import tuning

CLASSES = ["BACTERIA", "NORMAL", "VIRUS"]


def synthetic(n: int, d: int, seed: int, signal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A weak 'trained model' (probabilities) and features that carry ``signal`` about the class beyond it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3)) + 0.6 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    f = rng.normal(0, 1, (n, d))
    f[:, :3] += signal * np.eye(3)[y]
    return probs, f, y, [f"p{i}" for i in range(n)]


site_data, adaptable_dir = site_fixtures("tune", per_class=12)


# --- the fit --------------------------------------------------------------------------------------


def test_tuning_refits_when_the_features_know_more_than_the_model() -> None:
    p, f, y, g = synthetic(600, 20, seed=0, signal=3.0)
    fitted = tuning.fit(p[:300], f[:300], y[:300], g[:300], 3)
    assert fitted.tuning.kind == tuning.TUNE and fitted.inner_folds == 3
    losses = fitted.inner_log_loss
    assert min(losses, key=losses.get) == tuning.candidate_name(tuning.TUNE, fitted.tuning.penalty)
    assert losses["untouched"] > losses["calibrate"] > min(losses.values())
    tuned = fitted.tuning.apply(p[300:], f[300:])
    assert np.mean(tuned.argmax(1) == y[300:]) > np.mean(p[300:].argmax(1) == y[300:]) + 0.2
    np.testing.assert_allclose(tuned.sum(1), 1, atol=1e-5)


def test_tuning_falls_back_when_the_features_carry_nothing_new() -> None:
    """60 labels, 200 features of pure noise: whatever the inner CV picks must score new images like calibration."""
    from pneumocam.site import calibration

    p, f, y, g = synthetic(660, 200, seed=1, signal=0.0)
    fitted = tuning.fit(p[:60], f[:60], y[:60], g[:60], 3)
    assert fitted.tuning.kind in (tuning.UNTOUCHED, tuning.CALIBRATE) or fitted.tuning.penalty >= 10
    tuned = fitted.tuning.apply(p[60:], f[60:])
    calibrated = calibration.apply(p[60:], calibration.fit(p[:60], y[:60]))
    assert np.mean(tuned.argmax(1) == calibrated.argmax(1)) > 0.85
    sample = tuning._design(p[:60], f[:60])
    free = tuning._fit_one(sample, y[:60], 3, tuning.TUNE, min(TUNE_PENALTIES))[0].apply(p[60:], f[60:])

    def log_loss(q: np.ndarray) -> float:
        return float(-np.mean(np.log(q[np.arange(600), y[60:]])))

    assert log_loss(tuned) < log_loss(free) - 0.1  # an unpenalised re-fit on noise would be much worse


def test_tuning_refuses_a_sample_without_enough_of_a_class() -> None:
    with pytest.raises(DataError, match="no VIRUS images"):
        tuning.check_counts([10, 10, 0], CLASSES)
    with pytest.raises(DataError, match="2 VIRUS image"):
        tuning.check_counts([10, 10, 2], CLASSES)
    p, f, y, g = synthetic(30, 5, seed=2, signal=1.0)
    y[:] = np.r_[np.zeros(29, int), [1]]
    with pytest.raises(DataError, match="lacks a class"):
        tuning.fit(p, f, y, g, 3)


def test_cross_fit_scores_each_fold_with_a_head_fitted_on_the_other() -> None:
    p, f, y, g = synthetic(200, 10, seed=3, signal=2.0)
    fold = np.arange(200) % 2
    crossed = tuning.cross_fit(p, f, y, g, fold)
    for k in (0, 1):
        train = fold != k
        alone = tuning.fit(p[train], f[train], y[train], np.asarray(g)[train], 3).tuning
        np.testing.assert_allclose(crossed.probabilities[fold == k], alone.apply(p[fold == k], f[fold == k]), atol=1e-6)
    assert len(crossed.fits) == 2


# --- a tuned model on disk ------------------------------------------------------------------------


def test_tune_cli_writes_a_model_whose_logits_are_the_tuned_ones(
    adaptable_dir: Path, site_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tuned"
    result = run("tune", site_data, "--out", out, "--model", adaptable_dir)
    assert "inner 3-fold cross-validation chose" in result.output and "in-sample" in result.output
    base, tuned = load_predictor(adaptable_dir), load_predictor(out)  # reloaded: safe mode, hash, layers
    rec = tuned.meta.tuning
    assert rec.folder == site_data.name and rec.n_images == 39 and rec.counts == dict(zip(CLASSES, [12, 13, 14]))
    assert set(rec.params["inner_cv"]["log_loss"]) >= {"untouched", "calibrate"} and rec.date
    assert tuned.meta.name.endswith("-tuned") and "test" not in tuned.meta.metrics
    scan = scan_dataset(site_data)
    paths = [s.path for s in scan.samples]
    s = base.score(paths, features=True)
    y = class_indices(labels_of(scan.samples, s.paths), CLASSES)
    again = tuning.fit(s.probabilities, s.features, y, [patient_id(q) for q in s.paths], 3)
    assert again.tuning.kind == rec.kind
    p_tuned = tuned.score(paths).probabilities
    np.testing.assert_allclose(p_tuned, again.tuning.apply(s.probabilities, s.features), atol=2e-4)
    e = Explainer(tuned).explain_file(paths[0], n_layers=2)
    assert len(e.heatmaps) == 2 and all(np.isfinite(h).all() for h in e.heatmaps)
    assert e.probabilities == pytest.approx(dict(zip(CLASSES, p_tuned[0].tolist())), abs=1e-4)
    twice = run("tune", site_data, "--out", tmp_path / "twice", "--model", out, code=1)
    assert "already site-tuned" in twice.output
    adapt = run("adapt", site_data, "--out", tmp_path / "adapted", "--model", out, code=1)
    assert "site-tuned" in adapt.output


def test_a_tuned_head_that_refits_is_folded_exactly(tiny_predictor, site_data: Path, tmp_path: Path) -> None:
    """Force a re-fitted read-out (random weights) and check the folded Dense layer against the formula."""
    import keras

    from pneumocam.config import FEATURES_LAYER
    from pneumocam.site.adaptation import clone

    paths = [s.path for s in scan_dataset(site_data).samples][:8]
    s = tiny_predictor.score(paths, features=True)
    rng = np.random.default_rng(0)
    d = s.features.shape[1]
    head = tuning.HeadTuning(
        tuning.TUNE, 1.0, 0.7, rng.normal(0, 1, 3), rng.normal(0, 0.3, (d, 3)), rng.normal(0, 1, d), rng.random(d) + 0.5
    )
    model = tuning.tuned_model(clone(tiny_predictor.model), tiny_predictor.meta.logits_layer, FEATURES_LAYER, head)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    got = tiny_predictor.derived(model=reloaded).score(paths).probabilities
    np.testing.assert_allclose(got, head.apply(s.probabilities, s.features), atol=1e-4)
    assert tuning.TUNED_INPUT_LAYER in {layer.name for layer in reloaded.layers}  # one dense layer on both inputs


@pytest.mark.parametrize(
    ("setup", "message"),
    [("empty", "subfolders"), ("missing-class", "no VIRUS images"), ("few", "tuning needs at least")],
)
def test_tune_errors_are_one_line(setup: str, message: str, adaptable_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    if setup == "empty":
        root.mkdir()
    else:
        make_dataset(root, "three-folder", per_class=6)
        virus = sorted((root / "VIRUS").iterdir())
        for f in virus if setup == "missing-class" else virus[2:]:
            f.unlink()
    result = run("tune", root, "--out", tmp_path / "out", "--model", adaptable_dir, code=1)
    assert message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# --- the cross-fitted protocol and the curve ------------------------------------------------------


def test_evaluate_cross_tune_writes_the_protocol(adaptable_dir: Path, site_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    r = run("evaluate", site_data, "--model", adaptable_dir, "--out", out, "--cross-tune", 2)
    assert "site-tuned" in r.output
    m = json.loads((out / "metrics.json").read_text())
    block = m["protocol"]
    assert block["name"] == "site-tuned" and block["split"]["k"] == 2 and len(block["tunings"]) == 2
    assert len(block["split"]["folds"]) == m["n_images"] == 39
    calibrated = tmp_path / "calibrated"
    assert (
        run("evaluate", site_data, "--model", adaptable_dir, "--out", calibrated, "--cross-calibrate", 2).exit_code == 0
    )
    assert (
        json.loads((calibrated / "metrics.json").read_text())["protocol"]["split"]["folds"] == block["split"]["folds"]
    )
    both = run("evaluate", site_data, "--model", adaptable_dir, "--cross-tune", 2, "--cross-calibrate", 2, code=2)
    assert "choose one" in both.output
    run("evaluate", site_data, "--model", adaptable_dir, "--out", tmp_path / "at", "--adapt", "--cross-tune", 2)
    assert json.loads((tmp_path / "at" / "metrics.json").read_text())["protocol"]["name"] == "site-adapted+site-tuned"


def test_curve_points_cover_every_method_and_size() -> None:
    p, f, y, g = synthetic(240, 10, seed=4, signal=2.0)
    calls: list[int] = []
    points = curve(p, f, y, g, CLASSES, sizes=(30, 60), repeats=2, on_fit=calls.append)
    assert len(calls) == 2 * 2 * 3
    by = {(q["method"], "half" if q["whole_half"] else q["size"]): q for q in points}
    assert set(by) == {(m, s) for m in ("calibrate", "tune") for s in (30, 60, "half")}
    for q in points:
        lo, hi = q["ci95"]
        assert lo <= q["accuracy"] <= hi and len(q["accuracy_per_repeat"]) == 2
        assert set(q["recall"]) == set(CLASSES)
    assert by[("tune", 30)]["n_labelled"] == pytest.approx(30, abs=3)
    assert by[("tune", "half")]["n_labelled"] == pytest.approx(120, abs=10)
    # the features carry the class: more labels, a better head
    assert by[("tune", "half")]["accuracy"] > by[("calibrate", "half")]["accuracy"] + 0.1


def test_site_curve_cli_writes_json_and_plot(adaptable_dir: Path, site_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "curve"
    run("site-curve", site_data, "--model", adaptable_dir, "--out", out, "--sizes", "15", "--repeats", 2)
    data = json.loads((out / "site_curve.json").read_text())
    assert set(data["reference"]) == {"untouched", "adapted"} and data["reference"]["adapted"] is not None
    assert {(q["method"], "half" if q["whole_half"] else q["size"]) for q in data["points"]} == {
        (m, s) for m in ("calibrate", "tune") for s in (15, "half")
    }
    assert data["n_images"] == 39 and data["repeats"] == 2
    with Image.open(out / "site_curve.png") as im:
        assert im.size[0] > 400
    bad = run("site-curve", site_data, "--model", adaptable_dir, "--out", tmp_path / "b", "--sizes", "ten", code=2)
    assert "comma-separated" in bad.output
    small = run("site-curve", site_data, "--model", adaptable_dir, "--out", tmp_path / "b", "--sizes", "10", code=1)
    assert "at least 15" in small.output and not (tmp_path / "b").exists()


# --- adaptation depends on the images only --------------------------------------------------------


def test_adaptation_ignores_names_order_and_layout(adaptable_dir: Path, site_data: Path, tmp_path: Path) -> None:
    from pneumocam.site.adaptation import adapted_site

    loaded = load_predictor(adaptable_dir)
    scan = scan_dataset(site_data)
    relaid = tmp_path / "relaid"
    rng = np.random.default_rng(0)
    for i, s in enumerate(rng.permutation([s.path for s in scan.samples])):
        dest = relaid / ("a" if i % 2 else "b") / f"{rng.integers(1e9):09d}_{i}.jpeg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(s, dest)
    moved = sorted(relaid.rglob("*.jpeg"), reverse=True)
    first, _ = adapted_site(loaded, [s.path for s in scan.samples], batch_size=8)
    first = first.model
    second, _ = adapted_site(loaded, moved, batch_size=8)
    second = second.model
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    report = tmp_path / "report"
    run("evaluate", site_data, "--model", adaptable_dir, "--adapt", "--out", report, "--batch-size", 8)
    adaptation = json.loads((report / "metrics.json").read_text())["protocol"]["adaptation"]
    assert adaptation["method"] == "bn+features+lame" and adaptation["lame"]["knn"] == 5


def test_lame_pulls_an_unsure_image_towards_its_confident_neighbours() -> None:
    from pneumocam.site.lame import lame

    # two clusters in feature space; in each, four confident images and one the model is unsure about
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:2] * 10
    f = np.concatenate([centres[0] + rng.normal(0, 0.1, (5, 8)), centres[1] + rng.normal(0, 0.1, (5, 8))])
    p = np.array([[0.9, 0.05, 0.05]] * 4 + [[0.4, 0.45, 0.15]] + [[0.05, 0.9, 0.05]] * 4 + [[0.45, 0.4, 0.15]])
    z = lame(p, f, knn=3)
    np.testing.assert_allclose(z.sum(1), 1, atol=1e-5)
    assert z[4].argmax() == 0 and p[4].argmax() == 1  # the unsure image joins its cluster's class
    assert z[9].argmax() == 1 and p[9].argmax() == 0
    assert (z[:4, 0] >= p[:4, 0] - 1e-6).all()  # the confident ones stay (and grow surer)
    # the fixed point: z = softmax(log p + W z) with W the symmetrised 3-NN graph
    sim = f @ f.T / np.outer(np.linalg.norm(f, axis=1), np.linalg.norm(f, axis=1))
    np.fill_diagonal(sim, -np.inf)
    w = np.zeros((10, 10))
    for i in range(10):
        w[i, np.argsort(-sim[i])[:3]] = 1
    w = (w + w.T) / 2
    e = np.exp(np.log(p) + w @ z)
    np.testing.assert_allclose(z, e / e.sum(1, keepdims=True), atol=1e-4)
    assert np.array_equal(lame(p[:1], f[:1]), p[:1].astype(np.float32))  # alone, nothing to lean on


def test_lame_on_a_folder_ignores_the_order_of_its_files(tmp_path: Path) -> None:
    from pneumocam.scoring.forward import Scores
    from pneumocam.site.lame import lame_scores

    rng = np.random.default_rng(1)
    paths = []
    for i in range(30):
        paths.append(tmp_path / f"{i:02d}.bin")
        paths[-1].write_bytes(rng.bytes(64))
    p = rng.dirichlet(np.ones(3), 30).astype(np.float32)
    f = rng.normal(0, 1, (30, 16)).astype(np.float32)
    base = lame_scores(Scores(paths, p, [], f), block=8)
    perm = rng.permutation(30)
    shuffled = lame_scores(Scores([paths[i] for i in perm], p[perm], [], f[perm]), block=8)
    np.testing.assert_allclose(shuffled.probabilities, base.probabilities[perm], atol=1e-6)
    assert not np.allclose(base.probabilities, p, atol=1e-3)
