"""The heatmap audit: sanity, faithfulness and border shortcuts of every CAM method and layer set.

For a sample of images: each method's maps on each audited layer; the sanity
check (:mod:`core.sanity`) per method and layer; deletion and insertion areas
(:mod:`core.faithfulness`) per method and layer set, with a random and a
centred baseline; the share of each default map in the image border. The
audit then recommends the most faithful method and layer set that passes
sanity. Files are written by :func:`write_audit` (audit.json, two plots, a
page of border-flagged images, index.html).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifact import LoadedModel
from core.atomic import save_figure, write_bytes, write_json, write_text
from core.config import ExplainDefaults, check_cam_method
from core.errors import InputError, none_readable
from core.faithfulness import DELETION, INSERTION, area, border_share, center_map, curves, random_map
from core.options import (
    AUDIT_BLOCKS,
    AUDIT_SEED,
    AUDIT_STEPS,
    BORDER_BAND,
    BORDER_FLAG,
    CAM_METHODS,
    DEFAULT_LAYERS,
    DEFAULT_OPACITY,
    SANITY_MAX_RHO,
)

AUDIT_FILE = "audit.json"
SANITY_PLOT = "sanity.png"
CURVES_PLOT = "curves.png"
BORDER_PAGE = "border_flagged.png"
INDEX = "index.html"
AUDIT_FILES = (AUDIT_FILE, SANITY_PLOT, CURVES_PLOT, BORDER_PAGE, INDEX)
RANDOM, CENTER = "random", "center"
CAM_BATCH = 16


@dataclass(frozen=True)
class AuditPlan:
    """What to audit: methods, how many of the last conv layers, curve steps, randomisation depth, seed."""

    methods: tuple[str, ...] = CAM_METHODS
    n_layers: int = DEFAULT_LAYERS
    steps: int = AUDIT_STEPS
    blocks: int = AUDIT_BLOCKS
    seed: int = AUDIT_SEED

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "methods": ",".join(self.methods)}

    def __post_init__(self) -> None:
        if not self.methods:
            raise InputError("name at least one CAM method to audit")
        for method in self.methods:
            check_cam_method(method)


def default_set_name(n_layers: int) -> str:
    return f"last {n_layers} conv"


def layer_sets(loaded: LoadedModel, n_layers: int) -> dict[str, list[str]]:
    """The layer sets compared: the last ``n`` conv layers, the deepest alone, ``Conv_1`` and ``out_relu``.

    A set's map is the mean of its layers' maps, each scaled to [0, 1].
    """
    from core.model import ACTIVATED_LAST, LAST_CONV

    conv = loaded.meta.last_layers(n_layers)
    sets = {default_set_name(n_layers): conv}
    if n_layers > 1:
        sets[conv[-1]] = [conv[-1]]
    present = {layer.name for layer in loaded.model.layers}
    for name in (LAST_CONV, ACTIVATED_LAST):  # the deepest layer before and after its activation
        if name in present and [name] not in sets.values():
            sets[name] = [name]
    return sets


def _cam_maps(cam: Any, x: np.ndarray, targets: np.ndarray) -> list[np.ndarray]:
    """Per layer, (N, h, w) maps of the given classes, in batches."""
    parts = [cam(x[i : i + CAM_BATCH], targets[i : i + CAM_BATCH]).maps for i in range(0, len(x), CAM_BATCH)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(cam.layer_names))]


def _set_map(per_layer: dict[str, np.ndarray], layers: Sequence[str], i: int, size: tuple[int, int]) -> np.ndarray:
    from core.overlay import upsample

    return np.mean([upsample(per_layer[name][i], *size) for name in layers], axis=0)


def sanity_check(
    loaded: LoadedModel,
    x: np.ndarray,
    targets: np.ndarray,
    plan: AuditPlan,
    layers: list[str],
    original: dict[str, dict[str, np.ndarray]],
    on_stage: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Cascading randomisation on a copy of the model: median |rho| and SSIM per method, layer and depth."""
    import keras

    from core.gradcam import METHODS
    from core.model import CUSTOM_OBJECTS
    from core.sanity import HEAD, randomize, rank_correlation, ssim, stages

    with keras.utils.custom_object_scope(CUSTOM_OBJECTS):
        copy = keras.models.clone_model(loaded.model)
    copy.set_weights(loaded.model.get_weights())
    cams = {m: METHODS[m](copy, layers, loaded.meta.logits_layer) for m in plan.methods}
    out: dict[str, Any] = {m: {name: {"rho": {}, "ssim": {}} for name in layers} for m in plan.methods}
    for k, (stage, stage_layers) in enumerate(stages(copy, plan.blocks)):
        randomize(copy, stage_layers, plan.seed + k)
        for m, cam in cams.items():
            random_maps = _cam_maps(cam, x, targets)
            for name, rmaps in zip(layers, random_maps):
                orig = original[m][name]
                rhos = [rank_correlation(a, b) for a, b in zip(orig, rmaps)]
                out[m][name]["rho"][stage] = float(np.median(rhos))
                out[m][name]["ssim"][stage] = float(np.median([ssim(a, b) for a, b in zip(orig, rmaps)]))
        if on_stage:
            on_stage(1)
    for m in plan.methods:
        for name in layers:
            entry = out[m][name]
            entry["rho_after_head"] = entry["rho"][HEAD]
            entry["passes"] = bool(entry["rho_after_head"] < SANITY_MAX_RHO)
    return out


