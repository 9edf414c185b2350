"""Gallery pages drawn with Pillow: layout, plain labels, the default map framed first."""

from __future__ import annotations

import numpy as np

from helpers import xray_like
from pneumocam.explain.pages import DEFAULT_FRAME, PAD, TILE, compose_page
from pneumocam.explain.shown import layer_titles


def row(h: int, w: int, n: int) -> dict:
    gray = np.repeat(xray_like(h, w)[..., None], 3, -1)
    heat = np.zeros((h, w, 3), np.uint8)
    heat[..., 0] = 200
    labels = ["audited default: Grad-CAM, last 3 layers", *(f"L{i}" for i in range(n - 1))]
    return {"image": gray, "overlays": [heat] * n, "labels": labels, "caption": "a.png\ntrue X"}


def framed_rows(page: np.ndarray, column: int) -> int:
    """How many pixels of a column just inside panel ``column``'s left edge are the frame's colour."""
    x = PAD + column * (TILE + PAD) - 2
    return int((np.abs(page[:, x].astype(int) - DEFAULT_FRAME).sum(axis=1) < 30).sum())


def test_page_has_one_row_per_image_and_frames_the_default_map() -> None:
    page = compose_page([row(300, 200, 4), row(120, 160, 4)], "VIRUS FN")
    assert page.dtype == np.uint8 and page.shape[2] == 3
    assert page.shape[1] == PAD + 5 * (TILE + PAD)
    assert framed_rows(page, 1) >= 2 * TILE  # a frame round the first map in both rows
    assert framed_rows(page, 0) == framed_rows(page, 4) == 0  # neither the X-ray nor the deepest layer


def test_layer_titles_say_which_layer_is_deepest() -> None:
    assert layer_titles(["block_16_depthwise", "block_16_project", "Conv_1"]) == [
        "2 up: block_16_depthwise",
        "1 up: block_16_project",
        "deepest: Conv_1",
    ]
