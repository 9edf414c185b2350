"""From a decoded RGB image to the model's input tensor.

The recipe (size, resize method) is part of the model's metadata
(:class:`InputSpec`), so the CLI, the Space and training all resize the same
way. Scaling to [-1, 1] happens inside the model (a Rescaling layer), so the
input here stays in 0..255.

The default resize, ``pil-bilinear``, is how the data set's 224 px copies were
made from the originals (Pillow's antialiased bilinear ``resize``): an original
X-ray uploaded by a user then reaches the model as its training copy did.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from pneumocam.config import PIL_BILINEAR, InputSpec

_RESIZE = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
    PIL_BILINEAR: None,
}


def to_model_input(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize (whole image, no crop) to the model size; float32 in 0..255."""
    h, w = rgb.shape[:2]
    if spec.resize == PIL_BILINEAR:
        if (h, w) == (spec.height, spec.width):
            return rgb.astype(np.float32)
        resized = Image.fromarray(np.ascontiguousarray(rgb)).resize(
            (spec.width, spec.height), Image.Resampling.BILINEAR
        )
        return np.asarray(resized, dtype=np.float32)
    interp = _RESIZE[spec.resize]
    if spec.resize == "area" and (h < spec.height or w < spec.width):
        interp = cv2.INTER_LINEAR
    out = cv2.resize(rgb, (spec.width, spec.height), interpolation=interp)
    return out.astype(np.float32)


def fit_within(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale for display so the longer side is at most ``max_side``."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
