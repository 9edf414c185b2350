"""Prediction sets with a stated level: the classes an X-ray may belong to, at, say, 90 % coverage.

Split conformal prediction (Vovk et al. 2005; Angelopoulos & Bates 2021): on a
labelled sample the model did not train on, each image's *nonconformity* with its
true class is measured, and the threshold is the ``level`` quantile of those
scores (with the finite-sample correction). A new image's set holds every class
whose score is within the threshold. If the new image is exchangeable with the
sample, the set holds the true class at least ``level`` of the time. That
guarantee is only as good as the sample: a threshold fitted on the training
split's validation images does not hold at a site whose images differ
(``docs/conformal.md``); one fitted on the site's own labelled sample
(``calibrate``, ``tune``) does.

Three scores (the choice, made on validation, is in ``model.json`` ``conformal``):

* ``lac``: 1 - p(class), one threshold (least ambiguous set-valued classifier, Sadinle et al. 2019);
* ``aps``: the probability mass of the classes ranked at or above the class (adaptive prediction sets);
* ``class-lac``: 1 - p(class), one threshold per true class (Mondrian), so each class is covered
  at the level, whatever the site's case mix.

A set is never empty: the call itself is always in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pneumocam.errors import DataError, InputError
from pneumocam.options import SET_LEVEL

METHODS = ("lac", "aps", "class-lac")
#: How a set is written in one cell (predictions.csv, the predict table): class names never hold it.
SET_SEP = "|"


def member_names(probabilities: Sequence[float], keep: Sequence[bool], classes: Sequence[str]) -> list[str]:
    """The classes of one image's set, most probable first."""
    return [classes[i] for i in np.argsort(-np.asarray(probabilities, np.float64), kind="stable") if keep[i]]


