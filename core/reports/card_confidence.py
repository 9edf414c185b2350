"""The model card's "How sure" section: the temperature, the prediction sets and the risk-coverage figures.

Read from ``model.json`` alone (``temperature``, ``conformal`` and the recorded test metrics), like the rest of
the card; :mod:`pneumocam.reports.card` places it.
"""

from __future__ import annotations

from typing import Any

from pneumocam.model.artifact import ModelMeta

#: The recorded test protocols whose sets the card shows, and how each one's threshold was fitted.
SET_ROWS = (
    ("test", "train-only", "the model's threshold, fitted on the validation split from train"),
    ("test:site-adapted", "site-adapted", "the model's threshold (no label at the site)"),
    ("test:site-calibrated", "site-calibrated", "cross-fitted: each half's threshold from the other half"),
    ("test:site-tuned", "site-tuned", "cross-fitted: each half's threshold from the other half"),
)


def pct(v: float | None) -> str:
    """A share as the card writes it: percent with one decimal, or n/a."""
    return "n/a" if v is None else f"{100 * v:.1f}"


def _ci(v: float, ci: list[float] | None, percent: bool = True) -> str:
    if percent:
        return pct(v) + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else "")
    return f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def temperature_text(meta: ModelMeta) -> str:
    t = meta.temperature
    if not t:
        return ""
    test = meta.metrics.get("test", {})
    if not t.used:
        return (
            f"A temperature fitted on validation ({t.value:.3f}) did not lower the cross-fitted validation "
            f"calibration error ({t.ece_before:.3f} -> {t.ece_after_cross_fitted:.3f}), so none is used."
        )
    after_test = f"; on the test split the ECE is now {test['ece']:.3f}" if "ece" in test else ""
    return (
        f"**Calibrated percentages.** The trained model was underconfident: a temperature of {t.value:.3f}, "
        f"fitted on the validation split's served probabilities, lowers its calibration error from "
        f"{t.ece_before:.3f} to {t.ece_after_cross_fitted:.3f} (cross-fitted on two patient halves), so it is "
        f"folded into the logits and every entry point serves it{after_test}."
    )


def sets_text(meta: ModelMeta) -> str:
    if not meta.conformal:
        return ""
    c = meta.conformal.rule
    rows = [(key, title, how) for key, title, how in SET_ROWS if "sets" in meta.metrics.get(key, {})]
    lines = [
        f"**Prediction sets.** Every call carries the classes the X-ray may belong to at the {c.level:.0%} level "
        f"(split conformal, score `{c.method}`, thresholds {c.threshold_text()} in class order; fitted on "
        f"{c.fitted_on}, chosen by the rule in `pneumocam.model.conformal`). On images like the validation "
        "ones the set holds the true class at least that often; two classes in the set mean the model cannot tell "
        "them apart for this X-ray.",
    ]
    if rows:
        classes = meta.metrics["test"]["classes"]
        lines += [
            "",
            "| test split | sets fitted | coverage (%) | mean set size | one class (%) | right when one (%) | "
            + " | ".join(f"{c} coverage (%)" for c in classes)
            + " |",
            "|---" * (6 + len(classes)) + "|",
        ]
        for key, title, how in rows:
            s = meta.metrics[key]["sets"]
            per = " | ".join(pct(s["per_class"][c].get("coverage")) for c in classes)
            lines.append(
                f"| {title} | {how} | {_ci(s['coverage'], s['coverage_ci95'])} | "
                f"{_ci(s['mean_size'], s['mean_size_ci95'], False)} | {pct(s['single_share'])} | "
                f"{pct(s['single_accuracy'])} | {per} |"
            )
        lines += [
            "",
            "**A threshold fitted on the training data does not hold at a new site.** The test split is another "
            "acquisition batch: the train-only sets cover fewer test X-rays than the level promises, most of the "
            "shortfall on one class. Fitted on the site's own labelled X-rays (`calibrate`, `tune`, or "
            "`evaluate --cross-calibrate` to measure it), the guarantee holds for that site's images again.",
        ]
    return "\n".join(lines)


def risk_coverage_text(meta: ModelMeta) -> str:
    rows = [
        (title, meta.metrics[key]["risk_coverage"])
        for key, title, _ in SET_ROWS
        if "risk_coverage" in meta.metrics.get(key, {})
    ]
    if not rows:
        return ""
    shares = [p["share"] for p in rows[0][1]["points"]]
    lines = [
        "**Answers ranked by confidence.** The accuracy of the most confident share of the answers (the model "
        "abstains on the rest), and the area under that curve:",
        "",
        "| test split | " + " | ".join(f"{s:.0%} answered" for s in shares) + " | area |",
        "|---" * (len(shares) + 2) + "|",
    ]
    for title, block in rows:
        cells = " | ".join(pct(p["accuracy"]) for p in block["points"])
        lines.append(f"| {title} | {cells} | {block['area']:.3f} |")
    return "\n".join(lines)


def confidence_text(meta: ModelMeta) -> str:
    """The whole section, empty for a model with neither a temperature nor sets."""
    parts = [temperature_text(meta), sets_text(meta), risk_coverage_text(meta)]
    return "\n\n".join(p for p in parts if p)


def site_curve_sets(point: dict[str, Any]) -> str:
    """A site-curve point's held-out set coverage and size, for the card's table ("" when not measured)."""
    if "coverage" not in point:
        return ""
    return f"; sets {pct(point['coverage'])} % / {point['mean_set_size']:.2f}"
