"""Test-time views: each view undone on the heatmaps, averaged by every entry point, switched off by --no-views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from helpers import run, save_gray, xray_like
from pneumocam.config import PredictDefaults
from pneumocam.errors import InputError, ModelLoadError
from pneumocam.explain.explainer import Explainer
from pneumocam.explain.gradcam import GradCAM, normalize_map
from pneumocam.model.artifact import update
from pneumocam.model.views import check_views, make_views, map_back, view
from pneumocam.options import VALIDITY_LAYER
from pneumocam.scoring.forward import compile_forward
from pneumocam.scoring.predictor import load_predictor


def smooth_maps(n: int = 2, size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.stack([np.sin(2 * yy + k) * np.cos(3 * xx - k) + 1.5 for k in range(n)]).astype("float32")


def test_view_names_are_checked() -> None:
    assert check_views(["identity", "jpeg-75", "blur-0.7", "zoom-1.1", "flip"])[1] == "jpeg-75"
    for bad in (["jpeg-75"], ["identity", "jpeg-0"], ["identity", "zoom-0.9"], ["identity", "sharpen"]):
        with pytest.raises(InputError):
            check_views(bad)
    with pytest.raises(InputError, match="once"):
        check_views(["identity", "flip", "flip"])


@pytest.mark.parametrize("name", ["flip", "zoom-1.25", "blur-0.7"])
def test_map_back_undoes_each_view(name: str) -> None:
    m = smooth_maps()
    seen = view(tf.constant(m[..., None]), name)[..., 0]
    back = map_back(tf.concat([tf.constant(m), seen], axis=0), ["identity", name]).numpy()
    tolerance = 0.15 if name == "blur-0.7" else 0.05  # blur leaves the map blurred; zoom re-samples it
    assert np.abs(back - m).max() < tolerance
    if name == "flip":  # the mirrored map, not mapped back, would be far off
        assert np.abs(seen.numpy() - m).max() > 0.5


def test_zoom_map_covers_only_the_centre() -> None:
    m = np.zeros((1, 8, 8), np.float32)
    back = map_back(tf.concat([tf.constant(m), tf.ones((1, 8, 8))], axis=0), ["identity", "zoom-2"]).numpy()[0]
    assert back[0, 0] == pytest.approx(0.0) and back[4, 4] == pytest.approx(0.5, abs=0.05)


@pytest.fixture(scope="module")
def gap_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = layers.Conv2D(8, 3, activation="relu", name="conv_a")(x)
    x = layers.Conv2D(6, 3, strides=2, activation="relu", name="conv_b")(x)
    logits = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, layers.Activation("softmax")(logits))


def images(n: int = 3, size: int = 32) -> np.ndarray:
    return np.stack([np.repeat(xray_like(size, size, seed=i)[..., None], 3, -1) for i in range(n)]).astype("float32")


def test_forward_averages_the_views(gap_model: keras.Model) -> None:
    x = images()
    names = ("identity", "flip", "jpeg-60", "zoom-1.2")
    got = compile_forward(gap_model, views=names)(x).numpy()
    each = [gap_model(view(tf.constant(x), n), training=False).numpy() for n in names]
    np.testing.assert_allclose(got, np.mean(each, axis=0), atol=1e-6)
    assert np.abs(got - each[0]).max() > 1e-4  # the views did change something
    np.testing.assert_allclose(compile_forward(gap_model)(x).numpy(), each[0], atol=1e-6)
    assert make_views(tf.constant(x), names).shape[0] == 4 * len(x)


def test_gradcam_explains_the_averaged_logit(gap_model: keras.Model) -> None:
    """For conv -> GAP -> linear, each view's map is its CAM; the flipped one is flipped back, then averaged."""
    x = images(2)
    result = GradCAM(gap_model, ["conv_b"], views=("identity", "flip"))(x)
    probe = keras.Model(gap_model.inputs[0], gap_model.get_layer("conv_b").output)
    kernel = gap_model.get_layer("logits").kernel.numpy()
    plain, mirrored = probe(x).numpy(), probe(x[:, :, ::-1]).numpy()
    averaged = (gap_model(x).numpy() + gap_model(x[:, :, ::-1]).numpy()) / 2
    np.testing.assert_allclose(result.probabilities, averaged, atol=1e-5)
    for i, c in enumerate(result.target_classes):
        assert c == averaged[i].argmax()
        cam = [np.maximum(np.einsum("hwk,k->hw", a[i], kernel[:, c]), 0) for a in (plain, mirrored)]
        expected = normalize_map(cam[0] + cam[1][:, ::-1])
        np.testing.assert_allclose(result.maps[0][i], expected, atol=1e-4)


