"""What a model stores: its recipes (input, architecture, training) and the typed blocks of ``model.json`` that
record what was fitted for it (data, temperature, adaptation statistics). Plain dataclasses, no heavy imports.

``model.json`` holds them; the command line shows their defaults in
``--help`` (so each default is written here once) before TensorFlow loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

from pneumocam.errors import InputError
from pneumocam.options import (
    AUGMENTATIONS,
    CAM_METHODS,
    CAM_SCORES,
    COPY_JPEG_QUALITY,
    DEFAULT_CAM_METHOD,
    DEFAULT_CAM_SCORE,
    DEFAULT_LAYERS,
    NO_VIEWS,
)

PIL_BILINEAR = "pil-bilinear"
#: Layer names every entry point relies on: the pre-softmax logits Grad-CAM explains, the pooled features.
LOGITS_LAYER = "logits"
FEATURES_LAYER = "pooled_features"
#: Resize methods a model's input recipe may name; ``pil-bilinear`` is how the data set's copies were made.
RESIZE_METHODS = (PIL_BILINEAR, "area", "bilinear", "bicubic", "nearest")
POOLINGS = ("max", "avg")


class Stored:
    """``to_dict`` / ``from_dict`` for a frozen dataclass kept in model.json (tuple fields travel as lists).

    ``RENAMED``: the older name of a field, as model.json files and recipes written before the rename say it.
    """

    RENAMED: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def current_names(cls, d: dict[str, Any]) -> dict[str, Any]:
        """``d`` with each older field name replaced by today's."""
        return {cls.RENAMED.get(k, k): v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        tuples = {f.name for f in fields(cls) if isinstance(f.default, tuple)}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in cls.current_names(d).items()})


@dataclass(frozen=True)
class InputSpec(Stored):
    """How images become model input (the input pipeline): stored with the model, read everywhere.

    After reading, the image is resized to ``height`` x ``width`` with ``resize``, then, when
    ``jpeg_quality`` is set, saved and read back as a JPEG of that quality: the way the data set's
    copies were made, so an original upload carries the texture the model was trained and measured on.
    """

    height: int = 224
    width: int = 224
    resize: str = PIL_BILINEAR
    color: str = "rgb"
    value_range: tuple[float, float] = (0.0, 255.0)
    jpeg_quality: int | None = COPY_JPEG_QUALITY

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_METHODS:
            raise InputError(f"unknown resize method {self.resize!r}; use one of {', '.join(RESIZE_METHODS)}")
        if self.height < 1 or self.width < 1:
            raise InputError("input size must be positive")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise InputError("the input's JPEG quality must be between 1 and 100")

    def without_jpeg(self) -> InputSpec:
        """The pipeline up to the resize (stress perturbs there, then the JPEG step follows)."""
        return replace(self, jpeg_quality=None)

    def describe(self) -> str:
        """The pipeline in words, for reports and the model card."""
        jpeg = f", JPEG round trip at quality {self.jpeg_quality}" if self.jpeg_quality else ""
        return f"resized to {self.width}x{self.height} ({self.resize}){jpeg}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)


def check_cam_method(method: str) -> str:
    """A CAM method name we know, or the one-line error that lists them."""
    if method not in CAM_METHODS:
        raise InputError(f"unknown CAM method {method!r}; use one of {', '.join(CAM_METHODS)}")
    return method


def check_cam_score(score: str) -> str:
    """A score we know how to explain, or the one-line error that lists them."""
    if score not in CAM_SCORES:
        raise InputError(f"unknown CAM score {score!r}; use one of {', '.join(CAM_SCORES)}")
    return score


