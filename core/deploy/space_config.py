"""The web demo's settings: ``space/config.json``, overridden by environment variables.

Kept in core so the Space stays a thin UI and the settings are tested like any other code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from pneumocam.options import DEFAULT_OPACITY

if TYPE_CHECKING:
    from pneumocam.scoring.predictor import Predictor
from pneumocam.images.data import list_images
from pneumocam.paths import ENV_REPO_ID, ENV_REVISION, REPO_ROOT

CONFIG_FILE = REPO_ROOT / "space" / "config.json"
ENV_EXAMPLES = "PNEUMOCAM_EXAMPLES"


@dataclass(frozen=True)
class SpaceConfig:
    """Which model to serve and how much load to accept."""

    repo_id: str | None = None
    revision: str | None = None
    examples_dir: str | None = None
    max_file_size: str = "25mb"
    concurrency_limit: int = 2
    default_layers: int | None = None  # None: the model's own (model.json explain.layers)
    default_opacity: float = DEFAULT_OPACITY


def load_space_config(path: Path = CONFIG_FILE, environ: dict[str, str] | None = None) -> SpaceConfig:
    """Read the JSON config; ``PNEUMOCAM_REPO_ID``, ``PNEUMOCAM_REVISION``, ``PNEUMOCAM_EXAMPLES`` win."""
    env = os.environ if environ is None else environ
    data = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    known = {f.name for f in fields(SpaceConfig)}
    values = {k: v for k, v in data.items() if k in known}
    for key, var in (("repo_id", ENV_REPO_ID), ("revision", ENV_REVISION), ("examples_dir", ENV_EXAMPLES)):
        if env.get(var):
            values[key] = env[var]
    return SpaceConfig(**values)


def example_files(config: SpaceConfig, limit: int = 12) -> list[str]:
    """Example X-rays from the configured folder (relative to the repository; ``space/examples`` ships three)."""

    if not config.examples_dir:
        return []
    folder = Path(config.examples_dir)
    folder = folder if folder.is_absolute() else REPO_ROOT / folder
    return [str(p) for p in list_images(folder)[:limit]] if folder.is_dir() else []


def model_line(predictor: Predictor) -> str:
    """What a visitor should know of the model serving: its name, its exact version, its measured accuracy."""
    meta, hub = predictor.meta, predictor.hub
    version = f"revision {hub.revision[:12]}" if hub else f"weights sha256 {meta.weights_sha256[:12]}"
    test = meta.metrics.get("test")
    measured = (
        f"; {test['accuracy']:.1%} accuracy on the {test['n_images']}-image test split (as trained)"
        if test
        else "; not yet measured on a test split"
    )
    n = len(predictor.views)
    views = f"; each X-ray scored as {n} test-time views, averaged" if n > 1 else ""
    return f"**{meta.name}** ({version}){measured}{views}"
