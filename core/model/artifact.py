"""A model on disk: ``model.keras`` plus ``model.json``, its metadata.

The metadata is the one place that says what the model means: class names in
output order, the input recipe, the conv layers Grad-CAM explains, how it was
trained, what it scored and on which data. The CLI and the Space read it from
here and nowhere else. Loading always uses Keras safe mode and checks the
weights file's SHA-256 against the metadata.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumocam.atomic import write_json
from pneumocam.config import (
    LOGITS_LAYER,
    Adaptation,
    ArchConfig,
    ExplainDefaults,
    InputSpec,
    PredictDefaults,
    SiteFit,
    StatsFile,
    Temperature,
    TrainingData,
    TrainingRun,
    ValidityRecord,
)
from pneumocam.errors import InputError, ModelLoadError
from pneumocam.images.data import CLASSES
from pneumocam.model.conformal import SetRecord
from pneumocam.model.validity import ValidityStats

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"
META_FILE = "model.json"
SOURCE_STATS_FILE = "source_stats.npz"  # training statistics for site adaptation (pneumocam.site.adaptation)
VALIDITY_FILE = (
    "validity.npz"  # the training X-rays' statistics behind every call's validity score (pneumocam.model.validity)
)
CARD_FILE = "README.md"
#: The per-image folds of the cross-fitted protocols' recorded splits, each under the SHA-256 of its JSON (model.json
#: names them by it), so model.json keeps what a model means and the headline figures, not 624 entries per protocol.
SPLITS_FILE = "splits.json"
#: What training writes beside the model; the last lists its validation images (for stress --subset).
HISTORY_FILE = "history.json"
TRAINING_FILES = (HISTORY_FILE, "training_curves.png", "train.log", "validation.txt")
#: What a model folder may hold: the model, its metadata and statistics, its card, and what training wrote.
MODEL_FOLDER_FILES = (MODEL_FILE, META_FILE, SOURCE_STATS_FILE, VALIDITY_FILE, CARD_FILE, SPLITS_FILE, *TRAINING_FILES)
FORMAT_VERSION = 1
DEFAULT_CLASSES = CLASSES  # the order of the model outputs unless a model says otherwise


@dataclass
class ModelMeta:
    """What travels beside the weights. ``gradcam_layers`` is ordered shallow to deep."""

    classes: list[str]
    input: InputSpec
    arch: ArchConfig
    gradcam_layers: list[str]
    logits_layer: str = LOGITS_LAYER
    name: str = "pneumocam-mobilenetv2"
    training: TrainingRun = field(default_factory=TrainingRun)
    metrics: dict[str, Any] = field(default_factory=dict)
    data: TrainingData | None = None  # None: a model that was not trained here
    adaptation: Adaptation = field(default_factory=Adaptation)
    calibration: SiteFit | None = None  # a labelled site calibration this model carries
    tuning: SiteFit | None = None  # a labelled site tuning this model carries
    validity: ValidityRecord | None = None  # None: a model trained before validity statistics were kept
    conformal: SetRecord | None = None  # the prediction-set rule; None: a model fitted before sets
    temperature: Temperature | None = None  # None: a model trained before the temperature was fitted
    weights_sha256: str = ""
    explain: ExplainDefaults = field(default_factory=ExplainDefaults)
    predict: PredictDefaults = field(default_factory=PredictDefaults)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "classes": list(self.classes),
            "input": self.input.to_dict(),
            "arch": self.arch.to_dict(),
            "logits_layer": self.logits_layer,
            "gradcam_layers": list(self.gradcam_layers),
            "explain": self.explain.to_dict(),
            "predict": self.predict.to_dict(),
            "weights_file": MODEL_FILE,
            "weights_sha256": self.weights_sha256,
            "training": self.training.to_dict(),
            "metrics": self.metrics,
            "data": self.data.to_dict() if self.data else {},
            "adaptation": self.adaptation.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else {},
            **({"tuning": self.tuning.to_dict()} if self.tuning else {}),
            **({"validity": self.validity.to_dict()} if self.validity else {}),
            **({"temperature": self.temperature.to_dict()} if self.temperature else {}),
            **({"conformal": self.conformal.to_dict()} if self.conformal else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        version = d.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelLoadError(
                f"model.json has format version {version}; this PneumoCAM reads up to {FORMAT_VERSION}: "
                "upgrade PneumoCAM to use this model"
            )
        try:
            return cls(
                name=d.get("name", "pneumocam"),
                classes=list(d["classes"]),
                # A model.json written before the JPEG step has none: it keeps serving as it was measured.
                input=InputSpec.from_dict({"jpeg_quality": None, **d["input"]}),
                arch=ArchConfig.from_dict(d["arch"]),
                logits_layer=d.get("logits_layer", LOGITS_LAYER),
                gradcam_layers=list(d["gradcam_layers"]),
                explain=ExplainDefaults.from_dict(d.get("explain", {})),
                predict=PredictDefaults.from_dict(d.get("predict", {})),
                weights_sha256=d.get("weights_sha256", ""),
                training=TrainingRun.from_dict(d.get("training", {})),
                metrics=d.get("metrics", {}),
                data=TrainingData.from_dict(d["data"]) if d.get("data") else None,
                adaptation=Adaptation.from_dict(d.get("adaptation", {})),
                calibration=SiteFit.from_dict(d["calibration"]) if d.get("calibration") else None,
                tuning=SiteFit.from_dict(d["tuning"]) if d.get("tuning") else None,
                validity=ValidityRecord.from_dict(d["validity"]) if d.get("validity") else None,
                conformal=SetRecord.from_dict(d["conformal"]) if d.get("conformal") else None,
                temperature=Temperature.from_dict(d["temperature"]) if d.get("temperature") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"model metadata is incomplete or invalid: {exc}") from exc

    def last_layers(self, n: int) -> list[str]:
        """The last ``n`` conv layers (deepest last)."""
        if n < 1:
            raise InputError("number of layers must be at least 1")
        return self.gradcam_layers[-n:]

    def shown_layers(self, n: int | None = None) -> list[str]:
        """The layers a heatmap shows: the model's default set for ``None`` or its size, else the last ``n``.

        The default set is ``explain.layer_names`` when the audit chose named layers (say a 14x14 layer
        fused with the deepest), else the last ``explain.layers``.
        """
        if n is not None and not 1 <= n <= len(self.gradcam_layers):
            raise InputError(f"number of layers must be between 1 and {len(self.gradcam_layers)}")
        if self.explain.layer_names and n in (None, len(self.explain.layer_names)):
            return list(self.explain.layer_names)
        return self.last_layers(n or self.explain.layers)


@dataclass(frozen=True)
class HubRef:
    """Where a Hub model came from, to fetch its optional files later."""

    repo_id: str
    revision: str
    cache_dir: str | Path | None = None


@dataclass
class LoadedModel:
    """A Keras model and its metadata, checked against each other."""

    model: keras.Model
    meta: ModelMeta
    source: str
    directory: Path
    hub: HubRef | None = None
    validity_stats: ValidityStats | None = None  # None: a model trained before validity statistics were kept

    @property
    def from_hub(self) -> bool:
        return self.hub is not None


def new_meta(model: keras.Model, arch: ArchConfig, spec: InputSpec, classes: list[str]) -> ModelMeta:
    """Metadata for a freshly built model: Grad-CAM candidates read off the model."""
    from pneumocam.model.network import explainable_layer_names  # Keras: read_meta and --help stay without it

    return ModelMeta(classes=list(classes), input=spec, arch=arch, gradcam_layers=explainable_layer_names(model))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(
    model: keras.Model,
    meta: ModelMeta,
    directory: str | Path,
    source_stats: Any = None,
    validity_stats: ValidityStats | None = None,
) -> Path:
    """Write ``model.keras`` and ``model.json`` (with the weights' hash) into a folder.

    ``source_stats`` (a :class:`pneumocam.site.adaptation.LayerStats`) goes beside them as
    ``source_stats.npz``, its hash and image count recorded in the metadata;
    ``validity_stats`` as ``validity.npz``, its hash in ``meta.validity``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (MODEL_FILE + ".tmp.keras")
    model.save(tmp)
    tmp.replace(out / MODEL_FILE)
    meta.weights_sha256 = file_sha256(out / MODEL_FILE)
    if source_stats is not None:
        store_source_stats(out, meta, source_stats)
    if validity_stats is not None:
        store_validity(out, meta, validity_stats)
    write_json(out / META_FILE, meta.to_dict())
    return out


def store_source_stats(directory: Path, meta: ModelMeta, stats: Any) -> Path:
    """Write ``source_stats.npz`` (a :class:`pneumocam.site.adaptation.LayerStats`) into a model folder and record
    its hash and images in ``meta`` (the caller writes model.json)."""
    path = stats.save(Path(directory) / SOURCE_STATS_FILE)
    recorded = StatsFile(
        SOURCE_STATS_FILE,
        file_sha256(path),
        stats.n_images,
        "the training split (validation excluded), clean, no augmentation",
    )
    meta.adaptation = replace(meta.adaptation, source_stats=recorded)
    return path


def store_validity(directory: Path, meta: ModelMeta, stats: ValidityStats) -> Path:
    """Write ``validity.npz`` into a model folder and record its hash in ``meta`` (the caller writes model.json)."""
    path = stats.save(Path(directory) / VALIDITY_FILE)
    meta.validity = replace(meta.validity, file=VALIDITY_FILE, sha256=file_sha256(path))
    return path


def load_validity(directory: Path, meta: ModelMeta) -> ValidityStats | None:
    """The validity statistics a model folder holds, checked against their hash; None for a model without them."""
    if meta.validity is None or not meta.validity.sha256:
        return None
    path = Path(directory) / VALIDITY_FILE
    if not path.is_file():
        raise ModelLoadError(f"model.json names {VALIDITY_FILE} but {directory} lacks it")
    if file_sha256(path) != meta.validity.sha256:
        raise ModelLoadError(f"{path} does not match the SHA-256 recorded in {META_FILE}")
    return ValidityStats.load(path)


def is_model_entry(name: str) -> bool:
    """Names a model folder may hold (anything else there is someone else's file)."""
    return name in MODEL_FOLDER_FILES


def read_meta(directory: str | Path) -> ModelMeta:
    path = Path(directory) / META_FILE
    try:
        return ModelMeta.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"no {META_FILE} in {directory}") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc.msg})") from exc


