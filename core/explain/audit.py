"""The heatmap audit: sanity, faithfulness and border shortcuts of every CAM method and layer set, as served.

For a sample of images, scored and explained as every entry point serves them
(input pipeline, test-time views, explained score): each candidate's maps (a CAM
method explaining the model's score, or each score asked for) on each audited layer;
the sanity check (:mod:`pneumocam.explain.sanity`) per candidate and layer, the
whole cascade for the model's own default; ROAD most- and least-relevant-first
areas (:mod:`pneumocam.explain.road`) per candidate and layer set that passed,
with a random and a centred baseline (:mod:`pneumocam.explain.faithfulness`); how
often each set's map is blank; the share of each default map in the image border.
The audit then recommends the candidate and layer set with the widest ROAD gap
that passes sanity. Files are written by :func:`write_audit` (audit.json, two
plots, a page of border-flagged images, index.html).
"""

from __future__ import annotations

import html
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pneumocam.atomic import save_figure, write_bytes, write_json, write_text
from pneumocam.config import ExplainDefaults, check_cam_method, check_cam_score
from pneumocam.errors import InputError, none_readable
from pneumocam.explain.explainer import Explainer
from pneumocam.explain.faithfulness import AREA_COLUMNS, area_text, border_share, center_map, random_map
from pneumocam.explain.gradcam import METHODS
from pneumocam.explain.overlay import encode_png, mean_map
from pneumocam.explain.pages import compose_page, explanation_row
from pneumocam.explain.road import LERF, MORF, road_area, road_orders
from pneumocam.explain.sanity import HEAD, randomize, rank_correlation, ssim, stages
from pneumocam.images.data import Sample
from pneumocam.images.readers import read_image
from pneumocam.model.network import explainable_layer_names
from pneumocam.options import (
    AUDIT_BLOCKS,
    AUDIT_CASCADE_IMAGES,
    AUDIT_LIMIT,
    AUDIT_SEED,
    BORDER_BAND,
    BORDER_FLAG,
    CAM_METHODS,
    DEFAULT_CAM_SCORE,
    DEFAULT_LAYERS,
    DEFAULT_OPACITY,
    GALLERY_LIMIT,
    ROAD_FINALISTS,
    ROAD_GRID,
    ROAD_NOISE,
    ROAD_SHARES,
    SANITY_MAX_RHO,
)
from pneumocam.plots import audit_curves_figure, sanity_figure
from pneumocam.scoring.predictor import Predictor

AUDIT_FILE = "audit.json"
SANITY_PLOT = "sanity.png"
CURVES_PLOT = "curves.png"
BORDER_PAGE = "border_flagged.png"
INDEX = "index.html"
AUDIT_FILES = (AUDIT_FILE, SANITY_PLOT, CURVES_PLOT, BORDER_PAGE, INDEX)
RANDOM, CENTER = "random", "center"
ROAD_AUCS = ("morf_auc", "lerf_auc")
CAM_BATCH = 16


@dataclass(frozen=True)
class AuditPlan:
    """What to audit: methods, explained scores, the multi-layer set's size, ROAD, randomisation, seed.

    ``scores``: empty (the default) audits the score the model explains (``model.json`` ``explain.score``);
    name both of :data:`pneumocam.options.CAM_SCORES` to let the audit choose it too (twice the time).
    """

    methods: tuple[str, ...] = CAM_METHODS
    scores: tuple[str, ...] = ()
    n_layers: int = DEFAULT_LAYERS
    shares: tuple[float, ...] = ROAD_SHARES
    grid: int = ROAD_GRID
    noise: float = ROAD_NOISE
    blocks: int = AUDIT_BLOCKS
    seed: int = AUDIT_SEED

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "methods": ",".join(self.methods),
            "scores": ",".join(self.scores),
            "shares": ",".join(map(str, self.shares)),
        }

    def __post_init__(self) -> None:
        if not self.methods:
            raise InputError("name at least one CAM method to audit")
        for method in self.methods:
            check_cam_method(method)
        for score in self.scores:
            check_cam_score(score)

    def for_model(self, score: str) -> AuditPlan:
        """This plan with its scores named: the model's own ``score`` when none was asked for."""
        return self if self.scores else replace(self, scores=(score,))

    @property
    def candidates(self) -> list[tuple[str, str]]:
        """(method, score) pairs, each audited on every layer set."""
        return [(m, s) for m in self.methods for s in self.scores]


