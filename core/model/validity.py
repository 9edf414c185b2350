"""Is an upload a frontal chest X-ray like the training ones? The validity score every call carries.

A portrait photo or a CT slice still gets a confident class from the model.
Two checks flag such inputs, and the image is scored anyway (a flag, not a drop):

* **the score**, from the forward pass that makes the call: each image's
  per-channel spatial spread of the last conv layer's activations, and its
  squared Mahalanobis distance to the nearest class mean of the training
  X-rays (one shared covariance, Ledoit-Wolf shrinkage; Lee et al. 2018).
  ``ood_score`` is that distance divided by the threshold, which accepts
  :data:`~pneumocam.options.VALIDITY_ACCEPT` of the validation split: above 1 means
  less like the training X-rays than all but the last 5 % of validation
  images. The layer and the summary were chosen on validation and on images
  that are not chest X-rays (``docs/validity.md``);
* **sure checks** on what the file itself says: a strongly coloured image, a
  DICOM whose modality, body part or view is not a frontal chest radiograph.

The statistics are fitted at training time on the training split and stored
beside the model (``validity.npz``, hashed in ``model.json``). After site
adaptation the site's own summaries are re-standardised to the training ones
(the same move adaptation makes on the features), so the site's X-rays stay
accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumocam.errors import InputError
from pneumocam.images.readers import Header
from pneumocam.options import (
    CHEST_BODY_PARTS,
    COLOUR_MAX,
    FRONTAL_VIEWS,
    RADIOGRAPH_MODALITIES,
    VALIDITY_ACCEPT,
)

_MIN_STD = 1e-3


@dataclass
class ValidityStats:
    """The training X-rays' summaries: class means, shared precision, the threshold, and the input map.

    ``scale`` and ``shift`` map a summary into the training space before the
    distance (identity for a trained model; set by site adaptation).
    """

    layer: str
    means: np.ndarray  # (n_classes, d)
    precision: np.ndarray  # (d, d) float32
    threshold: float  # squared distance that accepts VALIDITY_ACCEPT of the validation split
    train_mean: np.ndarray  # (d,) the training summaries' mean and spread, for re-standardising a site
    train_std: np.ndarray
    scale: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        d = self.means.shape[1]
        if self.scale.size == 0:
            self.scale = np.ones(d, np.float32)
        if self.shift.size == 0:
            self.shift = np.zeros(d, np.float32)

    @functools.cached_property
    def _whitened(self) -> tuple[np.ndarray, np.ndarray]:
        """``L`` with ``precision = L L^T``, and the class means times ``L``: distances become two matrix products."""
        whiten = np.linalg.cholesky(np.asarray(self.precision, np.float64))
        return whiten, self.means.astype(np.float64) @ whiten

    def distances(self, summaries: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each summary to its nearest class mean."""
        whiten, means = self._whitened
        z = (np.asarray(summaries, np.float64) * self.scale + self.shift) @ whiten
        squared = (z * z).sum(1)[:, None] - 2 * z @ means.T + (means * means).sum(1)[None, :]
        return np.maximum(squared.min(1), 0.0)

    def scores(self, summaries: np.ndarray) -> np.ndarray:
        """``ood_score`` per image: the distance over the threshold (above 1: flagged)."""
        return (self.distances(summaries) / self.threshold).astype(np.float32)

    def rematched(self, site_mean: np.ndarray, site_std: np.ndarray) -> ValidityStats:
        """The statistics for a model adapted to a site: its summaries re-standardised to the training ones."""
        ok = (site_std > _MIN_STD) & (self.train_std > _MIN_STD)
        scale = np.where(ok, self.train_std / np.where(ok, site_std, 1.0), 1.0)
        shift = np.where(ok, self.train_mean - scale * site_mean, 0.0)
        return replace(self, scale=scale.astype(np.float32), shift=shift.astype(np.float32))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {k: getattr(self, k) for k in ("means", "precision", "train_mean", "train_std", "scale", "shift")}
        np.savez(tmp, layer=np.array(self.layer), threshold=np.array(self.threshold), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ValidityStats:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("means", "precision", "train_mean", "train_std", "scale", "shift")}
            return cls(layer=str(z["layer"]), threshold=float(z["threshold"]), **arrays)


