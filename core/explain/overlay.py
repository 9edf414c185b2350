"""Turning [0, 1] maps into heatmaps over the X-ray (OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pneumocam.errors import InputError
from pneumocam.options import DEFAULT_OPACITY


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of the map's values (not of colours) to the image size."""
    out = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def mean_map(maps: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """A layer set's map: the mean of its layers' [0, 1] maps, each upsampled to the image first (as audited)."""
    return np.mean([upsample(m, height, width) for m in maps], axis=0).astype(np.float32)


def colorize(cam: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """[0, 1] map -> RGB uint8 heatmap."""
    bgr = cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), colormap)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def blend(rgb: np.ndarray, heat_rgb: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """Blend a heatmap over the image; ``opacity`` is the heatmap's weight."""
    if not 0.0 <= opacity <= 1.0:
        raise InputError("opacity must be within [0, 1]")
    return cv2.addWeighted(heat_rgb, opacity, rgb, 1.0 - opacity, 0.0)


def colour_scale(width: int = 320, height: int = 18) -> np.ndarray:
    """The heatmap colour scale as an RGB strip, low (left) to high (right): the legend beside overlays."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return colorize(ramp)


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes (lossless, for overlays handed to a browser)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return buf.tobytes()
