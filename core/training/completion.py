"""Completing a model folder: what a trained model needs beyond its weights (the test-time views, the validity and
adaptation statistics), measured on its own training and validation splits.

Training calls these on the model it has just fitted; ``fit-validity`` and ``choose-views`` call them on a model
folder trained before they existed, rebuilding its splits from ``model.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumocam.config import ValidityRecord
from pneumocam.images.data import Sample, Scan, class_indices, labels_of, list_images
from pneumocam.model import validity
from pneumocam.model.artifact import ModelMeta, store_validity, update
from pneumocam.model.network import summary_width
from pneumocam.model.validity import ValidityStats
from pneumocam.options import VALIDITY_DISC_LAYER, VALIDITY_LAYER
from pneumocam.scoring.predictor import Predictor
from pneumocam.site.adaptation import layer_statistics, measured_layers
from pneumocam.training.confidence import fit_confidence
from pneumocam.training.split import recorded_split, split_by_patient
from pneumocam.training.view_choice import choose_views

if TYPE_CHECKING:
    from pneumocam.site.adaptation import LayerStats


def complete(
    served: Predictor, train: Sequence[Sample], val: Sequence[Sample], classes: Sequence[str]
) -> tuple[Predictor, LayerStats, ValidityStats]:
    """What training adds to the model it has fitted (``served``, whose metadata this fills in): the test-time views
    chosen on validation with its figures, the training statistics adaptation maps back to, the validity
    statistics, and the temperature and set rule fitted through the views just chosen.

    Returns the predictor to save (the temperature folded in where it helped) and the two sets of statistics.
    """
    meta = served.meta
    choose_views(served, val, classes).record_into(meta)
    stats = source_statistics(served, [s.path for s in train])
    validity_stats, meta.validity = validity_statistics(served, train, val, classes, TRAINING_IMAGES)
    completed, _ = fit_confidence(Predictor.in_memory(served.model, meta, validity_stats), val)
    return completed, stats, validity_stats


def source_statistics(predictor: Predictor, paths: Sequence[str | Path]) -> LayerStats:
    """The training images' statistics that site adaptation maps a new site back to (clean images)."""

    return layer_statistics(predictor, paths, measured_layers(predictor.model))


TRAINING_IMAGES = "the training split (validation excluded), clean, no augmentation"


def validity_statistics(
    predictor: Predictor,
    train: Sequence[Sample],
    val: Sequence[Sample],
    classes: Sequence[str],
    images: str,
    layer: str = VALIDITY_LAYER,
    proxy: Path | None = None,
) -> tuple[ValidityStats, ValidityRecord]:
    """Fit the validity statistics on the training split, the threshold on validation; and their record.

    ``proxy``: a folder of radiographs that are not pediatric frontal chest X-rays (adult, lateral, other body
    parts), searched recursively; with it, a discriminator on :data:`~pneumocam.options.VALIDITY_DISC_LAYER` joins
    the distance.
    """
    spec = f"{layer}+{VALIDITY_DISC_LAYER}" if proxy else layer
    kept, train_summaries = predictor.summaries([s.path for s in train], spec)
    y = class_indices(labels_of(list(train), kept), list(classes))
    _, val_summaries = predictor.summaries([s.path for s in val], spec)
    d = summary_width(predictor.model, layer)
    stats = validity.fit(train_summaries[:, :d], y, val_summaries[:, :d], layer)
    against = None
    if proxy:
        read, proxy_summaries = predictor.summaries(list_images(proxy), spec)
        stats = validity.with_discriminator(stats, VALIDITY_DISC_LAYER, train_summaries, proxy_summaries, val_summaries)
        against = {"images": len(read), "folder": Path(proxy).name}
    return stats, validity.record(stats, train_summaries, val_summaries, images, against)


def add_validity(predictor: Predictor, scan: Scan, proxy: Path | None = None) -> ModelMeta:
    """Fit and store the validity statistics of a model trained before they were kept (``proxy``: see
    :func:`validity_statistics`); returns the metadata written.

    The training and validation splits are rebuilt from the configuration in
    ``model.json`` (same fraction and seed, so the same patients), which makes
    the result what training would have stored.
    """

    train, val = split_by_patient(scan.samples, *recorded_split(predictor.meta.training))
    images = TRAINING_IMAGES + "; measured after training"
    stats, record = validity_statistics(predictor, train, val, predictor.meta.classes, images, proxy=proxy)

    def change(meta: ModelMeta) -> None:
        meta.validity = record
        store_validity(predictor.directory, meta, stats)

    return update(predictor.directory, change)


def add_views(predictor: Predictor, scan: Scan, on_batch: Callable[[int], None] | None = None) -> Any:
    """Choose and store the test-time views of a model trained before they were chosen (its rebuilt validation split).

    Returns the :class:`pneumocam.training.view_choice.ViewChoice`; ``model.json`` gets ``predict`` and the validation
    figures with the chosen views (those of the image alone beside them).
    """

    _, val = split_by_patient(scan.samples, *recorded_split(predictor.meta.training))
    choice = choose_views(predictor, val, predictor.meta.classes, on_batch=on_batch)
    update(predictor.directory, choice.record_into)
    return choice
