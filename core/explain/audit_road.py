"""ROAD over the audit's candidates: two rounds (every candidate on every other image, then the finalists on the
rest), and each candidate's areas summarised per predicted class and nested by layer set for audit.json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocam.explain.road import LERF, MORF, road_area, road_orders
from pneumocam.options import ROAD_FINALISTS

if TYPE_CHECKING:
    from pneumocam.explain.audit import AuditPlan


def road_finalists(auc: dict[str, np.ndarray], keys: list[tuple[str | None, str | None]], default: int) -> list[int]:
    """The columns ROAD measures on every image: the model's default, the best first-round gaps, the baselines."""
    gap = np.nanmean(auc[LERF], axis=0) - np.nanmean(auc[MORF], axis=0)
    ranked = [j for j in np.argsort(-gap, kind="stable") if keys[j][1] is not None and j != default]
    baselines = [j for j, (_, s) in enumerate(keys) if s is None]
    return sorted({default, *ranked[:ROAD_FINALISTS], *baselines})


def summarise(
    values: dict[str, np.ndarray], curves: dict[str, np.ndarray], j: int, targets: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """One candidate's (column ``j``) mean areas over the images it was measured on, per predicted class, curves."""
    done = ~np.isnan(next(iter(values.values()))[:, j])
    entry: dict[str, Any] = {f"{k}_auc": float(v[done, j].mean()) for k, v in values.items()}
    entry["n_images"] = int(done.sum())
    entry["per_class"] = {
        classes[c]: {
            "n": int((done & (targets == c)).sum()),
            **{f"{k}_auc": float(v[done & (targets == c), j].mean()) for k, v in values.items()},
        }
        for c in range(len(classes))
        if (done & (targets == c)).any()
    }
    entry.update({f"{k}_curve": curves[k][j].round(5).tolist() for k in values})
    return entry


def nest(entries: list[dict[str, Any]], keys: list[tuple[str | None, str | None]], shown_set: str) -> dict[str, Any]:
    """``{candidate: {"sets": {set: entry}, <the shown set's areas>}, "random": entry, "center": entry}``.

    The shown set is the recommended one where the candidate has it (it passed sanity there), else its first.
    """
    out: dict[str, Any] = {}
    for entry, (name, s) in zip(entries, keys):
        if s is None:
            out[name] = entry
        else:
            out.setdefault(name, {"sets": {}})["sets"][s] = entry
    for block in out.values():
        if "sets" in block:
            shown = shown_set if shown_set in block["sets"] else next(iter(block["sets"]))
            block.update({k: v for k, v in block["sets"][shown].items() if k.endswith("_auc")})
            block["layer_set"] = shown
    return out


@dataclass
class RoadAreas:
    """ROAD per image and key (NaN where not measured), and each key's mean curve, for both orders."""

    values: dict[str, np.ndarray]  # "morf" / "lerf": (images, keys)
    curves: dict[str, np.ndarray]  # "morf" / "lerf": (keys, shares + 1)
    grid: int


def road_rounds(
    probabilities: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    probs: np.ndarray,
    keys: list[tuple[str | None, str | None]],
    border_key: int,
    candidate_map: Callable[..., np.ndarray],
    plan: AuditPlan,
    on_step: Callable[[int], None] | None,
) -> RoadAreas:
    """ROAD in two rounds: every key on every other image, then the finalists on the rest."""
    orders = (MORF, LERF)
    auc = {order: np.full((len(x), len(keys)), np.nan) for order in orders}
    curve_sum = {order: np.zeros((len(keys), len(plan.shares) + 1)) for order in orders}
    grid = min(plan.grid, *x.shape[1:3])
    targets = probs.argmax(1)

    def measure(i: int, columns: list[int]) -> None:
        """ROAD of image ``i`` for the keys in ``columns``, both orders from one batch."""
        candidates = [candidate_map(i, *keys[j]) for j in columns]
        cls = int(targets[i])
        found = road_orders(
            probabilities,
            x[i],
            candidates,
            cls,
            plan.shares,
            orders,
            grid,
            plan.noise,
            plan.seed + i,
            float(probs[i, cls]),
        )
        for order in orders:
            auc[order][i, columns] = road_area(found[order], plan.shares)
            curve_sum[order][columns] += found[order]
        if on_step:
            on_step(1)

    for i in range(0, len(x), 2):
        measure(i, list(range(len(keys))))
    finalists = road_finalists(auc, keys, border_key)
    for i in range(1, len(x), 2):
        measure(i, finalists)
    measured = (~np.isnan(auc[MORF])).sum(axis=0)
    return RoadAreas(
        {"morf": auc[MORF], "lerf": auc[LERF]},
        {"morf": curve_sum[MORF] / measured[:, None], "lerf": curve_sum[LERF] / measured[:, None]},
        grid,
    )
