"""Sanity check of saliency maps (Adebayo et al. 2018): randomise the model and the map must change.

Cascading randomisation: the head first (logits and dense layers), then the
backbone's last blocks, deepest first, each stage keeping the earlier ones
random. A map that stays similar to the trained model's map while the weights
that make the decision are noise shows the image, not the model. Similarity is
the Spearman rank correlation and the SSIM between the maps.
"""

from __future__ import annotations

import re

import cv2
import keras
import numpy as np
from scipy.stats import spearmanr

from pneumocam.config import FEATURES_LAYER

HEAD = "head"


def stages(model: keras.Model, n_blocks: int) -> list[tuple[str, list[str]]]:
    """``(stage name, layers it randomises)``, top down: the head, ``Conv_1``, then ``block_16``, ``block_15``..."""
    names = [layer.name for layer in model.layers]
    after = names[names.index(FEATURES_LAYER) + 1 :]
    out = [(HEAD, [n for n in after if model.get_layer(n).weights])]
    out.append(("Conv_1", [n for n in names if n.startswith("Conv_1")]))
    blocks = sorted({int(m.group(1)) for n in names if (m := re.match(r"block_(\d+)_", n))}, reverse=True)
    for b in blocks[: max(0, n_blocks - 1)]:
        out.append((f"block_{b}", [n for n in names if n.startswith(f"block_{b}_")]))
    return [(name, layers) for name, layers in out if layers]


def randomize(model: keras.Model, layer_names: list[str], seed: int) -> None:
    """Replace the trainable weights of these layers with Gaussian noise of the same scale, in place.

    Batch-norm moving statistics stay, so activations keep their range and the
    map is not trivially zero.
    """
    rng = np.random.default_rng(seed)
    for name in layer_names:
        layer = model.get_layer(name)
        for var in layer.trainable_weights or layer.weights:
            if "moving" in var.path:
                continue
            w = np.asarray(var.numpy())
            scale = float(w.std()) or 1.0
            var.assign(rng.normal(0.0, scale, w.shape).astype(w.dtype))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """|Spearman rho| of two maps; a flat map carries no ranking, so 0."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(abs(spearmanr(a.ravel(), b.ravel()).statistic))


def ssim(a: np.ndarray, b: np.ndarray, size: int = 64) -> float:
    """Structural similarity of two [0, 1] maps at a common size (Gaussian window, sigma 1.5)."""
    a = cv2.resize(a.astype(np.float64), (size, size), interpolation=cv2.INTER_LINEAR)
    b = cv2.resize(b.astype(np.float64), (size, size), interpolation=cv2.INTER_LINEAR)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())
