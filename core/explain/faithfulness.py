"""What a faithful heatmap must beat, and where it rests: the baseline maps, the border mass, the area columns.

ROAD (:mod:`pneumocam.explain.road`) measures faithfulness; a random map and a
centred Gaussian (which knows nothing of the image) are the baselines every
method must beat. RISE deletion and insertion, kept as secondary figures until
issue 31, left the audit: their grey fill is the artefact ROAD removes, they
never decided a choice, and they cost a third of an audit as served
(docs/heatmaps.md).
"""

from __future__ import annotations

import numpy as np

from pneumocam.options import BORDER_BAND

#: The audit's area columns, in table order: ROAD most- and least-relevant-first, and their gap.
AREA_COLUMNS = ("morf_auc", "lerf_auc", "road_gap")


def area_text(value: float | None) -> str:
    """An audit area for a table; "-" where it was not measured (the candidate failed sanity)."""
    return "-" if value is None else f"{value:.3f}"


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