@dataclass(frozen=True)
class ExplainDefaults(Stored):
    """The heatmaps a model shows unless the user asks otherwise: CAM method, score and layers.

    ``layers``: how many layers are shown; the last ``layers`` explainable ones, unless ``layer_names`` names
    them (an audited set such as a 14x14 layer fused with the deepest). ``audit`` says where the choice
    came from (``python -m cli audit --record``), empty for the defaults.
    """

    method: str = DEFAULT_CAM_METHOD
    layers: int = DEFAULT_LAYERS
    score: str = DEFAULT_CAM_SCORE
    layer_names: tuple[str, ...] = ()
    audit: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_cam_method(self.method)
        check_cam_score(self.score)
        object.__setattr__(self, "layer_names", tuple(self.layer_names))
        if self.layer_names:
            object.__setattr__(self, "layers", len(self.layer_names))
        if self.layers < 1:
            raise InputError("the default number of layers must be at least 1")


@dataclass(frozen=True)
class TrainingData(Stored):
    """Where a model's training images came from, their counts, and how validation was split off them."""

    source: str
    train_dir: str
    layout: str
    counts: dict[str, int]
    split: str
    n_train: int
    n_val: int


@dataclass(frozen=True)
class Temperature(Stored):
    """The validation temperature (:mod:`pneumocam.training.confidence`): folded into the logits when ``used``.

    ``ece_after_cross_fitted``: validation's calibration error with each patient half scaled by the temperature
    fitted on the other half; the temperature is used only when that is below ``ece_before``.
    """

    value: float
    used: bool
    fitted_on: str
    ece_before: float
    ece_after_cross_fitted: float
    rule: str = ""


@dataclass(frozen=True)
class PredictDefaults(Stored):
    """How every entry point scores an image: the test-time views averaged (:mod:`pneumocam.model.views`).

    ``choice`` says how the views were chosen (``python -m cli choose-views``), empty for the default.
    """

    views: tuple[str, ...] = NO_VIEWS
    choice: dict = field(default_factory=dict)


#: Architecture options that lost on validation and left the code: their "off" value and the last commit with them.
RETIRED_ARCH_OPTIONS = {"standardize": (False, "fa6124a"), "blur": (0.0, "fa6124a")}


@dataclass(frozen=True)
class ArchConfig(Stored):
    """Everything needed to rebuild the architecture; stored in the metadata."""

    n_classes: int = 3
    alpha: float = 1.0
    pooling: str = "max"
    dropout: float = 0.2
    dense_units: tuple[int, ...] = (128,)
    flip: str = "horizontal"
    rotation: float = 0.1
    backbone: str = "MobileNetV2"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchConfig:
        """Older model.json files name options that lost on validation and left the code (docs/experiments.md).

        Off, they change nothing and are dropped; on, the model needs the commit that built it.
        """
        d = dict(d)
        for name, (off, commit) in RETIRED_ARCH_OPTIONS.items():
            if d.pop(name, off) != off:
                raise InputError(f"this model was built with {name!r}, which left PneumoCAM; load it at {commit}")
        return super().from_dict(d)


@dataclass(frozen=True)
class TrainConfig(Stored):
    """Both stages; the defaults are the seed's recipe."""

    RENAMED: ClassVar[dict[str, str]] = {"views": "copies"}  # "views" now means the test-time views alone

    epochs: int = 50
    batch_size: int = 100
    learning_rate: float = 1e-3
    patience: int = 5
    fine_tune_from: int | None = 145
    fine_tune_epochs: int = 10
    fine_tune_batch_size: int = 300
    fine_tune_lr_divisor: float = 100.0
    fine_tune_patience: int | None = None
    #: Augmented copies of each training image cached as activations (copy 0 is the image itself).
    copies: int = 3
    val_fraction: float = 0.2
    seed: int = 42
    class_weight: str = "balanced"
    label_smoothing: float = 0.0
    augment: str = AUGMENTATIONS[0]
    #: Fine-tuning: weight of the Jensen-Shannon consistency among an image's copies (pneumocam.training.consistency);
    #: 0: none.
    consistency: float = 0.0

    def __post_init__(self) -> None:
        if self.consistency < 0:
            raise InputError("the consistency weight must be at least 0")
        if self.consistency > 0 and (self.fine_tune_from is None or self.copies < 3):
            raise InputError("consistency training needs the fine-tuning stage and at least 3 cached copies (--copies)")