def update(directory: str | Path, change: Callable[[ModelMeta], None]) -> ModelMeta:
    """Read a model folder's metadata, ``change`` it in place, write it back (atomically); the one read-modify-write
    every ``record_*`` goes through."""
    meta = read_meta(directory)
    change(meta)
    write_json(Path(directory) / META_FILE, meta.to_dict())
    return meta


def _digest(folds: dict[str, int]) -> str:
    return hashlib.sha256(json.dumps(folds, sort_keys=True).encode()).hexdigest()


def _detach_folds(directory: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with its protocol's per-image folds moved into ``splits.json``, named there by their hash."""
    split = metrics.get("protocol", {}).get("split")
    if not split or "file" in split["folds"]:
        return metrics
    digest, path = _digest(split["folds"]), directory / SPLITS_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**stored, digest: split["folds"]})
    detached = {**split, "folds": {"file": SPLITS_FILE, "sha256": digest}}
    return {**metrics, "protocol": {**metrics["protocol"], "split": detached}}


def record_metrics(directory: str | Path, split: str, metrics: dict[str, Any]) -> ModelMeta:
    """Store measured metrics (e.g. on the test split) in a model folder's metadata (not the skipped files, not the
    whole risk-coverage curve: the report beside them keeps both; a protocol's per-image folds in ``splits.json``).
    """
    kept = {k: v for k, v in metrics.items() if k != "skipped"}
    if "risk_coverage" in kept:  # the headline points and area; the whole curve stays in the report's metrics.json
        kept["risk_coverage"] = {k: v for k, v in kept["risk_coverage"].items() if k != "curve"}
    kept = _detach_folds(Path(directory), kept)
    return update(directory, lambda meta: meta.metrics.update({split: kept}))


