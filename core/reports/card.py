"""The Hugging Face model card (``weights/README.md``), written from the model's metadata.

The prose is ``templates/model_card.md`` (Jinja); the numbers come from
``model.json`` (which ``evaluate --record-as test`` fills in), so the card never
disagrees with what the model measured.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2

from pneumocam.explain.faithfulness import AREA_COLUMNS, area_text
from pneumocam.model.artifact import ModelMeta
from pneumocam.options import LOG_PROBABILITY, ROAD_FINALISTS
from pneumocam.reports.card_confidence import confidence_text, site_curve_sets
from pneumocam.site.protocols import SITE_CURVE, metrics_key

CARD_TEMPLATE = "model_card.md"
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=False,  # Markdown, not HTML
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)
#: What each class means, for readers of the card.
CLASS_TEXT = {"BACTERIA": " (bacterial pneumonia)", "VIRUS": " (viral pneumonia)"}
#: The seed project's published test-split table (Streamlit + MLflow), for comparison.
SEED = {
    "baseline": {"accuracy": 0.804, "VIRUS": {"recall": 0.608}},
    "fine-tuned": {
        "accuracy": 0.830,
        "BACTERIA": {"accuracy": 0.878, "precision": 0.819, "recall": 0.880},
        "NORMAL": {"accuracy": 0.899, "precision": 0.858, "recall": 0.876},
        "VIRUS": {"accuracy": 0.883, "precision": 0.800, "recall": 0.676},
    },
}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _front_matter(meta: ModelMeta, test: dict[str, Any] | None) -> str:
    """The YAML header the Hub reads, written by huggingface_hub: licence, tags, base model, test figures."""
    from huggingface_hub import EvalResult, ModelCardData

    task = f"Pediatric chest X-ray triage ({len(meta.classes)} classes)"
    results = []
    if test:
        figures = [("accuracy", test["accuracy"], "overall accuracy"), ("f1", test["macro_f1"], "macro F1")]
        figures += [("recall", m["recall"], f"{cls} recall") for cls, m in test["per_class"].items()]
        dataset = f"Kermany et al. 2018 chest X-ray test split ({test['n_images']} images)"
        results = [
            EvalResult(
                task_type="image-classification",
                task_name=task,
                dataset_type="chest-xray",
                dataset_name=dataset,
                metric_type=kind,
                metric_value=round(float(value), 4),
                metric_name=name,
            )
            for kind, value, name in figures
        ]
    data = ModelCardData(
        license="cc-by-4.0",
        library_name="keras",
        pipeline_tag="image-classification",
        tags=["chest-x-ray", "pneumonia", "grad-cam", "mobilenetv2", "medical-imaging", "research-only"],
        datasets=["kermany-2018-chest-xray"],
        base_model="google/mobilenet_v2_1.0_224",
        model_name=meta.name if results else None,
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---"


def per_class_table(metrics: dict[str, Any]) -> str:
    rows = ["| class | accuracy | precision | recall | F1 | AUC | support |", "|---|---|---|---|---|---|---|"]
    for cls, m in metrics["per_class"].items():
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        rows.append(
            f"| {cls} | {_pct(m['accuracy'])} | {_pct(m['precision'])} | {_pct(m['recall'])} "
            f"| {m['f1']:.3f} | {auc} | {m['support']} |"
        )
    rows.append(
        f"| **overall** | **{_pct(metrics['accuracy'])}** | | | macro {metrics['macro_f1']:.3f} | | "
        f"{metrics['n_images']} |"
    )
    return "\n".join(rows)


def confusion_table(metrics: dict[str, Any]) -> str:
    classes = metrics["classes"]
    rows = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cls, row in zip(classes, metrics["confusion_matrix"]):
        rows.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(rows)


#: The test-split protocols, in the order of the comparison table: model.json key, column title, one sentence.
PROTOCOL_ROWS = (
    (
        "test",
        "train-only",
        "Everything (architecture, hyper-parameters, checkpoint) chosen on the validation split from train; "
        "`python -m cli evaluate data/test`. This is the model the demo serves.",
    ),
    (
        "test:site-adapted",
        "site-adapted",
        "Unlabelled site adaptation, transductive: batch-norm and pooled-feature statistics re-standardised, "
        "then the probabilities adjusted together by LAME (each towards its nearest neighbours in pooled "
        "features), on the test images themselves, labels unused; `evaluate data/test --adapt`.",
    ),
    (
        "test:site-calibrated",
        "site-calibrated",
        "Labelled site calibration, cross-fitted (K=2): the test split halved by class and patient (seed 0); a "
        "temperature and one logit bias per class fitted on one half score the other, and vice versa; "
        "`evaluate data/test --cross-calibrate 2`.",
    ),
    (
        "test:site-adapted+site-calibrated",
        "adapted + calibrated",
        "Both: adaptation to the unlabelled images, then the cross-fitted calibration above; "
        "`evaluate data/test --adapt --cross-calibrate 2`.",
    ),
    (
        "test:site-tuned",
        "site-tuned",
        "Labelled site tuning, cross-fitted (K=2), the same halves: on one half a new read-out of the pooled "
        "features is fitted with the trained logits as offset, its penalty (or calibration, or nothing) chosen by "
        "a patient-grouped 3-fold cross-validation inside that half; it scores the other half, and vice versa; "
        "`evaluate data/test --cross-tune 2`.",
    ),
    (
        "test:site-adapted+site-tuned",
        "adapted + tuned",
        "Adaptation to the unlabelled images, then the cross-fitted tuning above; "
        "`evaluate data/test --adapt --cross-tune 2`.",
    ),
)


def _cell(m: dict[str, Any], key: str, cls: str | None = None) -> str:
    value = m[key] if cls is None else m["per_class"][cls][key]
    ci = m.get("ci95", {})
    ci = ci.get(key) if cls is None else ci.get("per_class", {}).get(cls, {}).get(key)
    return _pct(value) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def protocol_comparison(metrics: dict[str, Any]) -> str:
    """The seed against each test protocol recorded in ``metrics``, every figure with its 95 % interval."""
    rows = [(key, title, text) for key, title, text in PROTOCOL_ROWS if key in metrics]
    ft = SEED["fine-tuned"]
    lines = [
        f"| test split ({metrics['test']['n_images']} images) | seed fine-tuned | "
        + " | ".join(t for _, t, _ in rows)
        + " |",
        "|---" * (len(rows) + 2) + "|",
        f"| overall accuracy | {_pct(ft['accuracy'])} | "
        + " | ".join(_cell(metrics[k], "accuracy") for k, _, _ in rows)
        + " |",
    ]
    for cls in metrics["test"]["classes"]:
        for key in ("accuracy", "precision", "recall"):
            label = f"{cls} {'accuracy (1-vs-rest)' if key == 'accuracy' else key}"
            cells = " | ".join(_cell(metrics[k], key, cls) for k, _, _ in rows)
            lines.append(f"| {label} | {_pct(ft[cls][key])} | {cells} |")
    notes = [f"- **{title}**: {text}" for _, title, text in rows]
    return (
        "\n".join(lines)
        + "\n\nHow each column was measured:\n"
        + "\n".join(notes)
        + (
            "\n\nBrackets: 95 % bootstrap intervals, patients resampled (1,000 resamples). The seed's figures were "
            "published without intervals and were probably chosen on test."
        )
    )


def site_curve_table(result: dict[str, Any]) -> str:
    """Accuracy [95 % interval] of calibration and tuning per number of labelled site images."""
    by = {(p["method"], p["size"], p["whole_half"]): p for p in result["points"]}
    sizes = list(dict.fromkeys((p["size"], p["whole_half"]) for p in result["points"]))
    methods = list(dict.fromkeys(p["method"] for p in result["points"]))
    lines = ["| labelled images per fit | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for s in sizes:
        label = f"{s[0]} (the whole half)" if s[1] else str(s[0])
        cells = [by[(m, *s)] for m in methods]
        lines.append(
            f"| {label} | "
            + " | ".join(
                f"{_pct(p['accuracy'])} [{_pct(p['ci95'][0])}, {_pct(p['ci95'][1])}]{site_curve_sets(p)}" for p in cells
            )
            + " |"
        )
    ref = result["reference"]
    adapted = f", adapted without labels {_pct(ref['adapted'])} %" if ref.get("adapted") is not None else ""
    return (
        "\n".join(lines)
        + f"\n\nReferences: the model untouched {_pct(ref['untouched'])} %{adapted}. Each figure is the mean over "
        f"{result['repeats']} random halvings of the {result['n_images']} images (by class and patient); a "
        "class-stratified sample of the given size from one half is fitted and the other half scored, then the "
        "halves swap; the interval resamples patients. `python -m cli site-curve data/test`."
        + (
            f' After "sets": the {result["sets"]["level"]:.0%} prediction sets refitted on the same sample, their '
            "coverage on the other half and mean size."
            if result.get("sets")
            else ""
        )
    )


_AUGMENT_TEXT = {
    "acquisition": "; zoom, resolution, blur, gamma, contrast and noise changes",
    "invariance": "; zoom, resolution, blur, gamma, contrast and noise changes; resampling filters, scale and "
    "JPEG quality",
}


def _recipe_text(training: dict[str, Any]) -> str:
    """The recipe a model was trained from (``train --recipe``) and what the command line changed, if recorded."""
    procedure = training.get("procedure", "two stages on cached activations")
    recipe = training.get("recipe")
    if not isinstance(recipe, dict):
        return procedure
    changed = "; ".join(f"{k}: {v}" for section in recipe.get("overrides", {}).values() for k, v in section.items())
    return f"recipe `{recipe['name']}`" + (f" with {changed}" if changed else "") + f" ({procedure})"


def _backbone_text(cfg: dict[str, Any]) -> str:
    """Which part of the backbone training changed: none (frozen) or the layers from the fine-tuning index on."""
    start = cfg.get("fine_tune_from")
    return "frozen" if start is None else f"fine-tuned from layer {start}, batch norm frozen"


def stress_table(shift: dict[str, Any]) -> str:
    rows = shift["perturbations"]
    classes = list(next(iter(rows.values()))["recall"])
    lines = ["| perturbation | accuracy | calls changed | " + " | ".join(f"{c} recall" for c in classes) + " |"]
    lines.append("|---" * (len(classes) + 3) + "|")
    for name, r in rows.items():
        changed = _pct(r["changed"]) if "changed" in r else "n/a"
        recalls = " | ".join(_pct(r["recall"][c]) for c in classes)
        lines.append(f"| {name} | {_pct(r['accuracy'])} | {changed} | {recalls} |")
    lines.append(f"| **mean under perturbation** | **{_pct(shift['mean_accuracy'])}** | |" + " |" * len(classes))
    if shift.get("max_changed_encoding") is not None:
        lines.append(
            f"\nRe-encoding, resampling and an imitated original upload (JPEG 50/90, four resampling filters, "
            f"'original': enlarged 4-8x with a random filter, slight noise, read back through our loader) changed at "
            f"most {_pct(shift['max_changed_encoding'])} % of the calls (target: at most 3 %)."
        )
    if "original-clean" in rows:
        lines.append(
            "'original-clean' is a more faithful imitated original: the copy deblocked and denoised first, so it "
            "lacks the copy's JPEG texture. Each perturbation acts on the resized image, before the model's own "
            "JPEG step and views; 'original-clean' stays outside the mean and the target, fixed before it existed."
        )
    return "\n".join(lines)


def views_clause(meta: Any) -> str:
    """How the robustness figures were scored: with the model's test-time views, or the image alone."""
    views = meta.predict.views
    return (
        f", scored with the test-time views ({', '.join(views)}) as every entry point scores" if len(views) > 1 else ""
    )


