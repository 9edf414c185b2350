"""From a decoded RGB image to the model's input tensor.

The pipeline (size, resize method, JPEG quality) is part of the model's metadata
(:class:`InputSpec`), so the CLI, the Space, the audit and training all make the
same input. Scaling to [-1, 1] happens inside the model (a Rescaling layer), so
the input here stays in 0..255.

The data set's 224 px copies were made from the originals with Pillow's
antialiased bilinear ``resize`` (``pil-bilinear``) and saved as JPEG quality 75.
A model that records both resizes an original X-ray the same way and passes it
through the same JPEG round trip: the upload reaches the model as its copy did,
JPEG texture included (a model trained on the copies learned it).
"""

from __future__ import annotations

import io

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
    """The model's input pipeline: resize (whole image, no crop), then the JPEG step if the model has one.

    float32 in 0..255. Every entry point reaches the model through here (or :func:`finish_input` after a resize).
    """
    return finish_input(resize_to_input(rgb, spec), spec)


def finish_input(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The pipeline after the resize: the JPEG round trip at ``spec.jpeg_quality`` (none: ``x`` as it is)."""
    return x if spec.jpeg_quality is None else jpeg_round_trip(x, spec.jpeg_quality)


def jpeg_round_trip(x: np.ndarray, quality: int) -> np.ndarray:
    """Save as JPEG with Pillow (as the data set's copies were) and read it back; float32 in 0..255."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def resize_to_input(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
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
