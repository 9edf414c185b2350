"""What an audit prints and writes: the terminal table, audit.json, two plots, the border page, index.html."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pneumocam.atomic import save_figure, write_bytes, write_json, write_text
from pneumocam.explain.audit_choice import CENTER, RANDOM, ROAD_AUCS
from pneumocam.explain.audit_result import AuditResult, AuditRow
from pneumocam.explain.explainer import Explainer
from pneumocam.explain.faithfulness import AREA_COLUMNS, area_text
from pneumocam.explain.overlay import encode_png
from pneumocam.explain.pages import compose_page, explanation_row
from pneumocam.images.readers import read_image
from pneumocam.options import DEFAULT_OPACITY, GALLERY_LIMIT
from pneumocam.reports.audit_figures import audit_curves_figure, sanity_figure
from pneumocam.scoring.predictor import Predictor

AUDIT_FILE = "audit.json"
SANITY_PLOT = "sanity.png"
CURVES_PLOT = "curves.png"
BORDER_PAGE = "border_flagged.png"
INDEX = "index.html"
AUDIT_FILES = (AUDIT_FILE, SANITY_PLOT, CURVES_PLOT, BORDER_PAGE, INDEX)


def audit_metrics(result: AuditResult) -> dict[str, float]:
    """The audit's figures as flat metrics: per candidate and layer set, the baselines, the counts."""
    out = {
        f"{r.name}.{r.layer_set}.{k}": float(getattr(r, k))
        for r in result.table
        for k in (*ROAD_AUCS, "rho_after_head", "empty_share")
        if getattr(r, k) is not None
    }
    for base in (RANDOM, CENTER):
        out.update({f"{base}.{k}": float(result.road[base][k]) for k in ROAD_AUCS})
    out["n_images"] = float(result.n_images)
    out["border_flagged"] = float(len(result.border.flagged))
    return out


def _half(row: AuditRow, result: AuditResult) -> str:
    """ "*" for a row ROAD measured in its first round only."""
    return "*" if 0 < row.road_images < result.n_images else " "


def _served_text(result: AuditResult) -> str:
    served = result.served
    return f"{served['input']}; test-time views {', '.join(served['views'])}"


def _areas(row: AuditRow) -> list[float | None]:
    return [getattr(row, k) for k in AREA_COLUMNS]


def format_audit(result: AuditResult) -> str:
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
    for r in result.table:
        lines.append(
            f"{r.name:<28} {r.layer_set:<26} "
            + " ".join(f"{area_text(a):>6}" for a in _areas(r))
            + f"{_half(r, result)} {r.rho_after_head:>5.2f}  {'pass' if r.sanity_pass else 'FAIL'}  "
            f"{r.empty_share:>5.0%}"
        )
    for base in (RANDOM, CENTER):
        b = result.road[base]
        lines.append(
            f"{base + ' map':<55} {b['morf_auc']:>6.3f} {b['lerf_auc']:>6.3f} {b['lerf_auc'] - b['morf_auc']:>6.3f}"
        )
    rec = result.recommendation
    lines.append(
        f"recommended: {rec.name}, {rec.layer_set}"
        + (" (today's default)" if rec.is_default else " (not today's default)")
    )
    cascade = result.cascade
    per_layer = ", ".join(f"{name} {share:.0%}" for name, share in result.blank_layers[cascade].items())
    lines.append(f"blank maps per layer ({cascade}, the pages' per-layer panels): {per_layer}")
    lines.append(f"border-flagged images: {len(result.border.flagged)} of {result.n_images}")
    return "\n".join(lines)


def border_rows(predictor: Predictor, result: AuditResult, limit: int = GALLERY_LIMIT) -> list[dict[str, Any]]:
    """Rows for a page of the flagged images: the X-ray, then the map the border share was measured on."""
    border = result.border
    explainer = Explainer(predictor, border.method, border.score)
    layers = result.layer_sets[border.layer_set]
    rows = []
    for name in border.flagged[:limit]:
        e = explainer.explain([read_image(name)], opacity=DEFAULT_OPACITY, max_side=512, layer_names=layers)[0]
        share = border.share[name]
        caption = f"{Path(name).name}\npred {e.predicted} ({e.probabilities[e.predicted]:.0%}); border {share:.0%}"
        rows.append(explanation_row(e, caption))
    return rows