def candidate_name(method: str, score: str) -> str:
    """How a method explaining a score is named in reports: the method alone for the textbook logit."""
    return method if score == DEFAULT_CAM_SCORE else f"{method} ({score})"


def default_set_name(n_layers: int) -> str:
    return f"last {n_layers} conv"


def finer_layer(predictor: Predictor) -> str | None:
    """The deepest explainable layer at a finer grid than the deepest one (14x14 against 7x7 at 224 px)."""
    model, names = predictor.model, predictor.meta.gradcam_layers
    deepest = model.get_layer(names[-1]).output.shape[1]
    finer = [n for n in names if model.get_layer(n).output.shape[1] > deepest]
    return finer[-1] if finer else None


def layer_sets(predictor: Predictor, n_layers: int) -> dict[str, list[str]]:
    """The layer sets compared: the last ``n`` explainable layers, the deepest alone, the finer grid fused with it.

    A set's map is the mean of its layers' maps, each scaled to [0, 1]. The finer layer (14x14) says which
    structure mattered, the deepest (7x7) which part of the chest; fused, the two agree where both point.
    (The finer layer alone ranked last for every candidate in the first ROAD audit, docs/heatmaps.md.)
    """
    conv = predictor.meta.last_layers(n_layers)
    deepest = conv[-1]
    sets = {default_set_name(n_layers): conv}
    if n_layers > 1:
        sets[deepest] = [deepest]
    fine = finer_layer(predictor)
    if fine is not None and [fine, deepest] not in sets.values():
        sets[f"{fine} + {deepest}"] = [fine, deepest]
    return sets