@pytest.fixture(scope="module")
def viewed_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("viewed") / "model"
    shutil.copytree(tiny_model_dir, out)
    views = PredictDefaults(views=("identity", "jpeg-75", "blur-0.7", "zoom-1.1"))
    update(out, lambda meta: setattr(meta, "predict", views))
    return out


def test_every_entry_point_gives_one_image_the_same_averaged_call(viewed_model: Path, tmp_path: Path) -> None:
    loaded = load_predictor(viewed_model)
    assert loaded.views == ("identity", "jpeg-75", "blur-0.7", "zoom-1.1")
    rgb = np.repeat(xray_like(64, 64, seed=5)[..., None], 3, -1)
    probs, validity = loaded.score_images([rgb])[0]
    row = [probs[c] for c in loaded.meta.classes]
    plain = compile_forward(loaded.model, summary_layer=VALIDITY_LAYER)(loaded.model_input(rgb)[None])
    assert np.abs(plain[0].numpy()[0] - row).max() > 1e-5  # the views moved the call's probabilities
    # the validity score is the image's own, whatever the views
    assert validity.ood_score == pytest.approx(float(loaded.validity_stats.scores(plain[1].numpy())[0]), rel=1e-4)


def test_every_path_gives_an_original_size_upload_one_call_validity_and_heatmap(
    viewed_model: Path, tmp_path: Path
) -> None:
    """The one Predictor behind them all: scoring, both engines' code, evaluate, stress, predict, the Explainer,
    the Python API and a derived (site) predictor give one file the same probabilities, validity and heatmap."""
    import pneumocam
    from pneumocam.images.data import scan_dataset
    from pneumocam.images.readers import read_image_and_header
    from pneumocam.reports.evaluation import evaluate_scan
    from pneumocam.reports.stress import CLEAN, stress_probabilities
    from pneumocam.scoring.ray_engine import PROBABILITIES, BatchScorer

    predictor = load_predictor(viewed_model)
    assert predictor.spec.jpeg_quality == 75  # what a new model records: the copies' JPEG step
    data = tmp_path / "data"
    for k, cls in enumerate(predictor.classes):  # an "original": larger than the model input, another aspect
        save_gray(data / cls / f"{cls.lower()}.png", xray_like(150, 120, seed=40 + k))
    path = data / "NORMAL" / "normal.png"
    rgb, header = read_image_and_header(path)
    probs, validity = predictor.score_images([rgb], [header])[0]
    ref = np.array([probs[c] for c in predictor.classes])

    def same(got, ood: float | None) -> None:
        np.testing.assert_allclose(np.asarray(got, dtype=float), ref, atol=1e-5)
        assert ood == pytest.approx(validity.ood_score, rel=1e-4)

    scores = predictor.score([path])
    same(scores.probabilities[0], scores.ood_scores[0])
    rows = {p.file: p for p in evaluate_scan(predictor, scan_dataset(data)).predictions}
    same([rows["NORMAL/normal.png"].probabilities[c] for c in predictor.classes], rows["NORMAL/normal.png"].ood_score)
    actor = BatchScorer(str(viewed_model), predictor.meta.weights_sha256, threads=1)
    out = actor({"path": np.array([str(path)], dtype=object)})
    same(out[PROBABILITIES][0], float(out["ood_score"][0]))
    kept, stressed, _ = stress_probabilities(predictor, [path], [CLEAN])
    np.testing.assert_allclose(stressed[CLEAN][0], ref, atol=1e-5)
    res = run("predict", path, "--json", "--model", viewed_model)
    call = json.loads(res.stdout)[0]
    same([call["probabilities"][c] for c in predictor.classes], call["ood_score"])

    explained = Explainer(predictor).explain_file(path)
    same([explained.probabilities[c] for c in predictor.classes], explained.validity.ood_score)
    api = pneumocam.load(viewed_model)
    via_api = api.explain(path)
    same([via_api.probabilities[c] for c in predictor.classes], via_api.validity.ood_score)
    call = api.predict([path])[0]
    same([call.probabilities[c] for c in predictor.classes], call.validity.ood_score)
    site = Explainer(predictor.derived(model=predictor.model)).explain_file(path)
    for other in (via_api, site):
        assert other.layer_names == explained.layer_names
        for a, b in zip(other.heatmaps, explained.heatmaps):
            np.testing.assert_allclose(a, b, atol=1e-4)
    assert any(m.max() > 0 for m in explained.heatmaps)


