"""Gallery pages drawn with Pillow: layout, plain labels, the deepest layer framed."""

from __future__ import annotations

import numpy as np

from conftest import xray_like
from pneumocam.explain.pages import DEEPEST, PAD, TILE, compose_page, panel_labels


def row(h: int, w: int, n: int) -> dict:
    gray = np.repeat(xray_like(h, w)[..., None], 3, -1)
    heat = np.zeros((h, w, 3), np.uint8)
    heat[..., 0] = 200
    return {"image": gray, "overlays": [heat] * n, "layers": [f"L{i}" for i in range(n)], "caption": "a.png\ntrue X"}


def test_page_has_one_row_per_image_and_frames_the_deepest_layer() -> None:
    page = compose_page([row(300, 200, 3), row(120, 160, 3)], "VIRUS FN")
    assert page.dtype == np.uint8 and page.shape[2] == 3
    assert page.shape[1] == PAD + 4 * (TILE + PAD)
    x_deep = PAD + 3 * (TILE + PAD) - 2
    framed = page[:, x_deep]
    assert (np.abs(framed.astype(int) - DEEPEST).sum(axis=1) < 30).sum() >= 2 * TILE  # a frame in both rows
    x_first = PAD + 2
    assert not (np.abs(page[:, x_first].astype(int) - DEEPEST).sum(axis=1) < 30).any()  # the X-ray is not framed


def test_panel_labels_say_which_layer_is_deepest() -> None:
    assert panel_labels(["block_16_depthwise", "block_16_project", "Conv_1"]) == [
        "shallower (2 up): block_16_depthwise",
        "shallower (1 up): block_16_project",
        "deepest: Conv_1",
    ]