def fit(
    train: np.ndarray, labels: np.ndarray, validation: np.ndarray, layer: str, accept: float = VALIDITY_ACCEPT
) -> ValidityStats:
    """Class means and a shrunk shared covariance from the training summaries; the threshold from validation."""
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train, np.float64)
    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(train) < 2 or len(validation) < 1:
        raise InputError("the validity statistics need training and validation images")
    means = np.stack([train[labels == k].mean(0) for k in present])
    centred = train - means[np.searchsorted(present, labels)]
    precision = LedoitWolf().fit(centred).precision_.astype(np.float32)  # stored as float32: half the file
    stats = ValidityStats(
        layer=layer,
        means=means.astype(np.float32),
        precision=precision,
        threshold=1.0,
        train_mean=train.mean(0).astype(np.float32),
        train_std=train.std(0).astype(np.float32),
    )
    stats.threshold = float(np.quantile(stats.distances(validation), accept, method="higher"))
    return stats


def record(stats: ValidityStats, train: np.ndarray, validation: np.ndarray, images: str) -> dict[str, Any]:
    """What ``model.json`` says about the statistics (the file's hash is added on saving)."""
    return {
        "method": "squared Mahalanobis distance to the nearest training class mean (shared Ledoit-Wolf "
        f"covariance) of the per-channel spatial standard deviation of {stats.layer}",
        "layer": stats.layer,
        "summary": "std",
        "accept": VALIDITY_ACCEPT,
        "threshold": stats.threshold,
        "images": images,
        "n_train": int(len(train)),
        "validation": {
            "n_images": int(len(validation)),
            "accepted": float(np.mean(stats.scores(validation) <= 1.0)),
        },
        "train_accepted": float(np.mean(stats.scores(train) <= 1.0)),
        "checks": {
            "colour_max": COLOUR_MAX,
            "modalities": list(RADIOGRAPH_MODALITIES),
            "body_parts": list(CHEST_BODY_PARTS),
            "views": list(FRONTAL_VIEWS),
        },
    }


def colourfulness(image: np.ndarray) -> float:
    """Mean distance of each pixel from its own grey (0..255 units): 0 for an X-ray."""
    x = np.asarray(image, np.float32)
    return float(np.abs(x - x.mean(-1, keepdims=True)).mean())


def input_reasons(image: np.ndarray, header: Header) -> list[str]:
    """The sure signs, in the file and its pixels, that it is not a frontal chest radiograph."""
    reasons = []
    colour = colourfulness(image)
    if colour > COLOUR_MAX:
        reasons.append(f"a colour image (colourfulness {colour:.0f}; X-rays are grey)")
    if header.modality and header.modality.upper() not in RADIOGRAPH_MODALITIES:
        reasons.append(f"DICOM modality {header.modality}, not a radiograph ({', '.join(RADIOGRAPH_MODALITIES)})")
    if header.body_part and header.body_part.upper() not in CHEST_BODY_PARTS:
        reasons.append(f"DICOM body part {header.body_part}, not the chest")
    if header.view and header.view.upper() not in FRONTAL_VIEWS:
        reasons.append(f"DICOM view {header.view}, not a frontal view ({', '.join(FRONTAL_VIEWS)})")
    return reasons


def score_reason(ood_score: float) -> str:
    return f"unlike the training X-rays (ood_score {ood_score:.2f}, above 1)"


@dataclass(frozen=True)
class Validity:
    """One call's validity: whether it looks like a training X-ray, the score, and why not."""

    in_distribution: bool
    ood_score: float | None
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"in_distribution": self.in_distribution, "ood_score": self.ood_score, "reasons": list(self.reasons)}


