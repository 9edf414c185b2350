"""What every command shares: model selection, the options typed once, progress bars.

Nothing here imports TensorFlow: ``--help`` stays instant, and a command checks
its arguments, paths and class names before the model (and TensorFlow) loads.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pneumocam.options import (
    CAM_METHODS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_OPACITY,
    MAX_BATCH_SIZE,
    MAX_SHOWN_LAYERS,
    MLFLOW_DEFAULT_URI,
    MLFLOW_INSTALL,
)
from pneumocam.runtime import import_tensorflow_quietly

EXIT_ERROR = 1  # input or model problems; click uses 2 for bad usage
REPORTS_DIR = Path("reports")


class IntList(click.ParamType):
    """Comma-separated positive integers, e.g. ``25,50,100``; at least ``at_least`` of them."""

    name = "N,N,..."

    def __init__(self, at_least: int = 1) -> None:
        self.at_least = at_least

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers, e.g. 25,50,100", param, ctx)
        if len(out) < self.at_least or (out and min(out) < 1):
            self.fail(f"{value!r}: give at least {self.at_least} positive integer(s)", param, ctx)
        return out


def choice_option(flag: str, choices: Sequence[str], default: str, text: str) -> Callable:
    """An option that takes one of ``choices``, its default shown in --help."""
    return click.option(flag, type=click.Choice(choices), default=default, show_default=True, help=text)


@dataclass(frozen=True)
class ModelChoice:
    """The --model / --repo-id / --revision options, loaded only when the command needs the model."""

    path: Path | None
    repo_id: str | None
    revision: str | None
    allow_unpinned: bool = False
    use_views: bool = True  # average the model's test-time views (--no-views: the image alone)

    def is_hub(self) -> bool:
        """Whether this choice resolves to a Hugging Face Hub download (no local folder given)."""
        import os

        from pneumocam.paths import ENV_MODEL_PATH, ENV_REPO_ID

        return not (self.path or os.environ.get(ENV_MODEL_PATH)) and bool(self.repo_id or os.environ.get(ENV_REPO_ID))

    def meta(self) -> Any:
        """The model's metadata from its model.json alone (no TensorFlow), for checking arguments early.

        A Hub model is downloaded (and loaded) for it.
        """
        from pneumocam.model.artifact import read_meta
        from pneumocam.model.resolve import resolve_model

        if self.is_hub():
            return self.load().meta
        return read_meta(resolve_model(self.path, self.repo_id, self.revision).directory)

    def load(self) -> Any:
        """The model's :class:`~pneumocam.scoring.predictor.Predictor`, loaded once (TensorFlow imported here)."""
        return self._predictor

    @functools.cached_property
    def _predictor(self) -> Any:
        import warnings

        import_tensorflow_quietly()
        from pneumocam.scoring.predictor import load_predictor

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor = load_predictor(
                self.path, self.repo_id, self.revision, allow_unpinned=self.allow_unpinned, use_views=self.use_views
            )
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        shown = "" if len(predictor.views) == 1 else f" (test-time views: {', '.join(predictor.views)})"
        click.echo(f"model: {predictor.source}{shown}", err=True)
        return predictor


def model_options(f: Callable) -> Callable:
    """Add --model / --repo-id / --revision (resolved by pneumocam.model.resolve; default: the bundled weights/)."""

    @click.option(
        "--model", "model_path", type=click.Path(path_type=Path), help="Model folder (model.keras + model.json)."
    )
    @click.option("--repo-id", help="Hugging Face Hub model repo, e.g. org/pneumocam [env: PNEUMOCAM_REPO_ID].")
    @click.option("--revision", help="Commit hash to pin the Hub download to [env: PNEUMOCAM_REVISION].")
    @click.option(
        "--allow-unpinned",
        is_flag=True,
        help="Accept a branch or tag as --revision (with a warning): not reproducible.",
    )
    @functools.wraps(f)
    def wrapper(
        *args: Any, model_path: Path | None, repo_id: str | None, revision: str | None, allow_unpinned: bool, **kw: Any
    ) -> Any:
        return f(*args, model=ModelChoice(model_path, repo_id, revision, allow_unpinned), **kw)

    return wrapper


