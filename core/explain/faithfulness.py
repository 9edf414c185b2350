"""Does a heatmap point at what the decision depends on? Deletion, insertion, baselines, border mass.

Deletion and insertion (Petsiuk et al. 2018, RISE): pixels are taken in the
map's order, most important first, in fixed steps; deletion replaces them with
the image's mean grey, insertion copies them into a blurred copy. The explained
class's probability is recorded at each step; a faithful map makes deletion
fall fast (low area) and insertion rise fast (high area). A random map and a
centred Gaussian are the baselines any method must beat. All functions take
arrays and return arrays; the model enters as a ``probabilities(x)`` callable.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pneumocam.options import AUDIT_BLUR_SIGMA, BORDER_BAND

DELETION = "deletion"
INSERTION = "insertion"


#: The audit's area columns, in table order: ROAD (MoRF, LeRF and their gap), then deletion and insertion.
AREA_COLUMNS = ("morf_auc", "lerf_auc", "road_gap", "deletion_auc", "insertion_auc")


def area_text(value: float | None) -> str:
    """An audit area for a table; "-" where it was not measured (the candidate failed sanity)."""
    return "-" if value is None else f"{value:.3f}"


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first (ties in raster order, so runs repeat exactly)."""
    return np.argsort(-saliency.ravel(), kind="stable")


def series(image: np.ndarray, saliency: np.ndarray, steps: int, mode: str) -> np.ndarray:
    """``steps + 1`` images: from nothing changed to every pixel deleted (or inserted)."""
    h, w = image.shape[:2]
    order = pixel_order(cv2.resize(saliency.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR))
    if mode == DELETION:
        start, end = image, np.full_like(image, image.mean())
    elif mode == INSERTION:
        start, end = cv2.GaussianBlur(image, (0, 0), AUDIT_BLUR_SIGMA), image
    else:
        raise ValueError(f"unknown mode {mode!r}")
    out = np.repeat(start[None], steps + 1, axis=0).reshape(steps + 1, h * w, -1)
    flat_end = end.reshape(h * w, -1)
    for k in range(1, steps + 1):
        taken = order[: round(k * h * w / steps)]
        out[k, taken] = flat_end[taken]
    return out.reshape(steps + 1, *image.shape)


def curves(
    probabilities: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    maps: list[np.ndarray],
    cls: int,
    steps: int,
    mode: str,
) -> np.ndarray:
    """(len(maps), steps + 1): the explained class's probability along each map's series, one batch.

    The two ends (nothing and everything changed) do not depend on the map: they are scored once.
    """
    made = [series(image, m, steps, mode) for m in maps]
    x = np.concatenate([made[0][[0, -1]], *(s[1:-1] for s in made)])
    p = probabilities(x)[:, cls]
    inner = p[2:].reshape(len(maps), steps - 1)
    return np.column_stack([np.full(len(maps), p[0]), inner, np.full(len(maps), p[1])])


def area(curve: np.ndarray) -> np.ndarray:
    """Area under curve(s) over a [0, 1] axis of removed (or inserted) pixels."""
    c = np.atleast_2d(curve)
    return (c[:, 1:] + c[:, :-1]).sum(axis=1) / (2 * (c.shape[1] - 1))


def random_map(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def center_map(shape: tuple[int, int]) -> np.ndarray:
    """A centred Gaussian: where a chest usually is, knowing nothing about this image."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = ((yy - (h - 1) / 2) / (h / 4)) ** 2 + ((xx - (w - 1) / 2) / (w / 4)) ** 2
    return np.exp(-d / 2).astype(np.float32)


def border_share(saliency: np.ndarray, band: float = BORDER_BAND) -> float:
    """Share of the map's mass in the outer band (``band`` of each side): markers, text, borders."""
    h, w = saliency.shape
    bh, bw = max(1, round(h * band)), max(1, round(w * band))
    total = float(saliency.sum())
    if total <= 0:
        return 0.0
    inner = float(saliency[bh : h - bh, bw : w - bw].sum())
    return 1.0 - inner / total