def _cam_maps(cam: Any, x: np.ndarray, targets: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer, (N, h, w) maps of the given classes and (N,) flags of the blank ones, in batches."""
    parts = [cam(x[i : i + CAM_BATCH], targets[i : i + CAM_BATCH]) for i in range(0, len(x), CAM_BATCH)]
    layers = range(len(cam.layer_names))
    return [np.concatenate([p.maps[k] for p in parts]) for k in layers], [
        np.concatenate([p.empty[k] for p in parts]) for k in layers
    ]


def set_map(per_layer: dict[str, np.ndarray], layers: Sequence[str], i: int, size: tuple[int, int]) -> np.ndarray:
    """Image ``i``'s map of a layer set, at ``size``: what the entry points show as the default map."""
    return mean_map([per_layer[name][i] for name in layers], *size)


def served_pipeline(predictor: Predictor) -> dict[str, Any]:
    """How the audited maps were computed, as every entry point serves them: input pipeline and test-time views."""
    return {"input": predictor.spec.describe(), "views": list(predictor.views)}


def sanity_check(
    predictor: Predictor,
    x: np.ndarray,
    targets: np.ndarray,
    plan: AuditPlan,
    layers: list[str],
    original: dict[str, dict[str, np.ndarray]],
    cascade: str,
    on_stage: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Cascading randomisation on a copy of the model: median |rho| and SSIM per candidate, layer and depth.

    Every candidate is measured on every image once the head is random (what passing means); the deeper
    stages, which only draw the cascade, for the ``cascade`` candidate alone (the model's own default), on the
    first :data:`~pneumocam.options.AUDIT_CASCADE_IMAGES` images.
    """
    copy = keras.models.clone_model(predictor.model)
    copy.set_weights(predictor.model.get_weights())
    randomised = predictor.derived(model=copy)
    cams = {candidate_name(m, s): METHODS[m].serving(randomised, layers, s) for m, s in plan.candidates}
    out: dict[str, Any] = {c: {name: {"rho": {}, "ssim": {}} for name in layers} for c in cams}
    for k, (stage, stage_layers) in enumerate(stages(copy, plan.blocks)):
        randomize(copy, stage_layers, plan.seed + k)
        n = len(x) if stage == HEAD else AUDIT_CASCADE_IMAGES
        for c, cam in cams.items():
            if stage != HEAD and c != cascade:
                continue
            random_maps, _ = _cam_maps(cam, x[:n], targets[:n])
            for name, rmaps in zip(layers, random_maps):
                orig = original[c][name][:n]
                rhos = [rank_correlation(a, b) for a, b in zip(orig, rmaps)]
                out[c][name]["rho"][stage] = float(np.median(rhos))
                out[c][name]["ssim"][stage] = float(np.median([ssim(a, b) for a, b in zip(orig, rmaps)]))
        if on_stage:
            on_stage(1)
    for c in cams:
        for name in layers:
            entry = out[c][name]
            entry["rho_after_head"] = entry["rho"][HEAD]
            entry["passes"] = bool(entry["rho_after_head"] < SANITY_MAX_RHO)
    return out


def road_finalists(auc: dict[str, np.ndarray], keys: list[tuple[str | None, str | None]], default: int) -> list[int]:
    """The columns ROAD measures on every image: the model's default, the best first-round gaps, the baselines."""
    gap = np.nanmean(auc[LERF], axis=0) - np.nanmean(auc[MORF], axis=0)
    ranked = [j for j in np.argsort(-gap, kind="stable") if keys[j][1] is not None and j != default]
    baselines = [j for j, (_, s) in enumerate(keys) if s is None]
    return sorted({default, *ranked[:ROAD_FINALISTS], *baselines})


def _summarise(
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


def _nest(entries: list[dict[str, Any]], keys: list[tuple[str | None, str | None]], shown_set: str) -> dict[str, Any]:
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


def audit_sample(samples: Sequence[Sample], limit: int = AUDIT_LIMIT, seed: int = AUDIT_SEED) -> list[Path]:
    """The images an audit looks at: ``limit`` drawn at random (seeded), in path order; the same for every model."""
    shuffled = list(samples)
    random.Random(seed).shuffle(shuffled)
    return sorted(Path(s.path) for s in shuffled[:limit])


def audit_images(
    predictor: Predictor,
    paths: Sequence[Path],
    plan: AuditPlan = AuditPlan(),
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Audit the readable files of ``paths``; ``on_step`` advances by images and randomisation stages."""
    meta, model = predictor.meta, predictor.model
    if plan.n_layers < 1 or plan.n_layers > len(meta.gradcam_layers):
        raise InputError(f"number of layers must be between 1 and {len(meta.gradcam_layers)}")
    plan = plan.for_model(meta.explain.score)
    images, kept, skipped = [], [], []
    for batch in predictor.batches(paths):
        images.append(batch.images)
        kept += batch.paths
        skipped += batch.skipped
    if not kept:
        raise none_readable(len(paths), Path(paths[0]).parent if paths else "", skipped)
    x = np.concatenate(images)
    forward = predictor.forward()

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([forward(batch[i : i + 128]).numpy() for i in range(0, len(batch), 128)])

    probs = probabilities(x)
    targets = probs.argmax(1).astype(np.int32)
    sets = layer_sets(predictor, plan.n_layers)
    layers = list(dict.fromkeys(name for group in sets.values() for name in group))
    maps, blank = {}, {}
    for m, s in plan.candidates:
        found, empty = _cam_maps(METHODS[m].serving(predictor, layers, s), x, targets)
        maps[candidate_name(m, s)] = dict(zip(layers, found))
        blank[candidate_name(m, s)] = dict(zip(layers, empty))

    size = x.shape[1:3]
    todays = models_default(predictor, sets)
    named = [candidate_name(m, s) for m, s in plan.candidates]
    todays_name = candidate_name(todays["method"], todays["score"])
    border_pair = plan.candidates[named.index(todays_name)] if todays_name in named else plan.candidates[0]
    border_name = candidate_name(*border_pair)
    border_set = todays["layer_set"] if todays["layer_set"] in sets else default_set_name(plan.n_layers)

    sanity = sanity_check(predictor, x, targets, plan, layers, maps, border_name, on_step)
    # ROAD only where it can decide: a candidate and set that fail sanity are out whatever their areas.
    keys: list[tuple[str | None, str | None]] = [
        (c, s) for c in named for s in sets if _passes(sanity[c], sets[s]) or (c, s) == (border_name, border_set)
    ]
    keys += [(RANDOM, None), (CENTER, None)]
    border_key = keys.index((border_name, border_set))
    orders = (MORF, LERF)
    auc = {order: np.full((len(x), len(keys)), np.nan) for order in orders}
    curve_sum = {order: np.zeros((len(keys), len(plan.shares) + 1)) for order in orders}
    centre = center_map(size)
    grid = min(plan.grid, *size)
    default_maps = [set_map(maps[border_name], sets[border_set], i, size) for i in range(len(x))]

    def measure(i: int, columns: list[int]) -> None:
        """ROAD of image ``i`` for the keys in ``columns``, both orders from one batch."""
        chosen = [keys[j] for j in columns]
        candidates = [
            random_map(size, plan.seed + i)
            if c == RANDOM
            else centre
            if c == CENTER
            else set_map(maps[c], sets[s], i, size)
            for c, s in chosen
        ]
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

    everything = list(range(len(keys)))
    for i in range(0, len(x), 2):
        measure(i, everything)
    finalists = road_finalists(auc, keys, border_key)
    for i in range(1, len(x), 2):
        measure(i, finalists)
    measured = (~np.isnan(auc[MORF])).sum(axis=0)
    mean_curve = {order: curve_sum[order] / measured[:, None] for order in orders}

    classes = meta.classes
    road_values = {"morf": auc[MORF], "lerf": auc[LERF]}
    road_curves_ = {"morf": mean_curve[MORF], "lerf": mean_curve[LERF]}
    road_entries = [_summarise(road_values, road_curves_, j, targets, classes) for j in range(len(keys))]

    table = recommendation_table(road_entries, keys, sanity, sets, plan, blank)
    best = table[0] if table and table[0]["sanity_pass"] and table[0]["road_images"] == len(x) else None
    shown_set = best["layer_set"] if best else border_set
    shares = [border_share(d) for d in default_maps]
    names = [str(p) for p in kept]
    return {
        "n_images": len(kept),
        "served": served_pipeline(predictor),
        "methods": named,
        "layer_sets": sets,
        "randomisation_stages": [name for name, _ in stages(model, plan.blocks)],
        "cascade": border_name,
        "sanity_threshold": SANITY_MAX_RHO,
        "sanity": sanity,
        "road": {
            **_nest(road_entries, keys, shown_set),
            "shares": list(plan.shares),
            "grid": grid,
            "noise": plan.noise,
        },
        "table": table,
        "blank_layers": {c: {name: float(flags.mean()) for name, flags in per.items()} for c, per in blank.items()},
        "recommendation": recommend(best, todays),
        "border": {
            "band": BORDER_BAND,
            "threshold": BORDER_FLAG,
            "method": border_pair[0],
            "score": border_pair[1],
            "layer_set": border_set,
            "share": dict(zip(names, map(float, shares))),
        },
        "border_flagged": [n for n, s in zip(names, shares) if s > BORDER_FLAG],
        "predictions": {n: classes[int(t)] for n, t in zip(names, targets)},
        "confidence": {n: float(p.max()) for n, p in zip(names, probs)},
        "skipped": [{"file": str(p), "reason": r} for p, r in skipped],
    }


def _passes(sanity: dict[str, Any], layers: Sequence[str]) -> bool:
    return all(sanity[name]["passes"] for name in layers)


def recommendation_table(
    road: list[dict[str, Any]],
    keys: list[tuple[str | None, str | None]],
    sanity: dict[str, Any],
    sets: dict[str, list[str]],
    plan: AuditPlan,
    blank: dict[str, dict[str, np.ndarray]],
) -> list[dict[str, Any]]:
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
                {
                    "method": m,
                    "score": score,
                    "layer_set": s,
                    "layers": layers,
                    "morf_auc": r["morf_auc"],
                    "lerf_auc": r["lerf_auc"],
                    "road_gap": None if j is None else r["lerf_auc"] - r["morf_auc"],
                    "road_images": 0 if j is None else r["n_images"],
                    "rho_after_head": max(sanity[c][name]["rho_after_head"] for name in layers),
                    "sanity_pass": _passes(sanity[c], layers),
                    "empty_share": float(np.mean(np.all([blank[c][name] for name in layers], axis=0))),
                }
            )
    most = max(r["road_images"] for r in rows)
    return sorted(
        rows,
        key=lambda r: (
            not r["sanity_pass"],
            r["road_images"] < most,
            -r["road_gap"] if r["road_gap"] is not None else np.inf,
        ),
    )


def models_default(predictor: Predictor, sets: dict[str, list[str]]) -> dict[str, Any]:
    """The heatmaps the model shows today (its ``model.json`` ``explain``), named as one of the audited sets."""
    meta = predictor.meta
    layers = meta.shown_layers()
    name = next((s for s, group in sets.items() if group == layers), " + ".join(layers))
    return {"method": meta.explain.method, "score": meta.explain.score, "layer_set": name, "layers": layers}


def recommend(best: dict[str, Any] | None, default: dict[str, Any]) -> dict[str, Any]:
    """The best row that passes sanity; ``default`` (the model's own choice) when none does."""
    if best is None:
        return {**default, "is_default": True, "why": "no method and layer set passed the sanity check"}
    is_default = (best["method"], best["score"], best["layers"]) == (
        default["method"],
        default["score"],
        default["layers"],
    )
    return {
        "method": best["method"],
        "score": best["score"],
        "layer_set": best["layer_set"],
        "layers": best["layers"],
        "road_gap": best["road_gap"],
        "is_default": is_default,
        "why": "the highest ROAD least- minus most-relevant-first area among the candidates that pass sanity",
    }


def explain_defaults(result: dict[str, Any], predictor: Predictor) -> tuple[list[str], ExplainDefaults]:
    """The explainable layers and default heatmaps that put an audit's recommendation into ``model.json``.

    The last N explainable layers are stored as a count (the Space's slider moves from there); any other
    set by name.
    """
    layers = explainable_layer_names(predictor.model)
    rec = result["recommendation"]
    want = list(rec["layers"])
    missing = [name for name in want if name not in layers]
    if missing:
        raise InputError(f"the recommended layers ({', '.join(missing)}) are not explainable layers; not recorded")
    named = () if layers[-len(want) :] == want else tuple(want)
    road = result["road"]
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": result.get("data_dir", ""),
        "n_images": result["n_images"],
        "served": result["served"],
        "recommendation": rec,
        "table": result["table"],
        "baselines": {b: {k: road[b][k] for k in ROAD_AUCS} for b in (RANDOM, CENTER)},
        "road": {k: road[k] for k in ("shares", "grid", "noise")},
        "sanity_threshold": result["sanity_threshold"],
    }
    defaults = ExplainDefaults(
        method=rec["method"], layers=len(want), score=rec["score"], layer_names=named, audit=summary
    )
    return layers, defaults


def audit_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The audit's figures as flat metrics: per candidate and layer set, the baselines, the counts."""
    out = {
        f"{candidate_name(r['method'], r['score'])}.{r['layer_set']}.{k}": float(r[k])
        for r in result["table"]
        for k in (*ROAD_AUCS, "rho_after_head", "empty_share")
        if r[k] is not None
    }
    for base in (RANDOM, CENTER):
        out.update({f"{base}.{k}": float(result["road"][base][k]) for k in ROAD_AUCS})
    out["n_images"] = float(result["n_images"])
    out["border_flagged"] = float(len(result["border_flagged"]))
    return out


def _half(row: dict[str, Any], result: dict[str, Any]) -> str:
    """ "*" for a row ROAD measured in its first round only."""
    return "*" if 0 < row["road_images"] < result["n_images"] else " "


def _served_text(result: dict[str, Any]) -> str:
    served = result["served"]
    return f"{served['input']}; test-time views {', '.join(served['views'])}"


def format_audit(result: dict[str, Any]) -> str:
    """The candidate x layer-set table for the terminal, ROAD first."""
    lines = [
        "ROAD areas: MoRF (most relevant removed first) lower and LeRF higher are more faithful; gap = LeRF - MoRF;",
        "rho: median |rho| once the head is random (sanity); -: not measured, the candidate failed sanity on that",
        "layer set; blank: the share of maps with no evidence for the explained class; *: ROAD on half the images",
        "(every other one: the first round), the default, the best of that round and the baselines on all of them.",
        f"as served: {_served_text(result)}",
        f"{'method':<28} {'layer set':<26} {'MoRF':>6} {'LeRF':>6} {'gap':>6} {'rho':>5}  sanity  blank",
        "-" * 93,
    ]
    for r in result["table"]:
        lines.append(
            f"{candidate_name(r['method'], r['score']):<28} {r['layer_set']:<26} "
            + " ".join(f"{area_text(r[k]):>6}" for k in AREA_COLUMNS)
            + f"{_half(r, result)} {r['rho_after_head']:>5.2f}  {'pass' if r['sanity_pass'] else 'FAIL'}  "
            f"{r['empty_share']:>5.0%}"
        )
    for base in (RANDOM, CENTER):
        b = result["road"][base]
        lines.append(
            f"{base + ' map':<55} {b['morf_auc']:>6.3f} {b['lerf_auc']:>6.3f} {b['lerf_auc'] - b['morf_auc']:>6.3f}"
        )
    rec = result["recommendation"]
    lines.append(
        f"recommended: {candidate_name(rec['method'], rec['score'])}, {rec['layer_set']}"
        + (" (today's default)" if rec["is_default"] else " (not today's default)")
    )
    cascade = result["cascade"]
    per_layer = ", ".join(f"{name} {share:.0%}" for name, share in result["blank_layers"][cascade].items())
    lines.append(f"blank maps per layer ({cascade}, the pages' per-layer panels): {per_layer}")
    lines.append(f"border-flagged images: {len(result['border_flagged'])} of {result['n_images']}")
    return "\n".join(lines)


def border_rows(predictor: Predictor, result: dict[str, Any], limit: int = GALLERY_LIMIT) -> list[dict[str, Any]]:
    """Rows for a page of the flagged images: the X-ray, then the map the border share was measured on."""
    border = result["border"]
    explainer = Explainer(predictor, border["method"], border["score"])
    layers = result["layer_sets"][border["layer_set"]]
    rows = []
    for name in result["border_flagged"][:limit]:
        e = explainer.explain([read_image(name)], alpha=DEFAULT_OPACITY, max_side=512, layer_names=layers)[0]
        share = border["share"][name]
        caption = f"{Path(name).name}\npred {e.predicted} ({e.probabilities[e.predicted]:.0%}); border {share:.0%}"
        rows.append(explanation_row(e, caption))
    return rows


def write_audit(out: Path, result: dict[str, Any], predictor: Predictor, title: str) -> list[Path]:
    """audit.json, sanity.png, curves.png, the border page and index.html, each written atomically."""
    out = Path(out)
    written = [
        write_json(out / AUDIT_FILE, result),
        save_figure(sanity_figure(result), out / SANITY_PLOT),
        save_figure(audit_curves_figure(result), out / CURVES_PLOT),
    ]
    rows = border_rows(predictor, result)
    if rows:
        page = compose_page(rows, f"{title}: maps resting mostly on the border")
        written.append(write_bytes(out / BORDER_PAGE, encode_png(page)))
    written.append(write_text(out / INDEX, index_html(result, title, bool(rows))))
    return written


def index_html(result: dict[str, Any], title: str, border_page: bool) -> str:
    esc = html.escape
    head = "<tr><th>method</th><th>layer set</th><th>ROAD MoRF</th><th>ROAD LeRF</th><th>LeRF - MoRF</th>"
    head += "<th>|rho| after head</th><th>sanity</th><th>blank maps</th></tr>"
    rows = "".join(
        f"<tr><td>{esc(candidate_name(r['method'], r['score']))}</td><td>{esc(r['layer_set'])}</td>"
        + "".join(f"<td>{area_text(r[k])}</td>" for k in AREA_COLUMNS[:-1])
        + f"<td>{area_text(r['road_gap'])}{_half(r, result).strip()}</td><td>{r['rho_after_head']:.2f}</td>"
        f"<td>{'pass' if r['sanity_pass'] else 'FAIL'}</td><td>{r['empty_share']:.0%}</td></tr>"
        for r in result["table"]
    )
    road = result["road"]
    for base in (RANDOM, CENTER):
        b = road[base]
        rows += (
            f"<tr><td colspan=2><i>{base} map (baseline)</i></td><td>{b['morf_auc']:.3f}</td>"
            f"<td>{b['lerf_auc']:.3f}</td><td>{b['lerf_auc'] - b['morf_auc']:.3f}</td><td></td><td></td><td></td></tr>"
        )
    rec = result["recommendation"]
    flagged = result["border_flagged"]
    border = f"<h2>Maps resting on the border ({len(flagged)} of {result['n_images']})</h2>" + (
        f'<img src="{BORDER_PAGE}" alt="border-flagged images">' if border_page else "<p>None.</p>"
    )
    shares = ", ".join(f"{s:.0%}" for s in road["shares"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>{esc(title)}</h1>
<p>{result["n_images"]} images, scored and explained as served: {esc(_served_text(result))}.
Recommended: <b>{esc(candidate_name(rec["method"], rec["score"]))},
{esc(rec["layer_set"])}</b> ({esc(rec["why"])}). ROAD (Rong et al. 2022) removes {shares} of the image in the
map's order, most relevant first (MoRF: lower is more faithful) or least relevant first (LeRF: higher is more
faithful), and fills the removed pixels from their neighbours by noisy linear imputation. Sanity passes when the
median |Spearman rho| between the trained model's map and the map of a model with a random head is below
{result["sanity_threshold"]}. Blank maps: the share of images whose map holds no evidence for the explained
class on any layer of the set (the pages show those with a caption, not as an empty panel). ROAD runs in two
rounds: every candidate that passed sanity on every other image, then the model's default, the best of that round
and the baselines on the rest (*: a row measured in the first round only).</p>
<h2>Method x layer set</h2><table>{head}{rows}</table>
<h2>ROAD curves</h2><img src="{CURVES_PLOT}" alt="ROAD curves, most and least relevant first">
<h2>Sanity: cascading randomisation</h2><img src="{SANITY_PLOT}" alt="rank correlation against depth">
{border}
</body></html>
"""