def views_option(f: Callable) -> Callable:
    """Add --views/--no-views; goes below ``@model_options``, whose model it switches."""

    @click.option(
        "--views/--no-views",
        "use_views",
        default=True,
        show_default=True,
        help="Average the model's test-time views (model.json predict.views: e.g. a JPEG re-encoding, a slight "
        "blur, a small zoom), which steadies the call; --no-views scores the image alone, faster.",
    )
    @functools.wraps(f)
    def wrapper(*args: Any, use_views: bool, model: ModelChoice, **kw: Any) -> Any:
        return f(*args, model=dataclasses.replace(model, use_views=use_views), **kw)

    return wrapper


def batch_size_option(default: int = DEFAULT_BATCH_SIZE) -> Callable:
    return click.option(
        "--batch-size",
        default=default,
        show_default=True,
        type=click.IntRange(1, MAX_BATCH_SIZE),
        help="Images per forward pass.",
    )


def overwrite_option(what: str) -> Callable:
    return click.option("--overwrite", is_flag=True, help=f"Replace {what} even if it holds other files.")


def model_out_option() -> Callable:
    return click.option(
        "--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Model folder to write."
    )


layers_option = click.option(
    "--layers",
    "n_layers",
    type=click.IntRange(1, MAX_SHOWN_LAYERS),
    help=f"After the model's default map, one map per layer of the last N conv layers (1 to {MAX_SHOWN_LAYERS}) "
    "[default: the model's own, model.json explain.layers].",
)
cam_method_option = click.option(
    "--method",
    type=click.Choice(CAM_METHODS),
    help="CAM method [default: the model's own, model.json explain.method]. A method the model's heatmap audit "
    "saw fail the sanity check still runs, with that warning on the page and on stderr.",
)
mlflow_option = click.option(
    "--mlflow",
    "mlflow_uri",
    is_flag=False,
    flag_value=MLFLOW_DEFAULT_URI,
    default=None,
    metavar="[URI]",
    help=f"Log this run to MLflow, at URI or (without one) {MLFLOW_DEFAULT_URI} [default: on when "
    f"MLFLOW_TRACKING_URI is set; optional install: {MLFLOW_INSTALL}].",
)
opacity_option = click.option(
    "--opacity",
    "--alpha",  # its old name, still taken
    "opacity",
    default=DEFAULT_OPACITY,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Heatmap opacity.",
)


def explain_option(choices: str, dest: str = "target") -> Callable:
    """``--explain``: which class the heatmaps explain; the same word means the same thing in every command."""
    return click.option(
        "--explain", dest, default="predicted", show_default=True, help=f"Class the heatmaps explain: {choices}."
    )


def progress(total: int, label: str, quiet: bool = False) -> Any:
    """A progress bar on stderr; ``quiet``: none drawn (work too short to follow), ``update`` still works."""
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True, hidden=quiet)


def tracked_command(
    mlflow_uri: str | None, command: str, predictor: Any, data_dir: Path, run_name: str, **tags: str
) -> Any:
    """The MLflow run of a command on a served model (a no-op when tracking is off), tagged with the
    model's weights and source and the data folder."""
    from pneumocam.reports.tracking import tracked, tracking_uri

    tags = {
        "model.sha256": predictor.meta.weights_sha256,
        "model.source": predictor.source,
        "data_dir": Path(data_dir).resolve().name,
        **tags,
    }
    return tracked(tracking_uri(mlflow_uri), command, predictor.meta.name, run_name, tags)


def default_out(data_dir: Path, *parts: str) -> Path:
    """``reports/<data folder name>/...``: where a report goes without --out."""
    return REPORTS_DIR.joinpath(data_dir.resolve().name, *parts)
