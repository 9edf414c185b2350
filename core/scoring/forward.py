"""The compiled forward pass and the batches of decoded images it reads (:class:`~pneumocam.scoring.predictor.Predictor`
owns both for every consumer).

Decoding goes through :func:`pneumocam.images.readers.read_image` inside a ``tf.data``
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

from pneumocam.config import FEATURES_LAYER
from pneumocam.errors import ImageLoadError
from pneumocam.images.preprocess import InputSpec, to_model_input
from pneumocam.images.readers import read_image_and_header
from pneumocam.model.network import validity_summary
from pneumocam.model.validity import NOTE_SEP, Validity, input_reasons, verdicts
from pneumocam.model.views import NO_VIEWS, average, check_views, first_view, make_views
from pneumocam.options import DEFAULT_BATCH_SIZE


def load_checked_input(path: str | Path, spec: InputSpec) -> tuple[np.ndarray, list[str]]:
    """File -> model input, and the sure signs that it is not a chest radiograph (``validity.input_reasons``)."""
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

    Plain: the probabilities, averaged over the test-time ``views`` (:mod:`pneumocam.model.views`);
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
    checks' reasons, joined) make each call's :class:`pneumocam.model.validity.Validity`.
    """

    paths: list[Path]
    probabilities: np.ndarray  # (n, n_classes)
    skipped: list[tuple[Path, str]]
    features: np.ndarray | None = None  # (n, d) pooled features, when asked for
    ood_scores: np.ndarray | None = None  # (n,)
    notes: list[str] | None = None  # (n,), "" where no sure check fired

    def verdicts(self) -> list[Validity]:
        """Each readable file's validity verdict."""
        return verdicts(self.ood_scores, self.notes or [""] * len(self.paths))

    def in_order(self, paths: Sequence[str | Path]) -> list[tuple[np.ndarray, Validity] | str]:
        """Each of ``paths``, in that order: its (probabilities, validity), or the reason it was not read."""
        readable = dict(zip(self.paths, zip(self.probabilities, self.verdicts())))
        reasons = dict(self.skipped)
        return [readable.get(Path(p)) or reasons[Path(p)] for p in paths]
