"""ROAD: the linear imputation against hand-computed cases, and an oracle map ranked above a random one."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pneumocam.explain.road import (
    LERF,
    MORF,
    impute,
    removal_masks,
    road_area,
    road_curves,
    road_images,
    road_orders,
)


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours() -> None:
    img = np.arange(9, dtype=np.float32).reshape(3, 3)
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = True
    direct = img[0, 1] + img[2, 1] + img[1, 0] + img[1, 2]
    diagonal = img[0, 0] + img[0, 2] + img[2, 0] + img[2, 2]
    assert impute(img, removed)[1, 1] == pytest.approx(direct / 6 + diagonal / 12)


def test_two_removed_neighbours_solve_together_and_the_border_renormalises() -> None:
    img = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [7.0, 8.0, 9.0]], np.float32)
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = removed[1, 2] = True
    # a = (2 + 8 + 4 + b) / 6 + (1 + 3 + 7 + 9) / 12;  b (border: weights 1/6 + 1/6 + 1/6 + 1/12 + 1/12 = 2/3)
    # b * 2/3 = (3 + 9 + a) / 6 + (2 + 8) / 12
    a_coef = np.array([[1.0, -1 / 6], [-1 / 6, 2 / 3]])
    rhs = np.array([(2 + 8 + 4) / 6 + 20 / 12, 12 / 6 + 10 / 12])
    a, b = np.linalg.solve(a_coef, rhs)
    out = impute(img, removed)
    assert out[1, 1] == pytest.approx(a, rel=1e-6) and out[1, 2] == pytest.approx(b, rel=1e-6)
    assert out[0, 0] == 1.0  # known pixels untouched


def test_noise_is_added_to_the_imputed_pixels_only_and_the_channels_stay_grey() -> None:
    img = np.repeat(np.linspace(0, 255, 64 * 64, dtype=np.float32).reshape(64, 64)[..., None], 3, -1)
    removed = np.zeros((64, 64), bool)
    removed[20:40, 20:40] = True
    clean, noisy = impute(img, removed), impute(img, removed, noise=5.0, seed=1)
    assert np.array_equal(noisy[~removed], img[~removed])
    assert 3.0 < np.std(noisy[removed][:, 0] - clean[removed][:, 0]) < 7.0
    assert np.array_equal(noisy[..., 0], noisy[..., 2])
    np.testing.assert_allclose(clean[removed][:, 0], img[removed][:, 0], atol=1.0)  # a ramp is its own imputation


def test_masks_take_the_top_or_the_bottom_of_the_map() -> None:
    sal = np.arange(16, dtype=np.float32).reshape(4, 4)
    morf = removal_masks(sal, (4, 4), [0.25, 0.5], MORF)
    lerf = removal_masks(sal, (4, 4), [0.25], LERF)
    assert morf[0].sum() == 4 and morf[0][3].all() and morf[1][2:].all()
    assert lerf[0][0].all()
    assert road_area(np.array([1.0, 0.5, 0.0]), [0.5, 1.0])[0] == pytest.approx(0.5)


def gap_linear_model(size: int) -> keras.Model:
    """A 1x1 ReLU conv, global average pooling and a linear layer: its true CAM is the conv output times the weight."""
    inp = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(1, 1, activation="relu", use_bias=False)
    dense = keras.layers.Dense(2)
    pooled = keras.layers.GlobalAveragePooling2D()(conv(inp))
    model = keras.Model(inp, keras.layers.Activation("softmax")(dense(pooled)))
    conv.set_weights([np.full((1, 1, 3, 1), 1 / (3 * 255), np.float32)])
    dense.set_weights([np.array([[60.0, -60.0]], np.float32), np.array([-9.0, 9.0], np.float32)])
    return model


def test_road_ranks_the_true_cam_of_a_gap_linear_model_above_a_random_map() -> None:
    size, grid = 32, 16
    model = gap_linear_model(size)
    rng = np.random.default_rng(0)
    shares = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    gaps = []
    for i in range(4):
        x = rng.uniform(0, 60, (size, size, 1))
        r, c = rng.integers(0, size - 10, 2)
        x[r : r + 10, c : c + 10] = rng.uniform(200, 255, (10, 10, 1))  # the evidence: a bright patch
        x = np.repeat(x, 3, -1).astype(np.float32)
        oracle = x.mean(-1) / 255 * 60  # conv output times the class-0 weight: the exact CAM
        maps = [oracle, rng.random((size, size)).astype(np.float32)]

        def probabilities(batch: np.ndarray) -> np.ndarray:
            return model.predict(batch, verbose=0)

        assert probabilities(x[None])[0, 0] > 0.9
        morf = road_area(road_curves(probabilities, x, maps, 0, shares, MORF, grid, 2.55, seed=i), shares)
        lerf = road_area(road_curves(probabilities, x, maps, 0, shares, LERF, grid, 2.55, seed=i), shares)
        assert morf[0] < morf[1] and lerf[0] > lerf[1], (morf, lerf)
        both = road_orders(probabilities, x, maps, 0, shares, (MORF, LERF), grid, 2.55, seed=i)  # one batch
        np.testing.assert_allclose(road_area(both[MORF], shares), morf, atol=1e-6)
        np.testing.assert_allclose(road_area(both[LERF], shares), lerf, atol=1e-6)
        gaps.append((lerf - morf)[0] - (lerf - morf)[1])
    assert min(gaps) > 0.2


def test_road_images_keep_the_kept_pixels_and_fill_the_removed_ones_smoothly() -> None:
    rng = np.random.default_rng(1)
    img = np.repeat(rng.uniform(0, 255, (32, 32, 1)), 3, -1).astype(np.float32)
    sal = np.zeros((32, 32), np.float32)
    sal[8:24, 8:24] = 1.0
    (out,) = road_images(img, sal, [0.25], MORF, 16, 0.0, seed=0)
    assert np.array_equal(out[:8], img[:8]) and np.array_equal(out[:, 24:], img[:, 24:])
    assert out[8:24, 8:24].std() < img[8:24, 8:24].std() / 2  # imputed: smooth where the noise was
    assert 0 <= out.min() and out.max() <= 255
    clean = road_curves(lambda b: np.full((len(b), 2), 0.5), img, [sal, sal], 1, [0.25], LERF, 16, 1.0, clean=0.7)
    assert clean.shape == (2, 2) and clean[0, 0] == 0.7