def nonconformity(probabilities: np.ndarray, method: str) -> np.ndarray:
    """(n, k): how unlike each class the image is, for every candidate class (lower: more plausible)."""
    p = np.asarray(probabilities, np.float64)
    if method in ("lac", "class-lac"):
        return 1.0 - p
    if method == "aps":
        # mass of the classes strictly more probable than this one, plus this one's own
        above = (p[:, None, :] > p[:, :, None]) * p[:, None, :]
        return above.sum(-1) + p
    raise InputError(f"unknown conformal score {method!r}; one of {', '.join(METHODS)}")


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n + 1) level) / n empirical quantile: the finite-sample split-conformal threshold."""
    n = len(scores)
    if n == 0:
        raise DataError("a conformal threshold needs labelled images")
    rank = math.ceil((n + 1) * level)
    if rank > n:
        return math.inf  # too few images for this level: every class is kept
    return float(np.sort(scores)[rank - 1])


@dataclass(frozen=True)
class PredictionSets:
    """A fitted set rule: the score, the level and the threshold(s), with where they were fitted."""

    method: str
    level: float
    thresholds: tuple[float, ...]  # one, or one per class for class-lac
    fitted_on: str = ""
    n_images: int = 0

    def member(self, probabilities: np.ndarray) -> np.ndarray:
        """(n, k) bool: whether each class is in each image's set (the call always is)."""
        p = np.atleast_2d(np.asarray(probabilities, np.float64))
        scores = nonconformity(p, self.method)
        keep = scores <= np.asarray(self.thresholds, np.float64)[None, :] + 1e-9
        keep[np.arange(len(p)), p.argmax(1)] = True
        return keep

    def names(self, probabilities: Sequence[float], classes: Sequence[str]) -> list[str]:
        """One image's set as class names, most probable first."""
        p = np.asarray(probabilities, np.float64)
        return member_names(p, self.member(p[None])[0], classes)

    def threshold_text(self) -> str:
        """The thresholds in class order, "all" where a class is always in the set."""
        return ", ".join("all" if math.isinf(t) else f"{t:.3f}" for t in self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "level": self.level,
            "thresholds": [None if math.isinf(t) else t for t in self.thresholds],
            "fitted_on": self.fitted_on,
            "n_images": self.n_images,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictionSets:
        thresholds = tuple(math.inf if t is None else float(t) for t in d["thresholds"])
        return cls(d["method"], float(d["level"]), thresholds, d.get("fitted_on", ""), int(d.get("n_images", 0)))


@dataclass(frozen=True)
class SetRecord:
    """``model.json`` ``conformal``: the rule every call's set comes from, and what is known about it.

    ``choice``: how the score was chosen (training's simulated sites); ``validation``: its coverage and mean size
    there; ``previous``: the rule a site refit replaced (method, level, thresholds, where it was fitted).
    """

    rule: PredictionSets
    choice: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        extra = {"choice": self.choice, "validation": self.validation, "previous": self.previous}
        return self.rule.to_dict() | {k: v for k, v in extra.items() if v}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SetRecord:
        return cls(PredictionSets.from_dict(d), d.get("choice", {}), d.get("validation", {}), d.get("previous", {}))

    def replaced_by(self, rule: PredictionSets) -> SetRecord:
        """A site's refit rule, remembering this one."""
        kept = {k: v for k, v in self.rule.to_dict().items() if k != "n_images"}
        return SetRecord(rule, previous=kept)


def fit(
    probabilities: np.ndarray,
    y_true: Sequence[int],
    method: str,
    level: float = SET_LEVEL,
    fitted_on: str = "",
) -> PredictionSets:
    """The threshold(s) that cover ``level`` of a labelled sample (per class for ``class-lac``)."""
    if not 0.0 < level < 1.0:
        raise InputError(f"the set level must be between 0 and 1, not {level}")
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(y_true, int)
    own = nonconformity(p, method)[np.arange(len(y)), y]
    k = p.shape[1]
    if method == "class-lac":
        missing = [c for c in range(k) if not (y == c).any()]
        if missing:
            raise DataError(f"the labelled sample has no image of class index {missing[0]}; every class is needed")
        thresholds = tuple(conformal_quantile(own[y == c], level) for c in range(k))
    else:
        thresholds = (conformal_quantile(own, level),) * k
    return PredictionSets(method, level, thresholds, fitted_on, int(len(y)))


def cross_fit(
    probabilities: np.ndarray,
    y_true: Sequence[int],
    fold: np.ndarray,
    others: Sequence[np.ndarray],
    method: str,
    level: float = SET_LEVEL,
) -> tuple[np.ndarray, list[PredictionSets]]:
    """Each fold's sets from a rule fitted on the other folds: (n, k) membership, and each fold's rule.

    ``probabilities``: each image's cross-fitted probabilities; ``others[f]``: the other folds' probabilities after
    fold ``f``'s own site fit (calibration or tuning), in image order, so a fold's threshold and its site fit come
    from the same labelled images and neither saw the fold.
    """
    p = np.asarray(probabilities)
    y = np.asarray(y_true, int)
    keep = np.zeros(p.shape, bool)
    rules = []
    for f in range(int(fold.max()) + 1):
        held = fold == f
        rule = fit(others[f], y[~held], method, level, f"the other folds than {f}")
        keep[held] = rule.member(p[held])
        rules.append(rule)
    return keep, rules


#: How the score is chosen, fixed before any score was measured (``choose``).
CHOICE_RULE = (
    "{repeats} simulated sites: the validation split halved by patient at random; each score's threshold fitted "
    "on one half, and the other half resampled to a case mix drawn at random (Dirichlet(1, ..., 1) class shares) "
    "as the site. A score passes when its coverage reaches level - {slack:.0%} in at least 90 % of the sites; of "
    "those, the smallest mean set size wins (none passes: the best 10th-percentile coverage)"
)
CHOICE_REPEATS = 200
CHOICE_SLACK = 0.05


def simulate(
    probabilities: np.ndarray,
    y_true: Sequence[int],
    groups: Sequence[str],
    method: str,
    level: float = SET_LEVEL,
    repeats: int = CHOICE_REPEATS,
    seed: int = 0,
) -> dict[str, float]:
    """One score's coverage and set size over simulated sites (a random patient half with a random case mix)."""
    p = np.asarray(probabilities)
    y = np.asarray(y_true, int)
    patients, patient = np.unique(np.asarray(groups), return_inverse=True)
    k = p.shape[1]
    rng = np.random.default_rng(seed)
    coverage, size = [], []
    for _ in range(repeats):
        half = rng.random(len(patients)) < 0.5
        fit_mask = half[patient]
        site = np.flatnonzero(~fit_mask)
        if not fit_mask.any() or not len(site) or len(set(y[fit_mask].tolist())) < k:
            continue
        rule = fit(p[fit_mask], y[fit_mask], method, level)
        shares = rng.dirichlet(np.ones(k))
        by_class = [site[y[site] == c] for c in range(k)]
        weights = np.concatenate([np.full(len(b), shares[c] / len(b)) for c, b in enumerate(by_class) if len(b)])
        drawn = rng.choice(np.concatenate([b for b in by_class if len(b)]), len(site), p=weights / weights.sum())
        keep = rule.member(p[drawn])
        coverage.append(float(keep[np.arange(len(drawn)), y[drawn]].mean()))
        size.append(float(keep.sum(1).mean()))
    if not coverage:  # too few patients to halve with every class on the fitting side
        return {"mean_coverage": None, "p10_coverage": None, "mean_size": None, "sites": 0}
    return {
        "mean_coverage": float(np.mean(coverage)),
        "p10_coverage": float(np.quantile(coverage, 0.1)),
        "mean_size": float(np.mean(size)),
        "sites": len(coverage),
    }


def choose(
    probabilities: np.ndarray,
    y_true: Sequence[int],
    groups: Sequence[str],
    level: float = SET_LEVEL,
    fitted_on: str = "the validation split",
) -> tuple[PredictionSets, dict[str, Any]]:
    """Choose the score by :data:`CHOICE_RULE` on a labelled sample, fit it on all of it; the rule and the rows."""
    rows = {m: simulate(probabilities, y_true, groups, m, level) for m in METHODS}
    measured = [m for m in METHODS if rows[m]["sites"]]
    passing = [m for m in measured if rows[m]["p10_coverage"] >= level - CHOICE_SLACK]
    if passing:
        best = min(passing, key=lambda m: rows[m]["mean_size"])
    elif measured:
        best = max(measured, key=lambda m: rows[m]["p10_coverage"])
    else:
        best = METHODS[0]  # nothing to simulate on: the plain score, one threshold
    choice = {
        "rule": CHOICE_RULE.format(repeats=CHOICE_REPEATS, slack=CHOICE_SLACK),
        "table": {m: {**r, "passes": m in passing} for m, r in rows.items()},
    }
    return fit(probabilities, y_true, best, level, fitted_on), choice


#: How a set reads to a clinician; a class not named here reads as its own name.
CLASS_WORDS = {"BACTERIA": "bacterial pneumonia", "VIRUS": "viral pneumonia", "NORMAL": "normal (no pneumonia)"}


def in_words(names: Sequence[str], level: float, classes: Sequence[str]) -> str:
    """A set in words: one class is an answer; two or more say that the model cannot tell which, at this level."""
    words = [CLASS_WORDS.get(n, n) for n in names]
    tag = f"{level:.0%} prediction set"
    kinds = [w.removesuffix(" pneumonia") for w in words]
    if len(words) == 2 and all(w.endswith(" pneumonia") for w in words):  # "bacterial or viral pneumonia"
        return f"{kinds[0]} or {kinds[1]} pneumonia: the model cannot tell which for this X-ray ({tag})"
    if len(words) == 1:
        return f"{words[0]}: the {tag} holds this class alone"
    if len(words) == len(classes):
        return f"{', '.join(words[:-1])} or {words[-1]}: the model cannot tell for this X-ray ({tag})"
    return f"{' or '.join(words)}: the model cannot tell which for this X-ray ({tag})"
