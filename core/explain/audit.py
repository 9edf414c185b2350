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
that passes sanity (:mod:`pneumocam.explain.audit_choice`). Files are written by
:func:`pneumocam.reports.audit_report.write_audit`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pneumocam.config import check_cam_method, check_cam_score
from pneumocam.errors import InputError, none_readable
from pneumocam.explain.audit_choice import CENTER, RANDOM, models_default, passes, recommend, recommendation_table
from pneumocam.explain.audit_result import AuditResult, BorderCheck, Heatmaps, LayerSanity, candidate_name
from pneumocam.explain.audit_road import nest, road_rounds, summarise
from pneumocam.explain.faithfulness import border_share, center_map, random_map
from pneumocam.explain.gradcam import METHODS
from pneumocam.explain.overlay import mean_map
from pneumocam.explain.sanity import HEAD, randomize, rank_correlation, ssim, stages
from pneumocam.images.data import Sample
from pneumocam.options import (
    AUDIT_BLOCKS,
    AUDIT_CASCADE_IMAGES,
    AUDIT_LIMIT,
    AUDIT_SEED,
    CAM_METHODS,
    DEFAULT_LAYERS,
    ROAD_GRID,
    ROAD_NOISE,
    ROAD_SHARES,
    SANITY_MAX_RHO,
)
from pneumocam.scoring.predictor import Predictor

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
) -> dict[str, dict[str, LayerSanity]]:
    """Cascading randomisation on a copy of the model: median |rho| and SSIM per candidate, layer and depth.

    Every candidate is measured on every image once the head is random (what passing means); the deeper
    stages, which only draw the cascade, for the ``cascade`` candidate alone (the model's own default), on the
    first :data:`~pneumocam.options.AUDIT_CASCADE_IMAGES` images.
    """
    copy = keras.models.clone_model(predictor.model)
    copy.set_weights(predictor.model.get_weights())
    randomised = predictor.derived(model=copy)
    cams = {candidate_name(m, s): METHODS[m].serving(randomised, layers, s) for m, s in plan.candidates}
    rho: dict[str, dict[str, dict[str, float]]] = {c: {name: {} for name in layers} for c in cams}
    similar: dict[str, dict[str, dict[str, float]]] = {c: {name: {} for name in layers} for c in cams}
    for k, (stage, stage_layers) in enumerate(stages(copy, plan.blocks)):
        randomize(copy, stage_layers, plan.seed + k)
        n = len(x) if stage == HEAD else AUDIT_CASCADE_IMAGES
        for c, cam in cams.items():
            if stage != HEAD and c != cascade:
                continue
            random_maps, _ = _cam_maps(cam, x[:n], targets[:n])
            for name, rmaps in zip(layers, random_maps):
                orig = original[c][name][:n]
                rho[c][name][stage] = float(np.median([rank_correlation(a, b) for a, b in zip(orig, rmaps)]))
                similar[c][name][stage] = float(np.median([ssim(a, b) for a, b in zip(orig, rmaps)]))
        if on_stage:
            on_stage(1)
    return {
        c: {
            name: LayerSanity(rho[c][name], similar[c][name], rho[c][name][HEAD], rho[c][name][HEAD] < SANITY_MAX_RHO)
            for name in layers
        }
        for c in cams
    }


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
) -> AuditResult:
    """Audit the readable files of ``paths``; ``on_step`` advances by images and randomisation stages."""
    meta = predictor.meta
    if plan.n_layers < 1 or plan.n_layers > len(meta.gradcam_layers):
        raise InputError(f"number of layers must be between 1 and {len(meta.gradcam_layers)}")
    plan = plan.for_model(meta.explain.score)
    x, kept, skipped = _read(predictor, paths)
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
    todays = models_default(predictor, sets)
    named = [candidate_name(m, s) for m, s in plan.candidates]
    border_pair, border = _border_maps(plan, todays, sets)
    sanity = sanity_check(predictor, x, targets, plan, layers, maps, border[0], on_step)
    # ROAD only where it can decide: a candidate and set that fail sanity are out whatever their areas.
    keys: list[tuple[str | None, str | None]] = [
        (c, s) for c in named for s in sets if passes(sanity[c], sets[s]) or (c, s) == border
    ]
    keys += [(RANDOM, None), (CENTER, None)]
    size = x.shape[1:3]

    def candidate_map(i: int, c: str | None, s: str | None) -> np.ndarray:
        if c == RANDOM:
            return random_map(size, plan.seed + i)
        return center_map(size) if c == CENTER else set_map(maps[c], sets[s], i, size)

    road = road_rounds(probabilities, x, probs, keys, keys.index(border), candidate_map, plan, on_step)
    road_entries = [summarise(road.values, road.curves, j, targets, meta.classes) for j in range(len(keys))]
    table = recommendation_table(road_entries, keys, sanity, sets, plan, blank)
    best = table[0] if table and table[0].sanity_pass and table[0].road_images == len(x) else None
    names = [str(p) for p in kept]
    shares = {n: border_share(candidate_map(i, *border)) for i, n in enumerate(names)}
    return AuditResult(
        n_images=len(kept),
        served=served_pipeline(predictor),
        methods=named,
        layer_sets=sets,
        randomisation_stages=[name for name, _ in stages(predictor.model, plan.blocks)],
        cascade=border[0],
        sanity_threshold=SANITY_MAX_RHO,
        sanity=sanity,
        road={
            **nest(road_entries, keys, best.layer_set if best else border[1]),
            "shares": list(plan.shares),
            "grid": road.grid,
            "noise": plan.noise,
        },
        table=table,
        blank_layers={c: {name: float(flags.mean()) for name, flags in per.items()} for c, per in blank.items()},
        recommendation=recommend(best, todays),
        border=BorderCheck(*border_pair, border[1], share=shares),
        predictions={n: meta.classes[int(t)] for n, t in zip(names, targets)},
        confidence={n: float(p.max()) for n, p in zip(names, probs)},
        skipped=[{"file": str(p), "reason": r} for p, r in skipped],
    )


def _border_maps(
    plan: AuditPlan, todays: Heatmaps, sets: dict[str, list[str]]
) -> tuple[tuple[str, str], tuple[str, str]]:
    """The maps the border share and the sanity cascade look at: the model's default where the plan audits it.

    Returns the (method, score) pair and the (candidate name, layer set) key.
    """
    named = [candidate_name(m, s) for m, s in plan.candidates]
    todays_name = todays.name
    pair = plan.candidates[named.index(todays_name)] if todays_name in named else plan.candidates[0]
    layer_set = todays.layer_set if todays.layer_set in sets else default_set_name(plan.n_layers)
    return pair, (candidate_name(*pair), layer_set)


def _read(predictor: Predictor, paths: Sequence[Path]) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """The model inputs of the readable files, those files, and the others with their reason."""
    images, kept, skipped = [], [], []
    for batch in predictor.batches(paths):
        images.append(batch.images)
        kept += batch.paths
        skipped += batch.skipped
    if not kept:
        raise none_readable(len(paths), Path(paths[0]).parent if paths else "", skipped)
    return np.concatenate(images), kept, skipped
