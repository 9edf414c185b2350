"""Acquisition augmentation: the ways one chest X-ray differs from another of the same lungs.

Scanners, exposure, cropping and digitisation vary between sites and years.
A model trained only on flips and rotations learns to call an image "normal"
from its fine, sharp texture: on the validation split, a slight blur or a
little noise turns most normal X-rays into "viral pneumonia"
(:mod:`pneumocam.reports.stress` measures this). So the augmented training views also vary
framing (zoom and shift), resolution, sharpness, exposure (gamma), contrast
and noise. All of it runs batched in TensorFlow on 0..255 images, seeded.

``invariance`` adds how the digital file was made: an original of another size
squashed to the model size with another resampling filter, and JPEG
re-encoding at another quality. On the original-resolution X-rays users
upload, one call in five differed from the 224 px copy's before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import tensorflow as tf

from pneumocam.errors import InputError
from pneumocam.options import AUGMENTATIONS

RESAMPLE_METHODS = ("bilinear", "area", "bicubic", "nearest", "lanczos3")


@dataclass(frozen=True)
class AcquisitionAugment:
    """Ranges of each random change; a probability of 0 turns a change off."""

    zoom: tuple[float, float] = (0.85, 1.25)
    shift: float = 0.06
    downscale_prob: float = 0.3
    downscale: tuple[float, float] = (0.35, 0.75)
    blur_prob: float = 0.4
    blur_sigma: float = 2.0
    gamma: tuple[float, float] = (0.7, 1.45)
    contrast: tuple[float, float] = (0.7, 1.3)
    noise_prob: float = 0.4
    noise_sigma: float = 10.0
    resample_prob: float = 0.0
    resample_scale: tuple[float, float] = (1.5, 4.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uniform(rng: tf.random.Generator, n: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    return rng.uniform([n], lo, hi)


def _chance(rng: tf.random.Generator, n: tf.Tensor, p: float) -> tf.Tensor:
    return tf.cast(rng.uniform([n]) < p, tf.float32)


def _reframe(x: tf.Tensor, rng: tf.random.Generator, aug: AcquisitionAugment) -> tf.Tensor:
    """Zoom in or out and shift; zooming out leaves a black border, as a wider collimation does."""
    n = tf.shape(x)[0]
    size = tf.shape(x)[1:3]
    extent = 1.0 / tf.exp(_uniform(rng, n, math.log(aug.zoom[0]), math.log(aug.zoom[1])))
    cy = 0.5 + _uniform(rng, n, -aug.shift, aug.shift)
    cx = 0.5 + _uniform(rng, n, -aug.shift, aug.shift)
    boxes = tf.stack([cy - extent / 2, cx - extent / 2, cy + extent / 2, cx + extent / 2], axis=1)
    return tf.image.crop_and_resize(x, boxes, tf.range(n), size, extrapolation_value=0.0)


def _low_resolution(x: tf.Tensor, rng: tf.random.Generator, aug: AcquisitionAugment) -> tf.Tensor:
    """Down- then up-sample a random subset: detail lost to a smaller original."""
    size = tf.shape(x)[1:3]
    factor = rng.uniform([], aug.downscale[0], aug.downscale[1])
    small = tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32)
    degraded = tf.image.resize(tf.image.resize(x, small, antialias=True), size)
    pick = tf.reshape(_chance(rng, tf.shape(x)[0], aug.downscale_prob), [-1, 1, 1, 1])
    return pick * degraded + (1.0 - pick) * x


def _blur(x: tf.Tensor, rng: tf.random.Generator, aug: AcquisitionAugment) -> tf.Tensor:
    """Gaussian blur with a sigma drawn per image (0 for the images not picked)."""
    n = tf.shape(x)[0]
    sigma = _uniform(rng, n, 0.3, aug.blur_sigma) * _chance(rng, n, aug.blur_prob)
    radius = max(1, math.ceil(3 * aug.blur_sigma))
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(t[None, :] ** 2) / (2.0 * tf.maximum(sigma, 1e-3)[:, None] ** 2))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # (n, k); sigma 0 -> identity
    channels = x.shape[-1]
    # One depthwise convolution for the whole batch: images become channels.
    stacked = tf.transpose(x, [1, 2, 0, 3])
    stacked = tf.reshape(stacked, [1, tf.shape(x)[1], tf.shape(x)[2], n * channels])
    k = tf.repeat(kernel, channels, axis=0)  # (n*c, k)
    kh = tf.transpose(k)[:, None, :, None]
    kw = tf.transpose(k)[None, :, :, None]
    padded = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    out = tf.nn.depthwise_conv2d(padded, kh, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kw, [1, 1, 1, 1], "VALID")
    out = tf.reshape(out, [tf.shape(x)[1], tf.shape(x)[2], n, channels])
    return tf.transpose(out, [2, 0, 1, 3])


def _exposure(x: tf.Tensor, rng: tf.random.Generator, aug: AcquisitionAugment) -> tf.Tensor:
    """Gamma, then contrast about the image mean."""
    n = tf.shape(x)[0]
    g = tf.exp(_uniform(rng, n, math.log(aug.gamma[0]), math.log(aug.gamma[1])))[:, None, None, None]
    x = 255.0 * tf.pow(tf.clip_by_value(x, 0.0, 255.0) / 255.0, g)
    c = _uniform(rng, n, aug.contrast[0], aug.contrast[1])[:, None, None, None]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return mean + c * (x - mean)


def _noise(x: tf.Tensor, rng: tf.random.Generator, aug: AcquisitionAugment) -> tf.Tensor:
    """Grey (same in every channel) Gaussian noise on a random subset."""
    n = tf.shape(x)[0]
    sigma = _uniform(rng, n, 0.0, aug.noise_sigma) * _chance(rng, n, aug.noise_prob)
    noise = rng.normal(tf.concat([tf.shape(x)[:3], [1]], axis=0)) * sigma[:, None, None, None]
    return x + noise


#: ``invariance``: the acquisition changes plus resampling filters, scale and JPEG quality.
INVARIANCE = AcquisitionAugment(resample_prob=0.5, jpeg_prob=0.5)


def augment_params(augment: str) -> AcquisitionAugment | None:
    """The parameters behind an augmentation name (None: flips and rotations only)."""
    if augment not in AUGMENTATIONS:
        raise InputError(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}")
    return {"flips": None, "acquisition": AcquisitionAugment(), "invariance": INVARIANCE}[augment]


def _resample(x: tf.Tensor, rng: tf.random.Generator, aug: AcquisitionAugment) -> tf.Tensor:
    """As if made from a larger original with another filter: enlarge, then shrink back with a random method."""
    size = tf.shape(x)[1:3]
    factor = rng.uniform([], aug.resample_scale[0], aug.resample_scale[1])
    big = tf.image.resize(x, tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), method="bicubic")
    pick = rng.uniform([], 0, len(RESAMPLE_METHODS), dtype=tf.int32)
    branches = [(lambda m=m: tf.image.resize(big, size, method=m, antialias=m != "nearest")) for m in RESAMPLE_METHODS]
    shrunk = tf.switch_case(pick, branches)
    chosen = tf.reshape(_chance(rng, tf.shape(x)[0], aug.resample_prob), [-1, 1, 1, 1])
    return chosen * tf.clip_by_value(shrunk, 0.0, 255.0) + (1.0 - chosen) * x


def _jpeg(x: tf.Tensor, rng: tf.random.Generator, aug: AcquisitionAugment) -> tf.Tensor:
    """Re-encode a random subset as JPEG at a random quality (one draw per image)."""
    n = tf.shape(x)[0]
    quality = rng.uniform([n], aug.jpeg_quality[0], aug.jpeg_quality[1] + 1, dtype=tf.int32)
    chosen = _chance(rng, n, aug.jpeg_prob)

    def one(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        img, q = args
        encoded = tf.image.adjust_jpeg_quality(tf.cast(tf.clip_by_value(img, 0.0, 255.0), tf.uint8), q)
        return tf.cast(encoded, tf.float32)

    coded = tf.map_fn(one, (x, quality), fn_output_signature=tf.float32)
    chosen = tf.reshape(chosen, [-1, 1, 1, 1])
    return chosen * tf.reshape(coded, tf.shape(x)) + (1.0 - chosen) * x


def acquisition_augmenter(
    aug: AcquisitionAugment = AcquisitionAugment(), seed: int = 42
) -> Callable[[tf.Tensor], tf.Tensor]:
    """A batched, seeded augmentation function for float images in 0..255 (same shape out)."""
    rng = tf.random.Generator.from_seed(seed)

    def run(x: tf.Tensor) -> tf.Tensor:
        if aug.resample_prob > 0:
            x = _resample(x, rng, aug)
        x = _reframe(x, rng, aug)
        x = _low_resolution(x, rng, aug)
        x = _blur(x, rng, aug)
        x = _exposure(x, rng, aug)
        x = _noise(x, rng, aug)
        x = tf.clip_by_value(x, 0.0, 255.0)
        if aug.jpeg_prob > 0:
            x = _jpeg(x, rng, aug)
        return x

    return run
