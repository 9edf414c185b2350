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

from pneumocam.config import ValidityRecord
from pneumocam.errors import InputError
from pneumocam.images.readers import Header
from pneumocam.options import (
    ADULT_AGE,
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
    # The discriminator (absent: size 0): logistic regression on the standardised summary, training X-rays
    # against radiographs that are not pediatric frontal chest X-rays; its threshold accepts VALIDITY_ACCEPT of
    # validation, and ``joint`` is the threshold of the larger of the two ratios that accepts it too.
    disc_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    disc_bias: float = 0.0
    disc_threshold: float = 0.0
    joint: float = 1.0

    def __post_init__(self) -> None:
        d = self.train_mean.size  # the whole summary: the distance's part, then the discriminator's
        if self.scale.size == 0:
            self.scale = np.ones(d, np.float32)
        if self.shift.size == 0:
            self.shift = np.zeros(d, np.float32)

    @functools.cached_property
    def _whitened(self) -> tuple[np.ndarray, np.ndarray]:
        """``L`` with ``precision = L L^T``, and the class means times ``L``: distances become two matrix products."""
        whiten = np.linalg.cholesky(np.asarray(self.precision, np.float64))
        return whiten, self.means.astype(np.float64) @ whiten

    @property
    def width(self) -> int:
        """Numbers per image in the summary (:func:`pneumocam.model.network.validity_summary` of ``layer``)."""
        return int(self.train_mean.size)

    def _mapped(self, summaries: np.ndarray) -> np.ndarray:
        return np.asarray(summaries, np.float64) * self.scale + self.shift

    def distances(self, summaries: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each summary's first part (the first layer's) to its nearest class mean."""
        whiten, means = self._whitened
        z = self._mapped(summaries)[:, : self.means.shape[1]] @ whiten
        squared = (z * z).sum(1)[:, None] - 2 * z @ means.T + (means * means).sum(1)[None, :]
        return np.maximum(squared.min(1), 0.0)

    @property
    def has_discriminator(self) -> bool:
        return self.disc_weights.size > 0

    def standardised(self, summaries: np.ndarray) -> np.ndarray:
        """Summaries in units of the training X-rays' spread (the discriminator reads the part after the first)."""
        std = np.where(self.train_std > _MIN_STD, self.train_std, 1.0)
        return (self._mapped(summaries) - self.train_mean) / std

    def decisions(self, summaries: np.ndarray) -> np.ndarray:
        """The discriminator's log-odds that an image is not a pediatric frontal chest X-ray."""
        part = self.standardised(summaries)[:, self.width - self.disc_weights.size :]
        return part @ self.disc_weights.astype(np.float64) + self.disc_bias

    def ratios(self, summaries: np.ndarray) -> np.ndarray:
        """The larger of the distance over its threshold and the discriminator's odds over its own (1: each
        check's 95 % validation threshold); the distance alone for statistics without a discriminator.
        """
        ratio = self.distances(summaries) / self.threshold
        if self.has_discriminator:
            ratio = np.maximum(ratio, np.exp(np.minimum(self.decisions(summaries) - self.disc_threshold, 50.0)))
        return ratio

    def scores(self, summaries: np.ndarray) -> np.ndarray:
        """``ood_score`` per image: the ratio over the threshold that accepts 95 % of validation (above 1: flagged)."""
        return (self.ratios(summaries) / self.joint).astype(np.float32)

    def rematched(self, site_mean: np.ndarray, site_std: np.ndarray) -> ValidityStats:
        """The statistics for a model adapted to a site: its summaries re-standardised to the training ones."""
        ok = (site_std > _MIN_STD) & (self.train_std > _MIN_STD)
        scale = np.where(ok, self.train_std / np.where(ok, site_std, 1.0), 1.0)
        shift = np.where(ok, self.train_mean - scale * site_mean, 0.0)
        return replace(self, scale=scale.astype(np.float32), shift=shift.astype(np.float32))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        floats = {k: np.array(getattr(self, k)) for k in _FLOATS}
        np.savez(tmp, layer=np.array(self.layer), **floats, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ValidityStats:
        with np.load(path, allow_pickle=False) as z:  # files written before the discriminator lack its fields
            arrays = {k: z[k] for k in _ARRAYS if k in z}
            floats = {k: float(z[k]) for k in _FLOATS if k in z}
            return cls(layer=str(z["layer"]), **floats, **arrays)


_ARRAYS = ("means", "precision", "train_mean", "train_std", "scale", "shift", "disc_weights")
_FLOATS = ("threshold", "disc_bias", "disc_threshold", "joint")


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


#: The discriminator's L2 strength (scikit-learn's C), and its threshold: its own boundary (log-odds 0, the two
#: sides weighted equally), chosen leave-one-source-out (experiments/choose_adult_check.py, docs/validity.md).
DISCRIMINATOR_C = 0.01
DISCRIMINATOR_LOGIT = 0.0


def with_discriminator(
    stats: ValidityStats,
    layer: str,
    train: np.ndarray,
    proxy: np.ndarray,
    validation: np.ndarray,
    accept: float = VALIDITY_ACCEPT,
) -> ValidityStats:
    """The statistics with a discriminator on ``layer``'s summary: training X-rays (0) against ``proxy`` radiographs
    (1), classes balanced. The arrays are whole summaries of ``f"{stats.layer}+{layer}"`` (the distance's part
    first); the joint threshold accepts ``accept`` of the validation split.
    """
    from sklearn.linear_model import LogisticRegression

    if len(proxy) < 2:
        raise InputError("the discriminator needs at least 2 radiographs that are not pediatric frontal chest X-rays")
    train = np.asarray(train, np.float64)
    d = stats.means.shape[1]
    tail = train[:, d:]
    out = replace(
        stats,
        layer=f"{stats.layer.split('+')[0]}+{layer}",
        train_mean=np.r_[stats.train_mean[:d], tail.mean(0)].astype(np.float32),
        train_std=np.r_[stats.train_std[:d], tail.std(0)].astype(np.float32),
        scale=np.ones(0, np.float32),
        shift=np.zeros(0, np.float32),
        disc_weights=np.zeros(train.shape[1] - d, np.float32),
        disc_threshold=DISCRIMINATOR_LOGIT,
        joint=1.0,
    )  # replace() runs __post_init__: scale and shift become the whole summary's identity map
    x = np.r_[out.standardised(train), out.standardised(proxy)][:, d:]
    y = np.r_[np.zeros(len(train)), np.ones(len(proxy))]
    clf = LogisticRegression(C=DISCRIMINATOR_C, class_weight="balanced", max_iter=5000).fit(x, y)
    out.disc_weights, out.disc_bias = clf.coef_[0].astype(np.float32), float(clf.intercept_[0])
    out.joint = float(np.quantile(out.ratios(validation), accept, method="higher"))
    return out


def describe(stats: ValidityStats) -> str:
    """The method in words, for ``model.json`` and the card."""
    distance, *disc = stats.layer.split("+")
    text = (
        "squared Mahalanobis distance to the nearest training class mean (shared Ledoit-Wolf "
        f"covariance) of the per-channel spatial standard deviation of {distance}"
    )
    if disc:
        text += (
            f"; and a logistic-regression discriminator on the channel means and spreads of {disc[0]}, training "
            "X-rays against radiographs that are not pediatric frontal chest X-rays (adult, lateral, other body "
            "parts), its threshold its own boundary; the larger of the two ratios to their thresholds is scored, "
            "its threshold accepting the validation share"
        )
    return text


def record(
    stats: ValidityStats, train: np.ndarray, validation: np.ndarray, images: str, proxy: dict[str, Any] | None = None
) -> ValidityRecord:
    """What ``model.json`` says about the statistics (the file's hash is added on saving).

    ``proxy``: what the discriminator was fitted against (folder, images), for statistics that have one.
    """
    disc = {"C": DISCRIMINATOR_C, "threshold": stats.disc_threshold, "joint": stats.joint, "against": proxy or {}}
    checks = {
        "colour_max": COLOUR_MAX,
        "modalities": list(RADIOGRAPH_MODALITIES),
        "body_parts": list(CHEST_BODY_PARTS),
        "views": list(FRONTAL_VIEWS),
        "adult_age": ADULT_AGE,
    }
    return ValidityRecord(
        method=describe(stats),
        layer=stats.layer,
        summary="std",
        accept=VALIDITY_ACCEPT,
        threshold=stats.threshold,
        images=images,
        n_train=int(len(train)),
        validation={"n_images": int(len(validation)), "accepted": float(np.mean(stats.scores(validation) <= 1.0))},
        train_accepted=float(np.mean(stats.scores(train) <= 1.0)),
        checks=checks,
        discriminator=disc if stats.has_discriminator else {},
    )


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
    if header.age_years is not None and header.age_years >= ADULT_AGE:
        reasons.append(f"DICOM patient age {header.age_years:.0f} years, an adult (the model is for children)")
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
