"""What a heatmap audit returns: typed rows, the recommendation, the border check and the whole result.

The audit computes (:mod:`pneumocam.explain.audit`), chooses (:mod:`pneumocam.explain.audit_choice`) and the
report writes (:mod:`pneumocam.reports.audit_report`); these types are what passes between them.
:meth:`AuditResult.to_dict` is ``audit.json``; the rows and the recommendation are stored in ``model.json``
``explain.audit`` in the same form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pneumocam.options import BORDER_BAND, BORDER_FLAG, DEFAULT_CAM_SCORE


def candidate_name(method: str, score: str) -> str:
    """How a method explaining a score is named in reports: the method alone for the textbook logit."""
    return method if score == DEFAULT_CAM_SCORE else f"{method} ({score})"


@dataclass(frozen=True)
class LayerSanity:
    """One candidate on one layer under cascading randomisation: median |rho| and SSIM per stage reached."""

    rho: dict[str, float]
    ssim: dict[str, float]
    rho_after_head: float
    passes: bool


@dataclass(frozen=True)
class Heatmaps:
    """A default a model can show: a CAM method explaining a score on a named layer set."""

    method: str
    score: str
    layer_set: str
    layers: list[str]

    @property
    def name(self) -> str:
        return candidate_name(self.method, self.score)


@dataclass(frozen=True)
class AuditRow(Heatmaps):
    """One candidate on one layer set: ROAD areas (None where sanity ruled it out), sanity, blank maps."""

    morf_auc: float | None
    lerf_auc: float | None
    road_gap: float | None
    road_images: int
    rho_after_head: float
    sanity_pass: bool
    empty_share: float


@dataclass(frozen=True)
class Recommendation(Heatmaps):
    """The heatmaps an audit recommends, whether they are the model's default already, and why."""

    road_gap: float | None = None
    is_default: bool = False
    why: str = ""


@dataclass(frozen=True)
class BorderCheck:
    """Where the shown maps rest: each image's share of map in the border band, on one candidate and set."""

    method: str
    score: str
    layer_set: str
    share: dict[str, float]
    band: float = BORDER_BAND
    threshold: float = BORDER_FLAG

    @property
    def flagged(self) -> list[str]:
        """The images whose map rests mostly on the border: a shortcut (a marker, the collimation edge)."""
        return [name for name, s in self.share.items() if s > self.threshold]


@dataclass(frozen=True)
class AuditResult:
    """Everything one audit measured, on ``n_images`` images scored and explained as served.

    ``road`` is ROAD's block as :func:`pneumocam.explain.audit_road.nest` builds it (per candidate and
    layer set, with curves, plus the random and centred baselines) and the settings it ran with.
    """

    n_images: int
    served: dict[str, Any]
    methods: list[str]
    layer_sets: dict[str, list[str]]
    randomisation_stages: list[str]
    cascade: str
    sanity_threshold: float
    sanity: dict[str, dict[str, LayerSanity]]
    road: dict[str, Any]
    table: list[AuditRow]
    blank_layers: dict[str, dict[str, float]]
    recommendation: Recommendation
    border: BorderCheck
    predictions: dict[str, str]
    confidence: dict[str, float]
    skipped: list[dict[str, str]] = field(default_factory=list)
    data_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``audit.json``: every field, plus the border-flagged images by name."""
        return {**asdict(self), "border_flagged": self.border.flagged}
