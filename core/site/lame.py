"""LAME over a scored folder (``evaluate --adapt``'s last step), and the content order that both it and
adaptation's measuring pass batch images in, so which images go together depends on the images alone."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pneumocam.model.artifact import file_sha256
from pneumocam.options import LAME_BLOCK, LAME_KNN
from pneumocam.scoring.forward import Scores


def content_rank(paths: Sequence[str | Path]) -> list[int]:
    """Indices of the files sorted by the SHA-256 of their bytes (files that cannot be read last).

    The measuring pass standardises each layer with its batch's statistics, and
    LAME works on blocks of images, so which images go together is part of the
    result: in this order it depends on the images alone, not on file names,
    listing order or folder layout.
    """

    def key(i: int) -> tuple[int, str]:
        try:
            return (0, file_sha256(paths[i])) if stat.S_ISREG(os.stat(paths[i]).st_mode) else (1, "")
        except OSError:
            return (1, "")

    return sorted(range(len(paths)), key=key)


def content_order(paths: Sequence[str | Path]) -> list[Path]:
    """The files in :func:`content_rank` order."""
    return [Path(paths[i]) for i in content_rank(paths)]


def lame(probabilities: np.ndarray, features: np.ndarray, knn: int = LAME_KNN, max_iter: int = 100) -> np.ndarray:
    """LAME (Boudiaf et al. 2022) on one set of images: each image's probabilities pulled towards its neighbours'.

    Maximises ``sum_i z_i . log p_i + sum_ij w_ij z_i . z_j - sum_i z_i . log z_i`` over the
    assignments ``z`` by its fixed-point iteration ``z_i = softmax(log p_i + sum_j w_ij z_j)``;
    ``w`` is the symmetrised k-nearest-neighbour graph of the cosine similarity of
    the pooled features. Only the outputs move, never a weight (no back-propagation).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    k = min(knn, len(p) - 1)
    if k < 1:
        return p.astype(np.float32)
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    neighbours = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    w = np.zeros_like(sim)
    np.put_along_axis(w, neighbours, 1.0, axis=1)
    w = (w + w.T) / 2
    log_p = np.log(np.clip(p, 1e-12, 1.0))
    z = p
    for _ in range(max_iter):
        logits = log_p + w @ z
        logits -= logits.max(axis=1, keepdims=True)
        z_next = np.exp(logits)
        z_next /= z_next.sum(axis=1, keepdims=True)
        done = np.abs(z_next - z).max() < 1e-6
        z = z_next
        if done:
            break
    return z.astype(np.float32)


def lame_scores(scores: Scores, block: int = LAME_BLOCK) -> Scores:
    """LAME over a whole scored folder, in blocks of ``block`` images taken in :func:`content_rank` order."""
    order = content_rank(scores.paths)
    out = np.array(scores.probabilities, dtype=np.float32, copy=True)
    for start in range(0, len(order), block):
        idx = order[start : start + block]
        out[idx] = lame(scores.probabilities[idx], scores.features[idx])
    return replace(scores, probabilities=out)
