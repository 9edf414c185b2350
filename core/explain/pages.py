"""Grad-CAM pages drawn directly with Pillow: one row per X-ray, the image, the default map, then one per layer.

Matplotlib took 0.25 s a row; composing the pixels takes a few milliseconds,
so a gallery's time is Grad-CAM's. Each page carries its title, the colour
scale, a caption per row (file, true and predicted class, probability) and a
plain-language label per panel; the first map, the model's audited default, is
framed, and a blank map says it holds no evidence.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumocam.explain.overlay import colour_scale

if TYPE_CHECKING:
    from pneumocam.explain.explainer import Explanation

TILE = 256
PAD = 8
DEFAULT_FRAME = (230, 110, 20)
LABEL_CHARS = 40
_BG, _INK = (255, 255, 255), (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(rgb: np.ndarray, size: int = TILE) -> Image.Image:
    """The image scaled to fit a square tile (aspect kept), centred on white."""
    im = Image.fromarray(rgb)
    scale = size / max(im.size)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)
    tile = Image.new("RGB", (size, size), _BG)
    tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return tile


def explanation_row(e: Explanation, caption: str) -> dict[str, Any]:
    """One page row from an explanation: the X-ray, then its panels (default map first) with their captions."""
    return {
        "image": e.image,
        "overlays": [p.overlay for p in e.panels],
        "labels": [p.caption for p in e.panels],
        "caption": caption,
    }


def compose_page(rows: Sequence[dict[str, Any]], title: str = "") -> np.ndarray:
    """One page as RGB pixels. Each row is ``{"image", "overlays", "labels", "caption"}`` (:func:`explanation_row`)."""
    n_cols = 1 + max(len(r["overlays"]) for r in rows)
    caption_h, label_h, head_h = 40, 36, 70
    width = PAD + n_cols * (TILE + PAD)
    row_h = caption_h + TILE + label_h + PAD
    page = Image.new("RGB", (width, head_h + len(rows) * row_h), _BG)
    draw = ImageDraw.Draw(page)
    draw.text((PAD, PAD), title, fill=_INK, font=_font(18))
    lx = PAD + 120  # after "heatmap scale:", then "little", the scale, "most": fits a one-overlay page
    legend = Image.fromarray(colour_scale(width=max(60, min(360, width - lx - 100 - PAD)), height=14))
    draw.text((PAD, 42), "heatmap scale:", fill=_INK, font=_font(13))
    draw.text((lx, 40), "little", fill=_INK, font=_font(13))
    page.paste(legend, (lx + 40, 42))
    draw.text((lx + 46 + legend.width, 40), "most", fill=_INK, font=_font(13))
    for r, row in enumerate(rows):
        top = head_h + r * row_h
        draw.text((PAD, top + 2), row["caption"].replace("\n", "   "), fill=_INK, font=_font(14))
        panels = [row["image"], *row["overlays"]]
        labels = ["the X-ray", *row["labels"]]
        for c, (rgb, label) in enumerate(zip(panels, labels)):
            x, y = PAD + c * (TILE + PAD), top + caption_h
            page.paste(_fit(rgb), (x, y))
            if c == 1:
                draw.rectangle((x - 3, y - 3, x + TILE + 2, y + TILE + 2), outline=DEFAULT_FRAME, width=3)
            text = "\n".join(textwrap.wrap(label, LABEL_CHARS)[:2])
            draw.text((x, y + TILE + 4), text, fill=DEFAULT_FRAME if c == 1 else _INK, font=_font(12))
    return np.asarray(page)