def record_run(directory: str | Path, run: dict[str, str]) -> ModelMeta:
    """Name the MLflow run that trained a model in its metadata (and so in its model card)."""

    def change(meta: ModelMeta) -> None:
        meta.training = replace(meta.training, mlflow=dict(run))

    return update(directory, change)


def record_explain(directory: str | Path, gradcam_layers: list[str], explain: ExplainDefaults) -> ModelMeta:
    """Store the layers a model may explain and its default heatmaps (what an audit chose) in its metadata."""

    def change(meta: ModelMeta) -> None:
        meta.gradcam_layers, meta.explain = list(gradcam_layers), explain

    return update(directory, change)


def check_consistency(model: keras.Model, meta: ModelMeta) -> None:
    """Refuse a model whose metadata disagrees with it."""
    out_dim = model.output_shape[-1]
    if out_dim != len(meta.classes):
        raise ModelLoadError(f"model has {out_dim} outputs but metadata lists {len(meta.classes)} classes")
    if tuple(model.input_shape[1:]) != meta.input.shape:
        raise ModelLoadError(f"model input {model.input_shape[1:]} differs from metadata {meta.input.shape}")
    names = {layer.name for layer in model.layers}
    missing = [n for n in [meta.logits_layer, *meta.gradcam_layers] if n not in names]
    if missing:
        raise ModelLoadError(f"metadata names layers the model lacks: {', '.join(missing[:5])}")
    if meta.explain.layers > len(meta.gradcam_layers):
        raise ModelLoadError(f"metadata explains {meta.explain.layers} layers of {len(meta.gradcam_layers)}")
    unknown = [n for n in meta.explain.layer_names if n not in meta.gradcam_layers]
    if unknown:
        raise ModelLoadError(f"metadata shows layers it cannot explain: {', '.join(unknown)}")