def views_text(meta: Any) -> str:
    """The views every entry point averages, and the validation table that chose them."""
    choice = meta.predict.choice
    explained = "log of the averaged probability" if meta.explain.score == LOG_PROBABILITY else "averaged logit"
    lines = [
        f"Every entry point (`predict`, `evaluate`, `stress`, the Space) scores an X-ray as {len(meta.predict.views)} "
        f"views, {', '.join(f'`{v}`' for v in meta.predict.views)}, and averages their probabilities; Grad-CAM "
        f"explains the {explained}, each view's map mapped back onto the image. `--no-views` scores the image alone."
    ]
    if choice.get("table"):
        lines.append(
            f"\nChosen on the {choice.get('split', 'validation')} split ({choice.get('n_images', '?')} images; by "
            f"training, or `python -m cli choose-views` for an older model): {choice.get('rule')}.\n"
        )
        lines.append("| views | stable | rule score | clean | mean under perturbation | most calls changed |")
        lines.append("|---|---|---|---|---|---|")
        for r in sorted(choice["table"], key=lambda r: -r["score"]):
            lines.append(
                f"| {' + '.join(r['views'])} | {'yes' if r['stable'] else 'no'} | {_pct(r['score'])} | "
                f"{_pct(r['clean_accuracy'])} | {_pct(r['mean_accuracy'])} | {_pct(r['max_changed'])} |"
            )
    return "\n".join(lines)