def audit_images(
    loaded: LoadedModel,
    paths: Sequence[Path],
    plan: AuditPlan = AuditPlan(),
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Audit the readable files of ``paths``; ``on_step`` advances by images and randomisation stages."""
    from core.gradcam import METHODS
    from core.inference import compile_forward, image_batches
    from core.sanity import stages

    meta, model = loaded.meta, loaded.model
    if plan.n_layers < 1 or plan.n_layers > len(meta.gradcam_layers):
        raise InputError(f"number of layers must be between 1 and {len(meta.gradcam_layers)}")
    images, kept, skipped = [], [], []
    for batch in image_batches(paths, meta.input):
        images.append(batch.images)
        kept += batch.paths
        skipped += batch.skipped
    if not kept:
        raise none_readable(len(paths), Path(paths[0]).parent if paths else "", skipped)
    x = np.concatenate(images)
    forward = compile_forward(model)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([forward(batch[i : i + 64]).numpy() for i in range(0, len(batch), 64)])

    probs = probabilities(x)
    targets = probs.argmax(1).astype(np.int32)
    sets = layer_sets(loaded, plan.n_layers)
    layers = list(dict.fromkeys(name for group in sets.values() for name in group))
    maps = {
        m: dict(zip(layers, _cam_maps(METHODS[m](model, layers, meta.logits_layer), x, targets))) for m in plan.methods
    }

    size = x.shape[1:3]
    default_set = default_set_name(plan.n_layers)
    todays = models_default(loaded, sets)
    border_method = todays["method"] if todays["method"] in plan.methods else plan.methods[0]
    border_set = todays["layer_set"] if todays["layer_set"] in sets else default_set
    keys = [(m, s) for m in plan.methods for s in sets] + [(RANDOM, None), (CENTER, None)]
    border_key = keys.index((border_method, border_set))
    auc = {mode: np.zeros((len(x), len(keys))) for mode in (DELETION, INSERTION)}
    mean_curve = {mode: np.zeros((len(keys), plan.steps + 1)) for mode in (DELETION, INSERTION)}
    centre = center_map(size)
    default_maps = []
    for i in range(len(x)):
        candidates = [_set_map(maps[m], sets[s], i, size) for m, s in keys[:-2]]
        candidates += [random_map(size, plan.seed + i), centre]
        for mode in (DELETION, INSERTION):
            c = curves(probabilities, x[i], candidates, int(targets[i]), plan.steps, mode)
            auc[mode][i] = area(c)
            mean_curve[mode] += c / len(x)
        default_maps.append(candidates[border_key])
        if on_step:
            on_step(1)

    classes = meta.classes
    faith: dict[str, Any] = {}
    for j, (m, s) in enumerate(keys):
        entry = {
            "deletion_auc": float(auc[DELETION][:, j].mean()),
            "insertion_auc": float(auc[INSERTION][:, j].mean()),
            "per_class": {
                classes[c]: {
                    "n": int((targets == c).sum()),
                    "deletion_auc": float(auc[DELETION][targets == c, j].mean()),
                    "insertion_auc": float(auc[INSERTION][targets == c, j].mean()),
                }
                for c in range(len(classes))
                if (targets == c).any()
            },
            "deletion_curve": mean_curve[DELETION][j].round(5).tolist(),
            "insertion_curve": mean_curve[INSERTION][j].round(5).tolist(),
        }
        if s is None:
            faith[m] = entry
        else:
            faith.setdefault(m, {"sets": {}})["sets"][s] = entry
    for m in plan.methods:
        faith[m]["deletion_auc"] = faith[m]["sets"][default_set]["deletion_auc"]
        faith[m]["insertion_auc"] = faith[m]["sets"][default_set]["insertion_auc"]
        faith[m]["layer_set"] = default_set

    sanity = sanity_check(loaded, x, targets, plan, layers, maps, on_step)
    shares = [border_share(d) for d in default_maps]
    names = [str(p) for p in kept]
    table = recommendation_table(faith, sanity, sets, plan.methods)
    best = table[0] if table and table[0]["sanity_pass"] else None
    return {
        "n_images": len(kept),
        "methods": list(plan.methods),
        "layer_sets": sets,
        "steps": plan.steps,
        "randomisation_stages": [name for name, _ in stages(model, plan.blocks)],
        "sanity_threshold": SANITY_MAX_RHO,
        "sanity": sanity,
        "faithfulness": faith,
        "table": table,
        "recommendation": recommend(best, todays),
        "border": {
            "band": BORDER_BAND,
            "threshold": BORDER_FLAG,
            "method": border_method,
            "layer_set": border_set,
            "share": dict(zip(names, map(float, shares))),
        },
        "border_flagged": [n for n, s in zip(names, shares) if s > BORDER_FLAG],
        "predictions": {n: classes[int(t)] for n, t in zip(names, targets)},
        "confidence": {n: float(p.max()) for n, p in zip(names, probs)},
        "skipped": [{"file": str(p), "reason": r} for p, r in skipped],
    }


def recommendation_table(
    faith: dict[str, Any], sanity: dict[str, Any], sets: dict[str, list[str]], methods: Sequence[str]
) -> list[dict[str, Any]]:
    """Method x layer set rows, best first: insertion minus deletion area (higher is more faithful)."""
    rows = []
    for m in methods:
        for s, layers in sets.items():
            f = faith[m]["sets"][s]
            rows.append(
                {
                    "method": m,
                    "layer_set": s,
                    "layers": layers,
                    "deletion_auc": f["deletion_auc"],
                    "insertion_auc": f["insertion_auc"],
                    "score": f["insertion_auc"] - f["deletion_auc"],
                    "rho_after_head": max(sanity[m][name]["rho_after_head"] for name in layers),
                    "sanity_pass": all(sanity[m][name]["passes"] for name in layers),
                }
            )
    return sorted(rows, key=lambda r: (not r["sanity_pass"], -r["score"]))


def models_default(loaded: LoadedModel, sets: dict[str, list[str]]) -> dict[str, Any]:
    """The heatmaps the model shows today (its ``model.json`` ``explain``), named as one of the audited sets."""
    meta = loaded.meta
    layers = meta.last_layers(meta.explain.layers)
    name = next((s for s, group in sets.items() if group == layers), default_set_name(len(layers)))
    return {"method": meta.explain.method, "layer_set": name, "layers": layers}


def recommend(best: dict[str, Any] | None, default: dict[str, Any]) -> dict[str, Any]:
    """The best row that passes sanity; ``default`` (the model's own choice) when none does."""
    if best is None:
        return {**default, "is_default": True, "why": "no method and layer set passed the sanity check"}
    is_default = best["method"] == default["method"] and best["layers"] == default["layers"]
    return {
        "method": best["method"],
        "layer_set": best["layer_set"],
        "layers": best["layers"],
        "score": best["score"],
        "is_default": is_default,
        "why": "the highest insertion minus deletion area among the method and layer sets that pass sanity",
    }


def explain_defaults(result: dict[str, Any], loaded: LoadedModel) -> tuple[list[str], ExplainDefaults]:
    """The explainable layers and default heatmaps that put an audit's recommendation into ``model.json``.

    The recommended layers must be the last N of the model's explainable layers, since that is what
    every entry point shows.
    """
    from datetime import UTC, datetime

    from core.model import explainable_layer_names

    layers = explainable_layer_names(loaded.model)
    rec = result["recommendation"]
    want = list(rec["layers"])
    if layers[-len(want) :] != want:
        raise InputError(
            f"the recommended layers ({', '.join(want)}) are not the last {len(want)} explainable layers "
            f"({', '.join(layers[-len(want) :])}); not recorded"
        )
    f = result["faithfulness"]
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": result.get("data_dir", ""),
        "n_images": result["n_images"],
        "recommendation": rec,
        "table": result["table"],
        "baselines": {b: {k: f[b][k] for k in ("deletion_auc", "insertion_auc")} for b in (RANDOM, CENTER)},
        "sanity_threshold": result["sanity_threshold"],
    }
    return layers, ExplainDefaults(method=rec["method"], layers=len(want), audit=summary)


def audit_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The audit's figures as flat metrics: per method and layer set, the baselines, the counts."""
    out = {
        f"{r['method']}.{r['layer_set']}.{k}": float(r[k])
        for r in result["table"]
        for k in ("deletion_auc", "insertion_auc", "rho_after_head")
    }
    for base in (RANDOM, CENTER):
        for k in ("deletion_auc", "insertion_auc"):
            out[f"{base}.{k}"] = float(result["faithfulness"][base][k])
    out["n_images"] = float(result["n_images"])
    out["border_flagged"] = float(len(result["border_flagged"]))
    return out


def format_audit(result: dict[str, Any]) -> str:
    """The method x layer-set table for the terminal."""
    lines = [
        f"{'method':<10} {'layer set':<14} {'deletion':>9} {'insertion':>10} {'ins-del':>8} {'rho head':>9}  sanity",
        "-" * 72,
    ]
    for r in result["table"]:
        lines.append(
            f"{r['method']:<10} {r['layer_set']:<14} {r['deletion_auc']:>9.3f} {r['insertion_auc']:>10.3f} "
            f"{r['score']:>8.3f} {r['rho_after_head']:>9.2f}  {'pass' if r['sanity_pass'] else 'FAIL'}"
        )
    f = result["faithfulness"]
    for base in (RANDOM, CENTER):
        b = f[base]
        lines.append(
            f"{base + ' map':<25} {b['deletion_auc']:>9.3f} {b['insertion_auc']:>10.3f} "
            f"{b['insertion_auc'] - b['deletion_auc']:>8.3f}"
        )
    rec = result["recommendation"]
    lines.append(
        f"recommended: {rec['method']}, {rec['layer_set']}"
        + (" (today's default)" if rec["is_default"] else " (not today's default)")
    )
    lines.append(f"border-flagged images: {len(result['border_flagged'])} of {result['n_images']}")
    return "\n".join(lines)


def border_rows(loaded: LoadedModel, result: dict[str, Any], limit: int = 24) -> list[dict[str, Any]]:
    """Rows for a page of the flagged images: the X-ray, then the map the border share was measured on."""
    from core.images import read_image
    from core.inference import Explainer

    explainer = Explainer(loaded, result["border"]["method"])
    n = len(result["layer_sets"][result["border"]["layer_set"]])
    rows = []
    for name in result["border_flagged"][:limit]:
        e = explainer.explain([read_image(name)], n_layers=n, alpha=DEFAULT_OPACITY, max_side=512)[0]
        share = result["border"]["share"][name]
        caption = f"{Path(name).name}\npred {e.predicted} ({e.probabilities[e.predicted]:.0%}); border {share:.0%}"
        rows.append({"image": e.image, "overlays": e.overlays, "layers": e.layer_names, "caption": caption})
    return rows


def write_audit(out: Path, result: dict[str, Any], loaded: LoadedModel, title: str) -> list[Path]:
    """audit.json, sanity.png, curves.png, the border page and index.html, each written atomically."""
    from core.overlay import encode_png
    from core.pages import compose_page
    from core.plots import audit_curves_figure, sanity_figure

    out = Path(out)
    written = [
        write_json(out / AUDIT_FILE, result),
        save_figure(sanity_figure(result), out / SANITY_PLOT),
        save_figure(audit_curves_figure(result), out / CURVES_PLOT),
    ]
    rows = border_rows(loaded, result)
    if rows:
        page = compose_page(rows, f"{title}: maps resting mostly on the border")
        written.append(write_bytes(out / BORDER_PAGE, encode_png(page)))
    written.append(write_text(out / INDEX, index_html(result, title, bool(rows))))
    return written


def index_html(result: dict[str, Any], title: str, border_page: bool) -> str:
    esc = html.escape
    head = "<tr><th>method</th><th>layer set</th><th>deletion AUC</th><th>insertion AUC</th><th>ins - del</th>"
    head += "<th>|rho| after head</th><th>sanity</th></tr>"
    rows = "".join(
        f"<tr><td>{esc(r['method'])}</td><td>{esc(r['layer_set'])}</td><td>{r['deletion_auc']:.3f}</td>"
        f"<td>{r['insertion_auc']:.3f}</td><td>{r['score']:.3f}</td><td>{r['rho_after_head']:.2f}</td>"
        f"<td>{'pass' if r['sanity_pass'] else 'FAIL'}</td></tr>"
        for r in result["table"]
    )
    for base in (RANDOM, CENTER):
        b = result["faithfulness"][base]
        rows += (
            f"<tr><td colspan=2><i>{base} map (baseline)</i></td><td>{b['deletion_auc']:.3f}</td>"
            f"<td>{b['insertion_auc']:.3f}</td><td>{b['insertion_auc'] - b['deletion_auc']:.3f}</td>"
            "<td></td><td></td></tr>"
        )
    rec = result["recommendation"]
    flagged = result["border_flagged"]
    border = f"<h2>Maps resting on the border ({len(flagged)} of {result['n_images']})</h2>" + (
        f'<img src="{BORDER_PAGE}" alt="border-flagged images">' if border_page else "<p>None.</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>{esc(title)}</h1>
<p>{result["n_images"]} images. Recommended: <b>{esc(rec["method"])}, {esc(rec["layer_set"])}</b>
({esc(rec["why"])}). Sanity passes when the median |Spearman rho| between the trained model's map and the map
of a model with a random head is below {result["sanity_threshold"]}.</p>
<h2>Method x layer set</h2><table>{head}{rows}</table>
<h2>Deletion and insertion</h2><img src="{CURVES_PLOT}" alt="deletion and insertion curves">
<h2>Sanity: cascading randomisation</h2><img src="{SANITY_PLOT}" alt="rank correlation against depth">
{border}
</body></html>
"""
