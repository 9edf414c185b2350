"""The model card's sections on how the model serves: its test-time views and its audited heatmaps."""

from __future__ import annotations

from typing import Any

from pneumocam.explain.faithfulness import AREA_COLUMNS, area_text
from pneumocam.options import LOG_PROBABILITY, ROAD_FINALISTS
from pneumocam.reports.card_confidence import pct


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
                f"| {' + '.join(r['views'])} | {'yes' if r['stable'] else 'no'} | {pct(r['score'])} | "
                f"{pct(r['clean_accuracy'])} | {pct(r['mean_accuracy'])} | {pct(r['max_changed'])} |"
            )
    return "\n".join(lines)


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
