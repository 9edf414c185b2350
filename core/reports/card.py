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

from pneumocam.config import TrainConfig, TrainingRun
from pneumocam.model.artifact import ModelMeta
from pneumocam.reports.card_confidence import confidence_text, pct, site_curve_sets
from pneumocam.reports.card_serving import audit_table, views_clause, views_text
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
            f"| {cls} | {pct(m['accuracy'])} | {pct(m['precision'])} | {pct(m['recall'])} "
            f"| {m['f1']:.3f} | {auc} | {m['support']} |"
        )
    rows.append(
        f"| **overall** | **{pct(metrics['accuracy'])}** | | | macro {metrics['macro_f1']:.3f} | | "
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
    return pct(value) + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else "")


def protocol_comparison(metrics: dict[str, Any]) -> str:
    """The seed against each test protocol recorded in ``metrics``, every figure with its 95 % interval."""
    rows = [(key, title, text) for key, title, text in PROTOCOL_ROWS if key in metrics]
    ft = SEED["fine-tuned"]
    lines = [
        f"| test split ({metrics['test']['n_images']} images) | seed fine-tuned | "
        + " | ".join(t for _, t, _ in rows)
        + " |",
        "|---" * (len(rows) + 2) + "|",
        f"| overall accuracy | {pct(ft['accuracy'])} | "
        + " | ".join(_cell(metrics[k], "accuracy") for k, _, _ in rows)
        + " |",
    ]
    for cls in metrics["test"]["classes"]:
        for key in ("accuracy", "precision", "recall"):
            label = f"{cls} {'accuracy (1-vs-rest)' if key == 'accuracy' else key}"
            cells = " | ".join(_cell(metrics[k], key, cls) for k, _, _ in rows)
            lines.append(f"| {label} | {pct(ft[cls][key])} | {cells} |")
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
                f"{pct(p['accuracy'])} [{pct(p['ci95'][0])}, {pct(p['ci95'][1])}]{site_curve_sets(p)}" for p in cells
            )
            + " |"
        )
    ref = result["reference"]
    adapted = f", adapted without labels {pct(ref['adapted'])} %" if ref.get("adapted") is not None else ""
    return (
        "\n".join(lines)
        + f"\n\nReferences: the model untouched {pct(ref['untouched'])} %{adapted}. Each figure is the mean over "
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


def _recipe_text(training: TrainingRun) -> str:
    """The recipe a model was trained from (``train --recipe``) and what the command line changed, if recorded."""
    procedure = training.procedure or "two stages on cached activations"
    recipe = training.recipe
    if not recipe:
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
        changed = pct(r["changed"]) if "changed" in r else "n/a"
        recalls = " | ".join(pct(r["recall"][c]) for c in classes)
        lines.append(f"| {name} | {pct(r['accuracy'])} | {changed} | {recalls} |")
    lines.append(f"| **mean under perturbation** | **{pct(shift['mean_accuracy'])}** | |" + " |" * len(classes))
    if shift.get("max_changed_encoding") is not None:
        lines.append(
            f"\nRe-encoding, resampling and an imitated original upload (JPEG 50/90, four resampling filters, "
            f"'original': enlarged 4-8x with a random filter, slight noise, read back through our loader) changed at "
            f"most {pct(shift['max_changed_encoding'])} % of the calls (target: at most 3 %)."
        )
    if "original-clean" in rows:
        lines.append(
            "'original-clean' is a more faithful imitated original: the copy deblocked and denoised first, so it "
            "lacks the copy's JPEG texture. Each perturbation acts on the resized image, before the model's own "
            "JPEG step and views; 'original-clean' stays outside the mean and the target, fixed before it existed."
        )
    return "\n".join(lines)


def validity_text(meta: ModelMeta) -> str:
    """The validity score in a few lines: what it is, its threshold, and what it flagged where measured."""
    v = meta.validity
    lines = [
        f"Every call carries `in_distribution` and `ood_score`. The score: the {v.method}; `ood_score` is it "
        f"over the threshold that accepts {v.accept:.0%} of the validation split (fitted on {v.n_train} "
        f"training images; validation accepted {pct(v.validation['accepted'])} % of "
        f"{v.validation['n_images']})."
        + (
            f" The discriminator was fitted against {v.discriminator['against']['images']} radiographs of adults, "
            "lateral views and other body parts from public collections (never shipped); left out one collection "
            "at a time it flagged the left-out adults and every lateral and other-body-part film it was checked "
            "on (docs/validity.md)."
            if v.discriminator
            else ""
        )
        + " Above 1, or a sure check (a colour image; a DICOM of another modality, body part or view, or of a "
        f"patient {v.checks.get('adult_age', 18)} or older), flags the call as not meaningful; the image is "
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
                f"| {name} | {b['n_images']} | {b['n_flagged']} ({pct(b['share_flagged'])}) | "
                f"{pct(b.get('accuracy_all'))} | {pct(acc)} |"
            )
    if v.rematched:
        lines.append(f"\nRe-matched to {v.rematched['folder']} ({v.rematched['n_images']} images).")
    return "\n".join(lines)


def model_card(meta: ModelMeta) -> str:
    """Markdown with the YAML header Hugging Face reads, from metadata alone: ``templates/model_card.md`` filled in."""
    test = meta.metrics.get("test")
    val = meta.metrics.get("validation")
    shift = meta.metrics.get("validation_shift")
    curve = meta.metrics.get(metrics_key("test", SITE_CURVE))
    training = meta.training
    cfg = TrainConfig.current_names(training.config)  # a model.json written before a rename too
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