def load_artifact(directory: str | Path, source: str | None = None, hub: HubRef | None = None) -> LoadedModel:
    """Load a model folder in Keras safe mode, verifying hashes and metadata (validity statistics included)."""
    d = Path(directory)
    meta = read_meta(d)
    weights = d / MODEL_FILE
    if not weights.is_file():
        raise ModelLoadError(f"no {MODEL_FILE} in {d}")
    if meta.weights_sha256 and file_sha256(weights) != meta.weights_sha256:
        raise ModelLoadError(f"{weights} does not match the SHA-256 recorded in {META_FILE}")
    try:
        from pneumocam.runtime import import_tensorflow_quietly  # TensorFlow only once a model is loaded

        import_tensorflow_quietly()
        import keras

        model = keras.models.load_model(weights, compile=False, safe_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {weights}: {first}") from exc
    check_consistency(model, meta)
    from pneumocam.model.views import check_views  # TensorFlow: see above

    try:
        check_views(meta.predict.views)
    except InputError as exc:
        raise ModelLoadError(f"{META_FILE} predict.views: {exc}") from exc
    stats = load_validity(d, meta)
    names = {layer.name for layer in model.layers}
    if stats is not None and not set(stats.layer.split("+")) <= names:
        raise ModelLoadError(f"{VALIDITY_FILE} summarises layer {stats.layer}, which the model lacks")
    return LoadedModel(model=model, meta=meta, source=source or str(d), directory=d, hub=hub, validity_stats=stats)
