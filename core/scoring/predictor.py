"""The one object that scores: a loaded model with its input pipeline, test-time views and validity statistics.

Every consumer (both engines, ``predict``, the Explainer and the Space, stress, the
audit, galleries, site adaptation, calibration and tuning, the site curve, training's
cache) takes a :class:`Predictor` and nothing else, so what is measured is what is
served: nobody passes views, validity statistics or an input spec by hand. A site
model (adapted, calibrated, tuned) is a new Predictor (:meth:`Predictor.derived`),
never a changed one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumocam.config import FEATURES_LAYER, InputSpec
from pneumocam.images.preprocess import finish_input, to_model_input
from pneumocam.images.readers import Header
from pneumocam.model.artifact import HubRef, LoadedModel, ModelMeta
from pneumocam.model.conformal import PredictionSets
from pneumocam.model.network import summary_width
from pneumocam.model.resolve import load_model
from pneumocam.model.validity import Validity, ValidityStats, input_reasons, verdict
from pneumocam.model.views import check_views
from pneumocam.options import DEFAULT_BATCH_SIZE, NO_VIEWS
from pneumocam.scoring.forward import Batch, Scores, compile_forward, image_batches

_KEEP = object()  # "unchanged" for derived()


def load_predictor(
    path: str | Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    use_views: bool = True,
    **resolve: Any,
) -> Predictor:
    """Resolve and load a model (:func:`pneumocam.model.resolve.load_model`, which takes ``resolve``), served as
    its folder says; ``use_views=False`` scores each image alone (``--no-views``), faster.
    """
    return Predictor.of(load_model(path, repo_id, revision, **resolve), use_views)


@dataclass(frozen=True, eq=False)
class Predictor:
    """A loaded model, served: its pipeline (``meta.input``), its ``views`` and its validity statistics."""

    loaded: LoadedModel
    views: tuple[str, ...]

    @classmethod
    def of(cls, loaded: LoadedModel, use_views: bool = True) -> Predictor:
        """Serve ``loaded`` with its own test-time views (``model.json`` ``predict.views``), or the image alone."""
        return cls(loaded, check_views(loaded.meta.predict.views) if use_views else NO_VIEWS)

    @classmethod
    def in_memory(cls, model: Any, meta: ModelMeta, validity_stats: ValidityStats | None = None) -> Predictor:
        """A model not yet written to a folder (training's own), served as its metadata says."""
        loaded = LoadedModel(model, meta, source="(in memory)", directory=Path("."), validity_stats=validity_stats)
        return cls.of(loaded)

    # What the loaded model holds, read through here so consumers never reach past the predictor.
    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def meta(self) -> ModelMeta:
        return self.loaded.meta

    @property
    def classes(self) -> list[str]:
        return self.loaded.meta.classes

    @property
    def spec(self) -> InputSpec:
        return self.loaded.meta.input

    @property
    def validity_stats(self) -> ValidityStats | None:
        return self.loaded.validity_stats

    @property
    def sets(self) -> PredictionSets | None:
        """The model's prediction-set rule (``model.json`` ``conformal``); None for a model fitted before sets."""
        block = self.loaded.meta.conformal
        return block.rule if block else None

    def prediction_set(self, probabilities: dict[str, float]) -> list[str] | None:
        """One call's prediction set, most probable class first; None for a model without a set rule."""
        rule = self.sets
        return None if rule is None else rule.names([probabilities[c] for c in self.classes], self.classes)

    @property
    def score_name(self) -> str:
        """The explained score of the model's heatmaps (``explain.score``)."""
        return self.loaded.meta.explain.score

    @property
    def source(self) -> str:
        return self.loaded.source

    @property
    def directory(self) -> Path:
        return self.loaded.directory

    @property
    def hub(self) -> HubRef | None:
        return self.loaded.hub

    @property
    def from_hub(self) -> bool:
        return self.loaded.from_hub

    def derived(self, model: Any = _KEEP, validity_stats: Any = _KEEP, meta: Any = _KEEP) -> Predictor:
        """A new predictor for a site model: the given parts replaced, the pipeline and views kept."""
        parts = {"model": model, "validity_stats": validity_stats, "meta": meta}
        loaded = dataclasses.replace(self.loaded, **{k: v for k, v in parts.items() if v is not _KEEP})
        return Predictor(loaded, self.views)

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """A decoded image through the model's input pipeline (resize, then the JPEG step if it has one)."""
        return to_model_input(rgb, self.spec)

    def finish_input(self, x: np.ndarray) -> np.ndarray:
        """The pipeline after the resize (the JPEG step, if the model has one), for an image already resized."""
        return finish_input(x, self.spec)

    def batches(
        self, paths: Sequence[str | Path], batch_size: int = DEFAULT_BATCH_SIZE, resized_only: bool = False
    ) -> Iterator[Batch]:
        """Decoded batches of model input, unreadable files named (:func:`pneumocam.scoring.forward.image_batches`).

        ``resized_only``: stop after the resize (stress perturbs there; :meth:`finish_input` does the rest).
        """
        return image_batches(paths, self.spec.without_jpeg() if resized_only else self.spec, batch_size)

    def forward(self, features: bool = False, summary: bool = False, per_view: bool = False) -> Callable:
        """The compiled forward pass over this predictor's views; ``summary``: the validity summary too."""
        layer = self.validity_stats.layer if summary and self.validity_stats is not None else None
        return compile_forward(self.model, features, layer, self.views, per_view)

    def score(
        self,
        paths: Sequence[str | Path],
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_batch: Callable[[int], None] | None = None,
        features: bool = False,
    ) -> Scores:
        """Score every file: probabilities, validity (one pass) and, when asked, the pooled features.

        ``on_batch(n)`` is called after each batch of ``n`` files; unreadable files are listed, never fatal.
        """
        stats = self.validity_stats
        forward = self.forward(features, summary=stats is not None)
        kept: list[Path] = []
        outs: list[list[np.ndarray]] = []
        skipped: list[tuple[Path, str]] = []
        notes: list[str] = []
        for batch in self.batches(paths, batch_size):
            if len(batch.images):
                out = forward(batch.images)
                outs.append([o.numpy() for o in out] if isinstance(out, list) else [out.numpy()])
            kept += batch.paths
            skipped += batch.skipped
            notes += batch.notes
            if on_batch:
                on_batch(batch.size)
        widths = [self.model.output_shape[-1]]
        widths += [self.model.get_layer(FEATURES_LAYER).output.shape[-1]] if features else []
        widths += [stats.width] if stats is not None else []
        arrays = [np.concatenate(a) for a in zip(*outs)] if outs else [np.zeros((0, w), np.float32) for w in widths]
        ood = stats.scores(arrays[-1]) if stats is not None else None
        return Scores(kept, arrays[0], skipped, arrays[1] if features else None, ood, notes)

    def score_images(
        self, images: Sequence[np.ndarray], headers: Sequence[Header] | None = None
    ) -> list[tuple[dict[str, float], Validity]]:
        """Class probabilities of decoded RGB images (no Grad-CAM) and each call's validity: one forward pass."""
        if not len(images):
            return []
        x = np.stack([self.model_input(img) for img in images])
        stats = self.validity_stats
        out = self.forward(summary=stats is not None)(x)
        p, ood = (out[0].numpy(), stats.scores(out[1].numpy())) if stats else (out.numpy(), [None] * len(x))
        headers = headers or [Header()] * len(x)
        return [
            ({c: float(v) for c, v in zip(self.classes, row)}, verdict(s, input_reasons(xi, h)))
            for row, s, xi, h in zip(p, ood, x, headers)
        ]

    def summaries(
        self, paths: Sequence[str | Path], layer: str, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> tuple[list[Path], np.ndarray]:
        """The readable files and their validity summaries of ``layer``, of the image alone (what validity fits)."""
        forward = compile_forward(self.model, summary_layer=layer)
        kept: list[Path] = []
        outs = [np.zeros((0, summary_width(self.model, layer)), np.float32)]
        for batch in self.batches(paths, batch_size):
            if len(batch.images):
                outs.append(forward(batch.images)[1].numpy())
            kept += batch.paths
        return kept, np.concatenate(outs)