def verdict(ood_score: float | None, reasons: Sequence[str] = ()) -> Validity:
    """Flagged when any sure check fired or the score is above 1; no score (a model without statistics): checks only."""
    why = [*reasons, *([score_reason(ood_score)] if ood_score is not None and ood_score > 1.0 else [])]
    return Validity(not why, None if ood_score is None else float(ood_score), tuple(why))


def verdicts(ood_scores: np.ndarray | None, notes: Sequence[str]) -> list[Validity]:
    """One :class:`Validity` per scored image, from the score column and the sure checks' notes."""
    split = [tuple(n.split(NOTE_SEP)) if n else () for n in notes]
    scores = [None] * len(split) if ood_scores is None else [float(s) for s in ood_scores]
    return [verdict(s, r) for s, r in zip(scores, split)]


#: How the sure checks' reasons are joined in one string (the scoring pipeline carries one per image); reasons
#: themselves may hold "; ", so the separator is one they never hold.
NOTE_SEP = " | "

WARNING = "This does not look like a frontal pediatric chest X-ray"
#: What replaces the class headline of a flagged image (the Space, the Python API's summary).
NOT_MEANINGFUL = "Not a meaningful call"


def call_text(probabilities: dict[str, float], validity: Validity) -> str:
    """A call in words: "VIRUS (87%)", or for a flagged image the warning and its reasons first, then the call."""
    predicted = max(probabilities, key=probabilities.get)
    call = f"{predicted} ({probabilities[predicted]:.0%})"
    if validity.in_distribution:
        return call
    return f"{NOT_MEANINGFUL}. {WARNING} ({NOTE_SEP.join(validity.reasons)}). Kept anyway: {call}"


#: The mark on a flagged image in galleries and overlays.
FLAG_MARK = "FLAGGED: not like the training X-rays"


def summarize(validity: Sequence[Validity], correct: np.ndarray | None = None) -> dict[str, Any]:
    """How many calls were flagged and why; with ``correct`` (one bool per image), accuracy with and without them."""
    flagged = np.array([not v.in_distribution for v in validity], bool)
    kinds: dict[str, int] = {}
    for v in validity:
        for r in v.reasons:
            key = r.split(" (")[0]
            kinds[key] = kinds.get(key, 0) + 1
    out: dict[str, Any] = {
        "scored": any(v.ood_score is not None for v in validity),
        "n_images": len(validity),
        "n_flagged": int(flagged.sum()),
        "share_flagged": float(flagged.mean()) if len(flagged) else 0.0,
        "reasons": dict(sorted(kinds.items())),
    }
    if correct is not None and len(flagged):
        correct = np.asarray(correct, bool)
        out["accuracy_all"] = float(correct.mean())
        out["accuracy_accepted"] = float(correct[~flagged].mean()) if (~flagged).any() else None
        out["accuracy_flagged"] = float(correct[flagged].mean()) if flagged.any() else None
    return out


def format_summary(block: dict[str, Any]) -> str:
    """One or two lines for a report: how many calls were flagged, and the accuracy with and without them."""
    if not block.get("n_images"):
        return "validity: no image scored"
    how = "score and sure checks" if block.get("scored") else "sure checks only (the model has no validity statistics)"
    line = (
        f"validity ({how}): {block['n_flagged']} of {block['n_images']} images flagged ({block['share_flagged']:.1%})"
    )
    if block["reasons"]:
        line += ": " + ", ".join(f"{k} {v}" for k, v in block["reasons"].items())
    accepted = block.get("accepted")
    if accepted and block["n_flagged"]:
        line += (
            f"\naccuracy {block['accuracy_all']:.1%} on all images, {accepted['accuracy']:.1%} on the "
            f"{accepted['n_images']} accepted (macro F1 {accepted['macro_f1']:.3f})"
        )
    return line