def _beats(row: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """Lower ROAD MoRF area and higher LeRF area than the baseline map (False where not measured)."""
    if row["morf_auc"] is None:
        return False
    return row["morf_auc"] < baseline["morf_auc"] and row["lerf_auc"] > baseline["lerf_auc"]


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def audit_table(explain: Any) -> str:
    """The audit behind the default heatmaps: candidate x layer set, ROAD first, with baselines and sanity."""
    a = explain.audit
    rec = a["recommendation"]
    if "road" not in a:
        return (
            f"Chosen by an audit of {a['n_images']} images ({a['date'][:10]}) that predates ROAD; run "
            "`python -m cli audit --record` again for the table."
        )
    rows = [
        "| method | explains | layer set | ROAD MoRF (lower is better) | ROAD LeRF (higher is better) | "
        "LeRF - MoRF | median abs(rho) after head | sanity | blank maps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    chosen = (rec["method"], rec["score"], rec["layer_set"])
    for r in a["table"]:
        mark = "**" if (r["method"], r["score"], r["layer_set"]) == chosen else ""
        named = r["layer_set"] if r["layers"] == [r["layer_set"]] else f"{r['layer_set']} ({', '.join(r['layers'])})"
        half = "*" if 0 < r.get("road_images", a["n_images"]) < a["n_images"] else ""
        areas = " | ".join(area_text(r[k]) for k in AREA_COLUMNS) + half
        rows.append(
            f"| {mark}{r['method']}{mark} | {r['score']} | {mark}{named}{mark} | {areas} | "
            f"{r['rho_after_head']:.2f} | {'pass' if r['sanity_pass'] else 'fail'} | {_share(r.get('empty_share'))} |"
        )
    for name, b in a["baselines"].items():
        rows.append(
            f"| {name} map (baseline) | | | {b['morf_auc']:.3f} | {b['lerf_auc']:.3f} | "
            f"{b['lerf_auc'] - b['morf_auc']:.3f} | | | |"
        )
    base = a["baselines"]
    beats = [
        r
        for r in a["table"]
        if r["sanity_pass"]
        and all(r["morf_auc"] < b["morf_auc"] and r["lerf_auc"] > b["lerf_auc"] for b in base.values())
    ]
    shares = ", ".join(f"{s:.0%}" for s in a["road"]["shares"])
    served = a.get("served")
    how = (
        f"scored and explained as served: {served['input']}, test-time views {', '.join(served['views'])}"
        if served
        else "without the test-time views (an audit older than the served path)"
    )
    failing = sorted({r["method"] for r in a["table"]} - {r["method"] for r in a["table"] if r["sanity_pass"]})
    scores = sorted({r["score"] for r in a["table"]})
    explained = (
        "either the class's logit (textbook) or its log-probability (the percentage shown, so also the evidence "
        "against the other classes)"
        if len(scores) > 1
        else f"the class's {scores[0]}, the score the model explains (an earlier audit chose it)"
    )
    return "\n".join(
        [
            f"`python -m cli audit` on {a['n_images']} images of `{a['data_dir']}` ({a['date'][:10]}; {how}; each "
            "map explains the predicted class). Sanity (Adebayo et al. 2018): the head is randomised and the map must "
            f"change, median abs(Spearman rho) below {a['sanity_threshold']}. Faithfulness (ROAD, Rong et al. 2022): "
            f"{shares} of the image removed in the map's order, most relevant first (MoRF) or least relevant first "
            "(LeRF), the removed pixels filled from their neighbours by noisy linear imputation "
            f"({a['road']['grid']}x{a['road']['grid']} cells, noise {a['road']['noise']} grey levels), so the "
            "model loses the information, not a grey patch's edges. A candidate that fails sanity on a layer set is "
            "not measured there (-); ROAD runs in two rounds, every candidate that passed on every other image, then "
            f"the default, the best {ROAD_FINALISTS} of that round and the baselines on the rest (*: first round "
            f"only). Each candidate is a CAM method explaining {explained}. The default is the "
            "widest LeRF - MoRF gap that passes sanity: "
            f"**{rec['method']} on {rec['layer_set']}, explaining the {rec['score']}**. Every page shows this map "
            "first, named as the audited default, then one map per layer; blank maps: the share of images whose "
            "map holds no evidence for the explained class (the pages caption those, never an empty panel).",
            "",
            *rows,
            "",
            f"{len(beats)} of the {len(a['table'])} candidates pass sanity and beat both the random map and a "
            "centred Gaussian (which knows nothing of the image) on both ROAD orders."
            + (
                f" {', '.join(failing)} fail sanity on every layer set: the Space does not offer them unless asked "
                "(an advanced switch), and the pages that draw them say so."
                if failing
                else ""
            ),
        ]
    )


def validity_text(meta: ModelMeta) -> str:
    """The validity score in a few lines: what it is, its threshold, and what it flagged where measured."""
    v = meta.validity
    lines = [
        f"Every call carries `in_distribution` and `ood_score`. The score: the {v['method']}; `ood_score` is it "
        f"over the threshold that accepts {v['accept']:.0%} of the validation split (fitted on {v['n_train']} "
        f"training images; validation accepted {_pct(v['validation']['accepted'])} % of "
        f"{v['validation']['n_images']})."
        + (
            f" The discriminator was fitted against {v['discriminator']['against']['images']} radiographs of adults, "
            "lateral views and other body parts from public collections (never shipped); left out one collection "
            "at a time it flagged the left-out adults and every lateral and other-body-part film it was checked "
            "on (docs/validity.md)."
            if "discriminator" in v
            else ""
        )
        + " Above 1, or a sure check (a colour image; a DICOM of another modality, body part or view, or of a "
        f"patient {v['checks'].get('adult_age', 18)} or older), flags the call as not meaningful; the image is "
        "scored anyway. `validity.npz` holds the statistics (SHA-256 in `model.json`); `adapt` re-matches them to "
        "the site.",
    ]
    rows = [
        (name, m["validity"])
        for name, m in meta.metrics.items()
        if name.startswith("test") and isinstance(m, dict) and m.get("validity", {}).get("scored")
    ]
    if rows:
        lines += [
            "",
            "| measured on | images | flagged (%) | accuracy, all (%) | accuracy, accepted (%) |",
            "|---|---|---|---|---|",
        ]
        for name, b in rows:
            acc = b.get("accepted", {}).get("accuracy")
            lines.append(
                f"| {name} | {b['n_images']} | {b['n_flagged']} ({_pct(b['share_flagged'])}) | "
                f"{_pct(b.get('accuracy_all'))} | {_pct(acc)} |"
            )
    if "rematched" in v:
        lines.append(f"\nRe-matched to {v['rematched']['folder']} ({v['rematched']['n_images']} images).")
    return "\n".join(lines)


def model_card(meta: ModelMeta) -> str:
    """Markdown with the YAML header Hugging Face reads, from metadata alone: ``templates/model_card.md`` filled in."""
    test = meta.metrics.get("test")
    val = meta.metrics.get("validation")
    shift = meta.metrics.get("validation_shift")
    curve = meta.metrics.get(metrics_key("test", SITE_CURVE))
    training = meta.training
    cfg = training.get("config", {})
    context = {
        "meta": meta,
        "front_matter": _front_matter(meta, test),
        "class_list": ", ".join(f"**{c}**{CLASS_TEXT.get(c, '')}" for c in meta.classes),
        "backbone": _backbone_text(cfg),
        "shown_layers": meta.shown_layers(),
        "data": meta.data,
        "training": training,
        "cfg": cfg,
        "recipe": _recipe_text(training),
        "augment": _AUGMENT_TEXT.get(cfg.get("augment"), ""),
        "validation": per_class_table(val) if val else "",
        "stress": stress_table(shift) if shift else "",
        "views_clause": views_clause(meta),
        "views": views_text(meta) if len(meta.predict.views) > 1 else "",
        "test": test,
        "test_table": per_class_table(test) if test else "",
        "confusion": confusion_table(test) if test else "",
        "protocols": protocol_comparison(meta.metrics) if test else "",
        "site_curve": site_curve_table(curve) if curve else "",
        "validity": validity_text(meta) if meta.validity else "",
        "confidence": confidence_text(meta),
        "audit": audit_table(meta.explain) if meta.explain.audit else "",
    }
    text = _TEMPLATES.get_template(CARD_TEMPLATE).render(context)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
