"""Scoring many files (tf.data, parallel decoding) and explaining a few (Grad-CAM).

Decoding goes through :func:`core.images.read_image` inside a ``tf.data``
pipeline with parallel map and prefetch, so JPEG decoding of the next batch
overlaps the forward pass of this one. A file that cannot be read is reported,
never fatal.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.artifact import LoadedModel
from core.config import FEATURES_LAYER, check_cam_method, check_cam_score
from core.errors import ImageLoadError, InputError
from core.gradcam import METHODS, BaseCAM
from core.images import Header, read_image, read_image_and_header
from core.model import validity_summary
from core.options import DEFAULT_BATCH_SIZE, DEFAULT_OPACITY
from core.overlay import blend, colorize, upsample
from core.preprocess import InputSpec, fit_within, to_model_input
from core.validity import NOTE_SEP, Validity, ValidityStats, input_reasons, verdict, verdicts
from core.views import NO_VIEWS, average, check_views, first_view, make_views


def load_model_input(path: str | Path, spec: InputSpec) -> np.ndarray:
    """File -> model input only (float32, spec size, 0..255), for batch scoring."""
    return to_model_input(read_image(path), spec)


def load_checked_input(path: str | Path, spec: InputSpec) -> tuple[np.ndarray, list[str]]:
    """File -> model input, and the sure signs that it is not a chest radiograph (``core.validity.input_reasons``)."""
    rgb, header = read_image_and_header(path)
    x = to_model_input(rgb, spec)
    return x, input_reasons(x, header)


_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_forward(
    model: keras.Model,
    features: bool = False,
    summary_layer: str | None = None,
    views: Sequence[str] = NO_VIEWS,
    per_view: bool = False,
) -> Callable[[tf.Tensor], tf.Tensor | list[tf.Tensor]]:
    """The inference-mode forward pass, traced once per model and views for any batch size.

    Plain: the probabilities, averaged over the test-time ``views`` (:mod:`core.views`);
    ``per_view``: each view's own, ``(views, n, classes)``, which is what choosing the views needs.
    ``features`` (the pooled features, for the site tuning that re-fits the head) and
    ``summary_layer`` (the validity summary of that layer) make it return
    ``[probabilities, *those asked for]`` from the same pass, both of the ``identity`` view.
    """
    traced = _FORWARDS.setdefault(model, {})
    views = check_views(views)
    key = (features, summary_layer, views, per_view)
    if key not in traced:
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        net = model
        if features or summary_layer:
            extra = [model.get_layer(FEATURES_LAYER).output] if features else []
            extra += [validity_summary(model, summary_layer)] if summary_layer else []
            net = keras.Model(model.inputs[0], [model.output, *extra])
        n = len(views)

        def run(x: tf.Tensor) -> tf.Tensor | list[tf.Tensor]:
            out = net(make_views(x, views), training=False)
            probs = out[0] if isinstance(out, list | tuple) else out
            probs = tf.reshape(probs, [n, tf.shape(x)[0], -1]) if per_view else average(probs, n)
            if not isinstance(out, list | tuple):
                return probs
            return [probs, *(first_view(o, n) for o in out[1:])]

        traced[key] = tf.function(run, input_signature=[spec])
    return traced[key]


def image_dataset(paths: Sequence[str | Path], spec: InputSpec, batch_size: int) -> tf.data.Dataset:
    """Batches of ``(images, error_reasons, notes)``; an unreadable file gives a zero image and its reason.

    ``notes``: the sure validity checks' reasons for each readable file, joined ("" when none).
    """
    zeros = np.zeros(spec.shape, np.float32)

    def load(path_bytes: bytes) -> tuple[np.ndarray, bytes, bytes]:
        try:
            x, reasons = load_checked_input(path_bytes.decode("utf-8", "surrogateescape"), spec)
            return x, b"", NOTE_SEP.join(reasons).encode("utf-8")
        except ImageLoadError as exc:
            return zeros, exc.reason.encode("utf-8", "replace"), b""

    def tf_load(p: tf.Tensor):
        x, err, notes = tf.numpy_function(load, [p], (tf.float32, tf.string, tf.string), stateful=False)
        return tf.ensure_shape(x, spec.shape), tf.ensure_shape(err, []), tf.ensure_shape(notes, [])

    names = [str(p).encode("utf-8", "surrogateescape") for p in paths]
    workers = max(2, os.cpu_count() or 1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    # Fixed parallelism, autotuner off: on a 2-core machine the autotuner's own thread
    # competed with the forward pass and halved throughput in about half the runs.
    options.autotune.enabled = False
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(names, dtype=tf.string))
    ds = ds.map(tf_load, num_parallel_calls=workers, deterministic=True)
    return ds.batch(batch_size).prefetch(2).with_options(options)


@dataclass
class Batch:
    """One batch of readable images, their paths, and the files of the batch that could not be read."""

    images: np.ndarray  # (k, h, w, 3) float32, readable files only
    paths: list[Path]
    skipped: list[tuple[Path, str]]
    size: int  # files in the batch, readable or not (for progress bars)
    notes: list[str]  # per readable file: the sure validity checks' reasons, joined ("" when none)


def image_batches(
    paths: Sequence[str | Path], spec: InputSpec, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[Batch]:
    """The one walk over image files that every scorer uses: decoded batches, unreadable files named."""
    paths = [Path(p) for p in paths]
    start = 0
    for x, errors, notes in image_dataset(paths, spec, batch_size):
        errs, texts = errors.numpy(), notes.numpy()
        ok = [i for i, e in enumerate(errs) if not e]
        yield Batch(
            images=x.numpy()[ok] if len(ok) < len(errs) else x.numpy(),
            paths=[paths[start + i] for i in ok],
            skipped=[(paths[start + i], e.decode("utf-8", "replace")) for i, e in enumerate(errs) if e],
            size=len(errs),
            notes=[texts[i].decode("utf-8") for i in ok],
        )
        start += len(errs)


@dataclass
class Scores:
    """Probabilities for the files that could be read; the others with their reason.

    ``ood_scores`` (when the model has validity statistics) and ``notes`` (the sure
    checks' reasons, joined) make each call's :class:`core.validity.Validity`.
    """

    paths: list[Path]
    probabilities: np.ndarray  # (n, n_classes)
    skipped: list[tuple[Path, str]]
    features: np.ndarray | None = None  # (n, d) pooled features, when asked for
    ood_scores: np.ndarray | None = None  # (n,)
    notes: list[str] | None = None  # (n,), "" where no sure check fired

    def validity(self) -> list[Validity]:
        """Each readable file's validity."""
        return verdicts(self.ood_scores, self.notes or [""] * len(self.paths))


def score_files(
    model: keras.Model,
    spec: InputSpec,
    paths: Sequence[str | Path],
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    features: bool = False,
    validity: ValidityStats | None = None,
    views: Sequence[str] = NO_VIEWS,
) -> Scores:
    """Score every file; ``on_batch(n)`` is called after each batch of ``n`` files.

    ``features``: keep each image's pooled features too; ``validity``: give each
    image its ``ood_score`` (one forward pass gives all of them); ``views``: the
    test-time views averaged (a loaded model's own are ``loaded.views``).
    """
    layer = validity.layer if validity is not None else None
    forward = compile_forward(model, features, layer, views)
    kept: list[Path] = []
    outs: list[list[np.ndarray]] = []
    skipped: list[tuple[Path, str]] = []
    notes: list[str] = []
    for batch in image_batches(paths, spec, batch_size):
        if len(batch.images):
            out = forward(batch.images)
            outs.append([o.numpy() for o in out] if (features or layer) else [out.numpy()])
        kept += batch.paths
        skipped += batch.skipped
        notes += batch.notes
        if on_batch:
            on_batch(batch.size)
    widths = [model.output_shape[-1]]
    widths += [model.get_layer(FEATURES_LAYER).output.shape[-1]] if features else []
    widths += [model.get_layer(layer).output.shape[-1]] if layer else []
    arrays = [np.concatenate(a) for a in zip(*outs)] if outs else [np.zeros((0, w), np.float32) for w in widths]
    ood = validity.scores(arrays[-1]) if validity is not None else None
    return Scores(kept, arrays[0], skipped, arrays[1] if features else None, ood, notes)


def layer_summaries(
    model: keras.Model, spec: InputSpec, paths: Sequence[str | Path], layer: str, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[list[Path], np.ndarray]:
    """The readable files and their validity summaries of ``layer`` (what the validity statistics are fitted on)."""
    forward = compile_forward(model, summary_layer=layer)
    kept: list[Path] = []
    outs = [np.zeros((0, model.get_layer(layer).output.shape[-1]), np.float32)]
    for batch in image_batches(paths, spec, batch_size):
        if len(batch.images):
            outs.append(forward(batch.images)[1].numpy())
        kept += batch.paths
    return kept, np.concatenate(outs)


def probabilities_of(
    loaded: LoadedModel, images: Sequence[np.ndarray], headers: Sequence[Header] | None = None
) -> list[tuple[dict[str, float], Validity]]:
    """Class probabilities of decoded RGB images (no Grad-CAM) and each call's validity: one forward pass."""
    if not images:
        return []
    x = np.stack([to_model_input(img, loaded.meta.input) for img in images])
    stats = loaded.validity
    out = compile_forward(loaded.model, summary_layer=stats.layer if stats else None, views=loaded.views)(x)
    p, ood = (out[0].numpy(), stats.scores(out[1].numpy())) if stats else (out.numpy(), [None] * len(x))
    headers = headers or [Header()] * len(x)
    return [
        ({c: float(v) for c, v in zip(loaded.meta.classes, row)}, verdict(s, input_reasons(xi, h)))
        for row, s, xi, h in zip(p, ood, x, headers)
    ]


@dataclass
class Explanation:
    """One image explained: probabilities, the explained class and one overlay per layer."""

    probabilities: dict[str, float]
    predicted: str
    explained: str
    layer_names: list[str]
    image: np.ndarray  # RGB uint8 display copy
    heatmaps: list[np.ndarray]  # [0, 1] maps at display size
    overlays: list[np.ndarray]  # RGB uint8 at display size
    validity: Validity


class Explainer:
    """A loaded model plus its CAM methods, compiled once per choice of layers.

    Method, explained score and layers default to the model's own (``model.json`` ``explain``).
    """

    def __init__(self, loaded: LoadedModel, method: str | None = None, score: str | None = None) -> None:
        self.loaded = loaded
        self.method = check_cam_method(method or loaded.meta.explain.method)
        self.score = check_cam_score(score or loaded.meta.explain.score)
        self._cams: dict[tuple[str, tuple[str, ...]], BaseCAM] = {}

    @property
    def classes(self) -> list[str]:
        return self.loaded.meta.classes

    def cam(self, layer_names: Sequence[str], method: str | None = None) -> BaseCAM:
        """The compiled CAM for these layers and method (default: the explainer's), built on first use."""
        key = (check_cam_method(method or self.method), tuple(layer_names))
        if key not in self._cams:
            meta, stats = self.loaded.meta, self.loaded.validity
            summary = stats.layer if stats else None
            self._cams[key] = METHODS[key[0]](
                self.loaded.model, list(key[1]), meta.logits_layer, summary, self.loaded.views, self.score
            )
        return self._cams[key]

    def explain_file(
        self,
        path: str | Path,
        n_layers: int | None = None,
        target: str | None = None,
        alpha: float = DEFAULT_OPACITY,
        max_side: int | None = None,
        method: str | None = None,
    ) -> Explanation:
        """Read one file (any supported format) and explain it; unreadable files raise ImageLoadError."""
        rgb, header = read_image_and_header(path)
        return self.explain([rgb], n_layers, target, alpha, max_side, method, [header])[0]

    def explain(
        self,
        images: Sequence[np.ndarray],
        n_layers: int | None = None,
        target: str | Sequence[str] | None = None,
        alpha: float = DEFAULT_OPACITY,
        max_side: int | None = None,
        method: str | None = None,
        headers: Sequence[Header] | None = None,
        layer_names: Sequence[str] | None = None,
    ) -> list[Explanation]:
        """Explain RGB images in one batch, each call with its validity.

        ``target`` names the class to explain (one for all, or one per image);
        default: each image's predicted class. ``method``: default the explainer's.
        ``headers``: what each file said about itself (DICOM tags), for the validity checks.
        ``layer_names``: these layers instead of ``n_layers`` (an audited set).
        """
        meta = self.loaded.meta
        layers = list(layer_names) if layer_names else meta.shown_layers(n_layers)
        if not images:
            return []
        targets = None
        if target is not None:
            names = [target] * len(images) if isinstance(target, str) else list(target)
            bad = [t for t in names if t not in meta.classes]
            if bad:
                raise InputError(f"unknown class {bad[0]!r}; the model knows {', '.join(meta.classes)}")
            targets = np.array([meta.classes.index(t) for t in names], dtype=np.int32)
        x = np.stack([to_model_input(img, meta.input) for img in images])
        result = self.cam(layers, method)(x, targets)
        stats = self.loaded.validity
        ood = stats.scores(result.summaries) if stats is not None else [None] * len(x)
        headers = headers or [Header()] * len(x)
        out = []
        for i, img in enumerate(images):
            shown = fit_within(img, max_side) if max_side else img
            h, w = shown.shape[:2]
            heat = [upsample(m[i], h, w) for m in result.maps]
            p = result.probabilities[i]
            out.append(
                Explanation(
                    probabilities={c: float(v) for c, v in zip(meta.classes, p)},
                    predicted=meta.classes[int(np.argmax(p))],
                    explained=meta.classes[int(result.target_classes[i])],
                    layer_names=list(layers),
                    image=shown,
                    heatmaps=heat,
                    overlays=[blend(shown, colorize(m), alpha) for m in heat],
                    validity=verdict(ood[i], input_reasons(x[i], headers[i])),
                )
            )
        return out