def write_audit(out: Path, result: AuditResult, predictor: Predictor, title: str) -> list[Path]:
    """audit.json, sanity.png, curves.png, the border page and index.html, each written atomically."""
    out = Path(out)
    written = [
        write_json(out / AUDIT_FILE, result.to_dict()),
        save_figure(sanity_figure(result), out / SANITY_PLOT),
        save_figure(audit_curves_figure(result), out / CURVES_PLOT),
    ]
    rows = border_rows(predictor, result)
    if rows:
        page = compose_page(rows, f"{title}: maps resting mostly on the border")
        written.append(write_bytes(out / BORDER_PAGE, encode_png(page)))
    written.append(write_text(out / INDEX, index_html(result, title, bool(rows))))
    return written


def index_html(result: AuditResult, title: str, border_page: bool) -> str:
    esc = html.escape
    head = "<tr><th>method</th><th>layer set</th><th>ROAD MoRF</th><th>ROAD LeRF</th><th>LeRF - MoRF</th>"
    head += "<th>|rho| after head</th><th>sanity</th><th>blank maps</th></tr>"
    rows = "".join(
        f"<tr><td>{esc(r.name)}</td><td>{esc(r.layer_set)}</td>"
        + "".join(f"<td>{area_text(a)}</td>" for a in _areas(r)[:-1])
        + f"<td>{area_text(r.road_gap)}{_half(r, result).strip()}</td><td>{r.rho_after_head:.2f}</td>"
        f"<td>{'pass' if r.sanity_pass else 'FAIL'}</td><td>{r.empty_share:.0%}</td></tr>"
        for r in result.table
    )
    road = result.road
    for base in (RANDOM, CENTER):
        b = road[base]
        rows += (
            f"<tr><td colspan=2><i>{base} map (baseline)</i></td><td>{b['morf_auc']:.3f}</td>"
            f"<td>{b['lerf_auc']:.3f}</td><td>{b['lerf_auc'] - b['morf_auc']:.3f}</td><td></td><td></td><td></td></tr>"
        )
    rec = result.recommendation
    flagged = result.border.flagged
    border = f"<h2>Maps resting on the border ({len(flagged)} of {result.n_images})</h2>" + (
        f'<img src="{BORDER_PAGE}" alt="border-flagged images">' if border_page else "<p>None.</p>"
    )
    shares = ", ".join(f"{s:.0%}" for s in road["shares"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>{esc(title)}</h1>
<p>{result.n_images} images, scored and explained as served: {esc(_served_text(result))}.
Recommended: <b>{esc(rec.name)},
{esc(rec.layer_set)}</b> ({esc(rec.why)}). ROAD (Rong et al. 2022) removes {shares} of the image in the
map's order, most relevant first (MoRF: lower is more faithful) or least relevant first (LeRF: higher is more
faithful), and fills the removed pixels from their neighbours by noisy linear imputation. Sanity passes when the
median |Spearman rho| between the trained model's map and the map of a model with a random head is below
{result.sanity_threshold}. Blank maps: the share of images whose map holds no evidence for the explained
class on any layer of the set (the pages show those with a caption, not as an empty panel). ROAD runs in two
rounds: every candidate that passed sanity on every other image, then the model's default, the best of that round
and the baselines on the rest (*: a row measured in the first round only).</p>
<h2>Method x layer set</h2><table>{head}{rows}</table>
<h2>ROAD curves</h2><img src="{CURVES_PLOT}" alt="ROAD curves, most and least relevant first">
<h2>Sanity: cascading randomisation</h2><img src="{SANITY_PLOT}" alt="rank correlation against depth">
{border}
</body></html>
"""
