"""Grad-CAM against its defining property, and on the real architecture after save/reload."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from helpers import TINY_SPEC, overlay, xray_like
from pneumocam.errors import InputError
from pneumocam.explain.gradcam import METHODS, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, normalize_map
from pneumocam.explain.overlay import blend, colorize, upsample


@pytest.fixture(scope="module")
def gap_model() -> keras.Model:
    """conv -> global average pooling -> dense logits: the setting where Grad-CAM equals CAM."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    x = layers.Conv2D(16, 3, activation="relu", name="conv_a")(inp)
    x = layers.Conv2D(12, 3, strides=2, activation="relu", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(3, name="logits")(x)
    return keras.Model(inp, layers.Activation("softmax")(logits))


def batch(n: int = 4, size: int = 32) -> np.ndarray:
    return np.stack([np.repeat(xray_like(size, size, seed=i)[..., None], 3, -1) for i in range(n)]).astype("float32")


def test_gradcam_equals_class_activation_map(gap_model: keras.Model) -> None:
    x = batch(3)
    cam = GradCAM(gap_model, ["conv_b"])
    result = cam(x)
    acts = keras.Model(gap_model.inputs[0], gap_model.get_layer("conv_b").output)(x).numpy()
    kernel = gap_model.get_layer("logits").kernel.numpy()
    for i, c in enumerate(result.target_classes):
        expected = normalize_map(np.maximum(np.einsum("hwk,k->hw", acts[i], kernel[:, c]), 0))
        got = result.maps[0][i]
        assert expected.max() == 1.0
        rel = np.abs(got - expected).max() / np.abs(expected).max()
        assert rel < 1e-4


def test_gradcam_of_the_log_probability_weighs_each_class_against_the_others(gap_model: keras.Model) -> None:
    """d log p_c / d features = w_c - sum_j p_j w_j: the evidence for c that is not also evidence for the rest."""
    x = batch(3)
    result = GradCAM(gap_model, ["conv_b"], score="log-probability")(x)
    acts = keras.Model(gap_model.inputs[0], gap_model.get_layer("conv_b").output)(x).numpy()
    kernel = gap_model.get_layer("logits").kernel.numpy()
    logit = GradCAM(gap_model, ["conv_b"])(x)
    for i, c in enumerate(result.target_classes):
        contrast = kernel[:, c] - kernel @ result.probabilities[i]
        expected = normalize_map(np.maximum(np.einsum("hwk,k->hw", acts[i], contrast), 0))
        np.testing.assert_allclose(result.maps[0][i], expected, atol=1e-4)
    assert not np.allclose(result.maps[0], logit.maps[0], atol=1e-3)  # not the logit's map
    with pytest.raises(InputError, match="unknown CAM score 'softmax'"):
        GradCAM(gap_model, ["conv_b"], score="softmax")


@pytest.fixture(scope="module")
def flat_model() -> keras.Model:
    """conv -> flatten -> dense: the gradient differs at every position, so the methods part ways."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 3))
    x = layers.Conv2D(2, 3, activation="relu", name="conv")(inp)
    logits = layers.Dense(3, name="logits")(layers.Flatten()(x))
    return keras.Model(inp, layers.Activation("softmax")(logits))


@pytest.mark.parametrize(
    ("method", "by_hand"),
    [
        (GradCAM, lambda a, w: np.einsum("hwk,k->hw", a, w.mean(axis=(0, 1)))),
        (HiResCAM, lambda a, w: (a * w).sum(-1)),
        (LayerCAM, lambda a, w: (a * np.maximum(w, 0)).sum(-1)),
    ],
)
def test_each_method_matches_its_formula_by_hand(flat_model: keras.Model, method, by_hand) -> None:
    x = np.random.default_rng(0).uniform(0, 1, (2, 6, 6, 3)).astype("float32")
    result = method(flat_model, ["conv"])(x, target=1)
    acts = keras.Model(flat_model.inputs[0], flat_model.get_layer("conv").output)(x).numpy()
    grad = flat_model.get_layer("logits").kernel.numpy()[:, 1].reshape(4, 4, 2)  # dlogit_1 / dA, by hand
    for i in range(2):
        expected = normalize_map(np.maximum(by_hand(acts[i], grad), 0))
        np.testing.assert_allclose(result.maps[0][i], expected, atol=1e-5)


def test_the_methods_differ_where_gradients_vary(flat_model: keras.Model) -> None:
    x = np.random.default_rng(1).uniform(0, 1, (3, 6, 6, 3)).astype("float32")
    maps = {name: cls(flat_model, ["conv"])(x, target=0).maps[0] for name, cls in METHODS.items()}
    assert not np.allclose(maps["gradcam"], maps["hirescam"], atol=1e-3)
    assert not np.allclose(maps["hirescam"], maps["layercam"], atol=1e-3)


def test_targets_default_to_prediction_and_classes_differ(gap_model: keras.Model) -> None:
    x = batch(2)
    cam = GradCAM(gap_model, ["conv_b"])
    default = cam(x)
    assert np.array_equal(default.target_classes, default.probabilities.argmax(1))
    np.testing.assert_allclose(default.probabilities.sum(1), 1.0, rtol=1e-5)
    maps = [cam(x, target=k).maps[0] for k in range(3)]
    assert not np.allclose(maps[0], maps[1], atol=1e-3)
    assert not np.allclose(maps[1], maps[2], atol=1e-3)


def test_batch_equals_one_at_a_time_and_no_retracing(gap_model: keras.Model) -> None:
    x = batch(5)
    cam = GradCAMPlusPlus(gap_model, ["conv_a", "conv_b"])
    together = cam(x)
    for i in range(5):
        alone = cam(x[i])
        for layer in range(2):
            np.testing.assert_allclose(alone.maps[layer][0], together.maps[layer][i], atol=1e-5)
    cam(x[:2])
    assert cam._run.experimental_get_tracing_count() == 1


def test_all_zero_map_normalises_to_zeros() -> None:
    z = normalize_map(np.zeros((7, 7), np.float32))
    assert not np.isnan(z).any() and z.max() == 0


def test_overlay_shapes_and_blend() -> None:
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0
    up = upsample(cam, 70, 50)
    assert up.shape == (70, 50) and 0.0 <= up.min() and up.max() <= 1.0
    assert up[35, 25] > up[0, 0]
    rgb = np.full((70, 50, 3), 100, np.uint8)
    assert np.array_equal(blend(rgb, colorize(up), 0.0), rgb)
    assert np.array_equal(blend(rgb, colorize(up), 1.0), colorize(up))
    assert overlay(rgb, cam, 0.5).shape == (70, 50, 3)
    with pytest.raises(ValueError):
        blend(rgb, colorize(up), 1.5)


def test_gradcam_on_reloaded_pneumocam_model(tiny_predictor) -> None:
    """The backbone's conv layers stay reachable after save and reload (no nested model)."""
    meta = tiny_predictor.meta
    layer_names = meta.last_layers(3)
    assert layer_names[-2:] == ["block_16_project", "out_relu"]  # the deepest conv, after its activation
    cam = GradCAM(tiny_predictor.model, layer_names, meta.logits_layer)
    x = batch(2, TINY_SPEC.height)
    result = cam(x)
    assert [m.shape[0] for m in result.maps] == [2, 2, 2]
    assert all(0.0 <= m.min() and m.max() <= 1.0 for m in result.maps)
    probs = tiny_predictor.model(x, training=False).numpy()
    np.testing.assert_allclose(result.probabilities, probs, rtol=1e-4, atol=1e-6)
