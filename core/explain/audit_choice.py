"""Choosing the heatmaps a model shows from its audit: the candidate x layer-set table, best first, and the
recommendation that ``audit --record`` puts into ``model.json``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocam.config import ExplainDefaults
from pneumocam.errors import InputError
from pneumocam.explain.audit_result import AuditResult, AuditRow, Heatmaps, LayerSanity, Recommendation, candidate_name
from pneumocam.model.network import explainable_layer_names

if TYPE_CHECKING:
    from pneumocam.explain.audit import AuditPlan
    from pneumocam.scoring.predictor import Predictor

RANDOM, CENTER = "random", "center"
ROAD_AUCS = ("morf_auc", "lerf_auc")


def passes(sanity: dict[str, LayerSanity], layers: Sequence[str]) -> bool:
    return all(sanity[name].passes for name in layers)


def recommendation_table(
    road: list[dict[str, Any]],
    keys: list[tuple[str | None, str | None]],
    sanity: dict[str, dict[str, LayerSanity]],
    sets: dict[str, list[str]],
    plan: AuditPlan,
    blank: dict[str, dict[str, np.ndarray]],
) -> list[AuditRow]:
    """Candidate x layer set rows, best first: ROAD least- minus most-relevant-first area (higher: more faithful).

    A row that fails sanity has no areas (None) unless it is the model's own default, and comes last; a row that
    ROAD measured in its first round only (on half the images) comes after those measured on every image.
    ``empty_share``: how often the set's map is blank (no evidence for the explained class on any of its layers).
    """
    index = {k: j for j, k in enumerate(keys)}
    rows = []
    for m, score in plan.candidates:
        c = candidate_name(m, score)
        for s, layers in sets.items():
            j = index.get((c, s))
            r = road[j] if j is not None else dict.fromkeys(ROAD_AUCS)
            rows.append(
                AuditRow(
                    method=m,
                    score=score,
                    layer_set=s,
                    layers=layers,
                    morf_auc=r["morf_auc"],
                    lerf_auc=r["lerf_auc"],
                    road_gap=None if j is None else r["lerf_auc"] - r["morf_auc"],
                    road_images=0 if j is None else r["n_images"],
                    rho_after_head=max(sanity[c][name].rho_after_head for name in layers),
                    sanity_pass=passes(sanity[c], layers),
                    empty_share=float(np.mean(np.all([blank[c][name] for name in layers], axis=0))),
                )
            )
    most = max(r.road_images for r in rows)
    return sorted(
        rows,
        key=lambda r: (not r.sanity_pass, r.road_images < most, -r.road_gap if r.road_gap is not None else np.inf),
    )


def models_default(predictor: Predictor, sets: dict[str, list[str]]) -> Heatmaps:
    """The heatmaps the model shows today (its ``model.json`` ``explain``), named as one of the audited sets."""
    meta = predictor.meta
    layers = meta.shown_layers()
    name = next((s for s, group in sets.items() if group == layers), " + ".join(layers))
    return Heatmaps(meta.explain.method, meta.explain.score, name, layers)


def recommend(best: AuditRow | None, default: Heatmaps) -> Recommendation:
    """The best row that passes sanity; ``default`` (the model's own choice) when none does."""
    if best is None:
        why = "no method and layer set passed the sanity check"
        return Recommendation(default.method, default.score, default.layer_set, default.layers, None, True, why)
    is_default = (best.method, best.score, best.layers) == (default.method, default.score, default.layers)
    why = "the highest ROAD least- minus most-relevant-first area among the candidates that pass sanity"
    return Recommendation(best.method, best.score, best.layer_set, best.layers, best.road_gap, is_default, why)


def explain_defaults(result: AuditResult, predictor: Predictor) -> tuple[list[str], ExplainDefaults]:
    """The explainable layers and default heatmaps that put an audit's recommendation into ``model.json``.

    The last N explainable layers are stored as a count (the Space's slider moves from there); any other
    set by name.
    """
    layers = explainable_layer_names(predictor.model)
    rec = result.recommendation
    want = list(rec.layers)
    missing = [name for name in want if name not in layers]
    if missing:
        raise InputError(f"the recommended layers ({', '.join(missing)}) are not explainable layers; not recorded")
    named = () if layers[-len(want) :] == want else tuple(want)
    road = result.road
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": result.data_dir,
        "n_images": result.n_images,
        "served": result.served,
        "recommendation": asdict(rec),
        "table": [asdict(r) for r in result.table],
        "baselines": {b: {k: road[b][k] for k in ROAD_AUCS} for b in (RANDOM, CENTER)},
        "road": {k: road[k] for k in ("shares", "grid", "noise")},
        "sanity_threshold": result.sanity_threshold,
    }
    defaults = ExplainDefaults(method=rec.method, layers=len(want), score=rec.score, layer_names=named, audit=summary)
    return layers, defaults
