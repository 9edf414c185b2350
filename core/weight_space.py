"""Weight-space ensembles (WiSE-FT, Wortsman et al. 2022): one model between two checkpoints.

Fine-tuning on one hospital's batch buys validation accuracy and can cost
robustness to another batch. Averaging the weights before and after fine-tuning
(same architecture, same starting point) keeps part of both at the price of a
single model: no extra forward pass, and Grad-CAM explains it like any other.
Which share of the fine-tuning to keep is chosen on validation, by the same
rule that ranks training candidates (:func:`core.stress.selection_score`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import InputError


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The shares of fine-tuning to try, each in [0, 1], at least one, no repeats."""
    out = tuple(float(a) for a in alphas)
    if not out:
        raise InputError("give at least one share of fine-tuning to keep (e.g. 1 or 0.5,0.75,1)")
    if any(not 0.0 <= a <= 1.0 for a in out):
        raise InputError(f"each share of fine-tuning kept must lie in [0, 1], got {', '.join(map(str, out))}")
    if len(set(out)) != len(out):
        raise InputError(f"repeated share of fine-tuning in {', '.join(map(str, out))}")
    return out


def interpolate_weights(start: Sequence[np.ndarray], end: Sequence[np.ndarray], alpha: float) -> list[np.ndarray]:
    """``(1 - alpha) * start + alpha * end``, tensor by tensor.

    Non-float tensors (the random layers' seed states) are taken from ``end``:
    they are counters, not weights.
    """
    if len(start) != len(end):
        raise ValueError(f"the two checkpoints differ: {len(start)} against {len(end)} tensors")
    out = []
    for a, b in zip(start, end):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"the two checkpoints differ: a tensor of shape {a.shape} against {b.shape}")
        out.append((1.0 - alpha) * a + alpha * b if np.issubdtype(b.dtype, np.floating) else b)
    return [w.astype(b.dtype) for w, b in zip(out, end)]
