"""Grad-CAM galleries of one class's outcomes (e.g. VIRUS false negatives)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumocam.atomic import write_bytes, write_text
from pneumocam.errors import ImageLoadError, InputError
from pneumocam.explain.overlay import encode_png
from pneumocam.explain.pages import compose_page, explanation_row
from pneumocam.images.readers import read_image
from pneumocam.model.validity import FLAG_MARK
from pneumocam.options import DEFAULT_OPACITY, GALLERY_MAX_SIDE, GALLERY_PER_PAGE
from pneumocam.reports.evaluation import Prediction
from pneumocam.scoring.metrics import outcome_mask

if TYPE_CHECKING:
    from pneumocam.explain.explainer import Explainer

_PAGE = re.compile(r"^page_\d{3,}\.png$")


def is_gallery_entry(name: str) -> bool:
    """Names a gallery folder may hold."""
    return name == "index.html" or bool(_PAGE.match(name))


def select(predictions: Sequence[Prediction], classes: Sequence[str], cls: str, outcome: str) -> list[Prediction]:
    """The predictions of ``cls`` with that one-vs-rest outcome, most confident first."""
    if cls not in classes:
        raise InputError(f"unknown class {cls!r}; choose one of {', '.join(classes)}")
    idx = {c: i for i, c in enumerate(classes)}
    y_true = np.array([idx[p.true] for p in predictions], dtype=int)
    y_pred = np.array([idx[p.predicted] for p in predictions], dtype=int)
    mask = outcome_mask(y_true, y_pred, idx[cls], outcome)
    chosen = [p for p, m in zip(predictions, mask) if m]
    return sorted(chosen, key=lambda p: -p.probabilities[p.predicted])


def caption(p: Prediction) -> str:
    """File name, true and predicted class; a flagged call (:mod:`pneumocam.model.validity`) is marked."""
    name = p.file.rsplit("/", 1)[-1]
    mark = f"\n{FLAG_MARK}" if p.in_distribution is False else ""
    return f"{name}\ntrue {p.true} | pred {p.predicted} ({p.probabilities[p.predicted]:.0%}){mark}"


def render_pages(
    explainer: Explainer,
    chosen: Sequence[Prediction],
    data_dir: Path,
    out: Path,
    n_layers: int | None = None,
    per_page: int = GALLERY_PER_PAGE,
    explain: str = "predicted",
    opacity: float = DEFAULT_OPACITY,
    title: str = "",
    on_page: Callable[[int], None] | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write ``page_NNN.png`` grids; returns the pages and the files that could not be read."""

    pages: list[Path] = []
    failed: list[tuple[str, str]] = []
    for start in range(0, len(chosen), per_page):
        batch, images = [], []
        page = chosen[start : start + per_page]
        for p in page:
            try:
                images.append(read_image(data_dir / p.file))
                batch.append(p)
            except ImageLoadError as exc:
                failed.append((p.file, exc.reason))
        if not batch:
            if on_page:
                on_page(len(page))
            continue
        targets = {"predicted": None, "true": [p.true for p in batch]}.get(explain, [explain] * len(batch))
        shown = {"n_layers": n_layers, "target": targets, "opacity": opacity, "max_side": GALLERY_MAX_SIDE}
        explained = explainer.explain(images, **shown)
        rows = [explanation_row(e, caption(p)) for p, e in zip(batch, explained)]
        page_title = f"{title} (page {len(pages) + 1})" if title else ""
        pages.append(write_bytes(out / f"page_{len(pages) + 1:03d}.png", encode_png(compose_page(rows, page_title))))
        if on_page:
            on_page(len(page))  # failed files count as done: the bar reaches its end
    return pages, failed


def write_index(out: Path, pages: Sequence[Path], title: str, summary: str) -> Path:
    """A static ``index.html`` that shows every page."""
    imgs = "\n".join(
        f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.name)}'
        "</figcaption></figure>"
        for p in pages
    )
    body = imgs or "<p>No images with this outcome.</p>"
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}img{{max-width:100%;border:1px solid #ccc}}
figure{{margin:0 0 2em 0}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>
<p>Each row: the X-ray, then the model's default map (framed; named "audited default" when the heatmap audit
chose it), then each explained conv layer's map (deepest last). A map with no evidence for the explained class
says so and shows the plain X-ray. Research demo, not a medical device.</p>
{body}
</body></html>
"""
    return write_text(out / "index.html", doc)
