"""ROAD: remove pixels in a map's order and fill them from their neighbours (Rong et al. 2022).

Deletion with a mean grey fill rewards scattered removal: the removed pixels
leak through their neighbours, and the model sees the fill's own edges.
ROAD fills the removed pixels by *noisy linear imputation*: each removed pixel
is the weighted mean of its eight neighbours (direct ones 1/6, diagonal ones
1/12, renormalised at the image border), solved for all removed pixels at once
as one sparse linear system, plus a little noise. What the model loses is then
the information removed, not an artefact of the fill.

Most-relevant-first (MoRF) removal should make the explained class's
probability fall fast (low area); least-relevant-first (LeRF) should keep it
(high area). All functions take arrays and return arrays; the model enters as
a ``probabilities(x)`` callable, as in :mod:`pneumocam.explain.faithfulness`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

MORF, LERF = "morf", "lerf"
#: Neighbour offsets and weights of the linear imputation: direct neighbours 1/6, diagonal ones 1/12.
NEIGHBOURS = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)


def impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """``image`` (h, w[, c]) with the ``removed`` (h, w) pixels replaced by the linear imputation, plus noise.

    Every removed pixel equals the weighted mean of its neighbours (removed or
    not): one sparse system, solved exactly. ``noise``: the standard deviation
    of the Gaussian noise added to the imputed pixels (grey: one draw for all
    channels).
    """
    img = np.asarray(image, np.float64)
    flat = img.reshape(img.shape[0], img.shape[1], -1)
    h, w = removed.shape
    ys, xs = np.nonzero(removed)
    n = len(ys)
    out = flat.copy()
    if n == 0:
        return out.reshape(img.shape).astype(np.float32)
    if n == h * w:  # nothing to impute from: the image's mean
        out[:] = flat.mean(axis=(0, 1))
        return out.reshape(img.shape).astype(np.float32)
    index = np.full((h, w), -1)
    index[ys, xs] = np.arange(n)
    diag = np.zeros(n)
    rhs = np.zeros((n, flat.shape[2]))
    rows, cols, vals = [], [], []
    for dy, dx, weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        i, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        diag[i] += weight
        j = index[ny, nx]
        unknown = j >= 0
        rows.append(i[unknown])
        cols.append(j[unknown])
        vals.append(np.full(int(unknown.sum()), -weight))
        np.add.at(rhs, i[~unknown], weight * flat[ny[~unknown], nx[~unknown]])
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    a = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    # Symmetric (each pair of neighbours shares one weight): a symmetric ordering factors it faster.
    solved = sla.splu(a, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(rhs)
    if noise > 0:
        solved = solved + np.random.default_rng(seed).normal(0.0, noise, (n, 1))
    out[ys, xs] = solved
    return out.reshape(img.shape).astype(np.float32)


def removal_masks(saliency: np.ndarray, size: tuple[int, int], shares: Sequence[float], order: str) -> np.ndarray:
    """``(len(shares), h, w)`` masks: the top (MoRF) or bottom (LeRF) ``share`` of the map's pixels at image size."""
    h, w = size
    s = cv2.resize(saliency.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR).ravel()
    ranked = np.argsort(-s if order == MORF else s, kind="stable")
    masks = np.zeros((len(shares), h * w), bool)
    for k, share in enumerate(shares):
        masks[k, ranked[: round(share * h * w)]] = True
    return masks.reshape(len(shares), h, w)


def road_images(
    image: np.ndarray, saliency: np.ndarray, shares: Sequence[float], order: str, grid: int, noise: float, seed: int
) -> np.ndarray:
    """The image with each share removed in the map's order and imputed: ``(len(shares), h, w, c)``.

    Removal and imputation run on a ``grid`` x ``grid`` lattice of cells (the
    image area-averaged to it): the maps are 7x7 or 14x14, so finer cells only
    cost solve time (a 224 px solve takes up to half a second, a 56 px one a few
    milliseconds). The solved cells are upsampled bilinearly into the removed
    pixels, plus grey noise of ``noise`` levels; the kept pixels stay exact.
    """
    h, w = image.shape[:2]
    img = np.asarray(image, np.float32).reshape(h, w, -1)
    coarse = cv2.resize(img, (grid, grid), interpolation=cv2.INTER_AREA).reshape(grid, grid, -1)
    rng = np.random.default_rng(seed)
    out = np.repeat(img[None], len(shares), axis=0)
    for k, cells in enumerate(removal_masks(saliency, (grid, grid), shares, order)):
        fill = cv2.resize(impute(coarse, cells), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
        removed = cv2.resize(cells.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        fill = fill + rng.normal(0.0, noise, (h, w, 1)).astype(np.float32) if noise > 0 else fill
        out[k][removed] = np.clip(fill[removed], 0.0, 255.0)
    return out.reshape(len(shares), *image.shape)


def road_curves(
    probabilities: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    cls: int,
    shares: Sequence[float],
    order: str,
    grid: int,
    noise: float,
    seed: int = 0,
    clean: float | None = None,
) -> np.ndarray:
    """(len(maps), len(shares) + 1): the explained class's probability, nothing removed first, one batch.

    ``clean``: that probability for the image itself, when the caller has it (else it is scored too).
    """
    return road_orders(probabilities, image, maps, cls, shares, (order,), grid, noise, seed, clean)[order]


def road_orders(
    probabilities: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    cls: int,
    shares: Sequence[float],
    orders: Sequence[str],
    grid: int,
    noise: float,
    seed: int = 0,
    clean: float | None = None,
) -> dict[str, np.ndarray]:
    """:func:`road_curves` for several orders (MoRF and LeRF) from one batch: fewer, fuller forward passes."""
    removed = np.concatenate(
        [road_images(image, m, shares, order, grid, noise, seed) for order in orders for m in maps]
    )
    x = removed if clean is not None else np.concatenate([image[None], removed])
    p = probabilities(x)[:, cls]
    first, rest = (clean, p) if clean is not None else (p[0], p[1:])
    rest = rest.reshape(len(orders), len(maps), len(shares))
    return {o: np.column_stack([np.full(len(maps), first), rest[k]]) for k, o in enumerate(orders)}


def road_area(curve: np.ndarray, shares: Sequence[float]) -> np.ndarray:
    """Area under curve(s) over the removed share (0, then ``shares``; trapezoids, normalised to [0, 1])."""
    c = np.atleast_2d(curve)
    x = np.concatenate([[0.0], np.asarray(shares, float)])
    return np.trapezoid(c, x, axis=1) / (x[-1] - x[0])