@dataclass(frozen=True)
class StatsFile(Stored):
    """A statistics file beside the model: its name, its hash, and the images it summarises."""

    file: str
    sha256: str
    n_images: int = 0
    images: str = ""


@dataclass(frozen=True)
class Adaptation:
    """``model.json`` ``adaptation``: the training statistics adaptation maps a site back to, and the adaptation
    this model carries (``applied``: the method's figures, the site folder, the date); empty for neither."""

    source_stats: StatsFile | None = None
    applied: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source_stats": self.source_stats.to_dict()} if self.source_stats else {}
        return out | ({"applied": self.applied} if self.applied else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Adaptation:
        stats = d.get("source_stats")
        return cls(StatsFile.from_dict(stats) if stats else None, d.get("applied", {}))


@dataclass(frozen=True)
class ValidityRecord:
    """``model.json`` ``validity``: what the validity statistics are (:mod:`pneumocam.model.validity`), the
    threshold and what it accepted, the sure checks, the file they are in, and the site they were re-matched to.

    ``discriminator``: its settings and the proxy images it was fitted against, for statistics that have one.
    """

    method: str
    layer: str
    summary: str
    accept: float
    threshold: float
    images: str
    n_train: int
    validation: dict[str, Any]  # n_images, accepted
    train_accepted: float
    checks: dict[str, Any]
    discriminator: dict[str, Any] = field(default_factory=dict)
    file: str = ""
    sha256: str = ""
    rematched: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        disc, rematched = out.pop("discriminator"), out.pop("rematched")
        first = {"method": out.pop("method")} | ({"discriminator": disc} if disc else {})
        return first | out | ({"rematched": rematched} if rematched else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidityRecord:
        return cls(**d)


@dataclass(frozen=True)
class SiteFit:
    """``model.json`` ``calibration`` or ``tuning``: a fit on a labelled site folder (:mod:`pneumocam.site.models`).

    ``params``: the fit's own (calibration: temperature and biases; tuning: its choice, penalty, temperature,
    biases, weights' norm and inner cross-validation); ``in_sample``: the sample's figures before and after;
    ``previous``: the calibration this one was stacked on.
    """

    OWN: ClassVar[tuple[str, ...]] = ("kind", "folder", "n_images", "counts", "date", "in_sample", "previous")

    kind: str
    params: dict[str, Any]
    folder: str
    n_images: int
    counts: dict[str, int]
    date: str
    in_sample: dict[str, Any]
    previous: SiteFit | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, **self.params, "folder": self.folder, "n_images": self.n_images}
        out |= {"counts": self.counts, "date": self.date, "in_sample": self.in_sample}
        return out | ({"previous": self.previous.to_dict()} if self.previous else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteFit:
        params = {k: v for k, v in d.items() if k not in cls.OWN}
        previous = cls.from_dict(d["previous"]) if d.get("previous") else None
        return cls(d["kind"], params, d["folder"], d["n_images"], d["counts"], d["date"], d["in_sample"], previous)


@dataclass(frozen=True)
class TrainingRun:
    """``model.json`` ``training``: how the model was trained, as recorded when it was.

    ``config`` is the :class:`TrainConfig` as written then (read it through :meth:`TrainConfig.current_names`);
    ``recipe``, ``wall_minutes``, ``mlflow`` (the run that trained it) and ``base_model`` (what a site model was
    derived from) are there when they apply. ``extra``: keys this version does not know, written back as read.
    """

    procedure: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    augment_params: dict[str, Any] | None = None
    cached_at: str = ""
    class_weights: dict[Any, float] | None = None
    epochs_run: dict[str, int] = field(default_factory=dict)
    best_val_loss: dict[str, float] = field(default_factory=dict)
    backbone_weights: str = ""
    keras: str = ""
    tensorflow: str = ""
    wall_minutes: float | None = None
    mlflow: dict[str, Any] = field(default_factory=dict)
    base_model: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields set (a model not trained here has none: ``{}``), in the order training writes them."""
        empty = TrainingRun()
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {k: v for k, v in kept.items() if v != getattr(empty, k)} | self.extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingRun:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})