def test_predict_and_evaluate_switch_views_off(viewed_model: Path, dataset_download, tmp_path: Path) -> None:
    import pneumocam

    image = save_gray(tmp_path / "x.png", xray_like(90, 70, seed=2))
    calls = {}
    for flag in ("--views", "--no-views"):
        res = run("predict", image, "--json", "--model", viewed_model, flag)
        calls[flag] = json.loads(res.stdout)[0]["probabilities"]
    assert calls["--views"] != calls["--no-views"]
    alone = pneumocam.load(viewed_model, use_views=False).predict([image])[0].probabilities
    with pytest.warns(DeprecationWarning, match="use_views"):
        older = pneumocam.load(viewed_model, views=False).predict([image])[0].probabilities  # the name before
    for c, p in calls["--no-views"].items():
        assert alone[c] == pytest.approx(p, abs=1e-5) and older[c] == pytest.approx(p, abs=1e-5)
    assert "test-time views: identity, jpeg-75" in run("predict", image, "--model", viewed_model).stderr
    data, _ = dataset_download
    out = tmp_path / "report"
    run("evaluate", data, "--model", viewed_model, "--out", out, "--no-views")
    assert json.loads((out / "metrics.json").read_text())["provenance"]["views"] == ["identity"]


def test_a_model_json_naming_an_unknown_view_is_refused(viewed_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(viewed_model, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["predict"]["views"] = ["identity", "sharpen"]
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="predict.views"):
        load_predictor(bad)


def test_the_card_and_the_space_say_which_views_score(viewed_model: Path, tiny_predictor) -> None:
    from pneumocam.deploy.space_config import model_line
    from pneumocam.reports.card import model_card

    loaded = load_predictor(viewed_model)
    card = model_card(loaded.meta)
    assert "## Test-time views" in card and "`jpeg-75`" in card
    assert "4 test-time views" in model_line(loaded)
    assert "## Test-time views" not in model_card(tiny_predictor.meta) and "views" not in model_line(tiny_predictor)


def test_the_rule_prefers_a_stable_set_and_else_the_steadiest() -> None:
    from pneumocam.reports.stress import CLEAN, PERTURBATIONS
    from pneumocam.training.view_choice import candidate_sets, judge

    union = ("identity", "jpeg-75", "blur-0.7", "zoom-1.1")
    assert len(candidate_sets(union[1:])) == 8
    y = np.arange(100) % 3
    right = np.eye(3)[y] * 0.9 + 0.03
    wrong = 0.45 * np.eye(3)[(y + 1) % 3] + 0.35 * np.eye(3)[y] + 0.2 * np.eye(3)[(y + 2) % 3]  # narrowly wrong
    per_view = {}
    for name in (CLEAN, *PERTURBATIONS):
        views = np.stack([right] * 4)
        if name == "jpeg-50":  # the image alone flips 10 calls under JPEG; the blurred view flips none
            views[0, :10] = wrong[:10]
            views[1, :10] = wrong[:10]
            views[3, :10] = wrong[:10]
        per_view[name] = views
    best, shifts = judge(per_view, y, ["B", "N", "V"], union)
    assert shifts[("identity",)]["max_changed_encoding"] == pytest.approx(0.10)
    assert "blur-0.7" in best and shifts[best]["max_changed_encoding"] <= 0.03
    assert best == ("identity", "blur-0.7")  # the stable sets tie on the score: the fewest views win


def test_choose_views_cli_records_the_choice(tiny_model_dir: Path, tmp_path: Path) -> None:
    from helpers import make_dataset

    make_dataset(tmp_path / "data", "download", per_class=10)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    res = run("choose-views", tmp_path / "data", "--model-dir", model)
    meta = json.loads((model / "model.json").read_text())
    views = meta["predict"]["views"]
    assert views[0] == "identity" and f"chosen: {', '.join(views)}" in res.stdout
    assert len(meta["predict"]["choice"]["table"]) == 8
    assert meta["metrics"]["validation_shift"]["perturbations"]["original"]["changed"] >= 0
    assert meta["metrics"]["validation"]["n_images"] == meta["predict"]["choice"]["n_images"]
    assert load_predictor(model).views == tuple(views)
