"""MLflow runs for train, evaluate, stress, adapt, calibrate and audit: optional, off by default.

On when ``MLFLOW_TRACKING_URI`` is set or ``--mlflow [URI]`` is given; off
otherwise, and then MLflow is never imported. Each command logs one run into
the experiment ``<model name>/<command>``: the configuration it records as
parameters, its figures as metrics (``train``: every epoch, live, as a step), its
report files as artefacts, and tags (model SHA-256, data folder, protocol, git
commit, package versions). A run that fails ends FAILED; Ctrl-C or SIGTERM
end it KILLED; it is never left RUNNING. The local report is written as
without MLflow.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pneumocam.errors import PneumoCAMError
from pneumocam.options import MLFLOW_INSTALL
from pneumocam.paths import REPO_ROOT

ENV_URI = "MLFLOW_TRACKING_URI"
MAX_PARAM = 6000  # MLflow's limit on a parameter value


class TrackingError(PneumoCAMError):
    """MLflow asked for but not installed, or its tracking store refused."""


def tracking_uri(option: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The store to log to, or None (tracking off): ``--mlflow URI``, else ``MLFLOW_TRACKING_URI``."""
    env = os.environ if environ is None else environ
    return option or env.get(ENV_URI) or None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``a.b.c`` keys; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def report_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Overall and per-class figures of an evaluate report, and their 95 % bounds, as MLflow metrics."""
    out: dict[str, float] = {}
    for key in ("accuracy", "macro_f1", "ece", "n_images"):
        if isinstance(metrics.get(key), (int, float)):
            out[key] = float(metrics[key])
    for cls, figures in metrics.get("per_class", {}).items():
        for name, value in figures.items():
            if isinstance(value, (int, float)) and value == value:
                out[f"{cls}.{name}"] = float(value)
    for key, value in flatten(metrics.get("ci95", {})).items():
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            out[f"ci95.{key}.low"], out[f"ci95.{key}.high"] = float(value[0]), float(value[1])
    valid = metrics.get("validity", {})
    for key in ("n_flagged", "share_flagged", "accuracy_accepted"):
        if isinstance(valid.get(key), (int, float)):
            out[f"validity.{key}"] = float(valid[key])
    return out


def git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_tags() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import pneumocam

    tags = {"pneumocam.version": pneumocam.__version__}
    for name in ("tensorflow", "keras", "numpy", "scikit-learn", "mlflow-skinny"):
        try:
            tags[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            continue
    return tags


class Run:
    """One MLflow run; what a command logs goes through here."""

    def __init__(self, mlflow: Any, run: Any) -> None:
        self._mlflow = mlflow
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id

    def params(self, params: Mapping[str, Any]) -> None:
        flat = {k: str(v)[:MAX_PARAM] for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self._mlflow.log_params(dict(items[i : i + 100]))

    def metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if metrics:
            self._mlflow.log_metrics(dict(metrics), step=step)

    def tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})

    def artifacts(self, folder: Path, under: str | None = None) -> None:
        self._mlflow.log_artifacts(str(folder), artifact_path=under)

    def describe(self) -> dict[str, str]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id}


def _experiment(mlflow: Any, uri: str, name: str) -> str:
    """The experiment's id, created on first use; a SQLite store keeps artefacts beside its file."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.resolve().parent / "mlartifacts" / name.replace("/", "_")).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def tracked(
    uri: str | None, command: str, model_name: str, run_name: str, tags: Mapping[str, Any]
) -> Iterator[Run | None]:
    """An MLflow run around a command's work, or ``None`` when tracking is off.

    FINISHED when the block completes, KILLED on Ctrl-C or SIGTERM (which the
    CLI turns into ``SystemExit``), FAILED on any other exception.
    """
    if uri is None:
        yield None
        return
    try:
        import mlflow
    except ImportError as exc:
        raise TrackingError(f"--mlflow needs MLflow, which is not installed: {MLFLOW_INSTALL}") from exc
    for name in ("mlflow", "alembic"):  # store set-up notices; our own output says what was logged
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = _experiment(mlflow, uri, f"{model_name}/{command}")
        active = mlflow.start_run(experiment_id=experiment, run_name=run_name)
    except mlflow.exceptions.MlflowException as exc:
        first = str(exc).strip().splitlines()[0]
        raise TrackingError(f"cannot log to MLflow at {uri}: {first}") from exc
    run = Run(mlflow, active)
    run.tags({"command": command, "model": model_name, "git.commit": git_commit(REPO_ROOT), **package_tags(), **tags})
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit) as exc:
        status = "FINISHED" if isinstance(exc, SystemExit) and exc.code in (0, None) else "KILLED"
        raise
    finally:
        mlflow.end_run(status=status)
        print(f"MLflow run {run.run_id} ({status}) in {uri}", file=sys.stderr)
