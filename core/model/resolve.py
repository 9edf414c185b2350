"""Which model to serve: one resolver for the CLI and the Space, for local folders and Hub models alike.

Order: an explicit folder; else a Hugging Face Hub repo at a pinned revision
(:mod:`pneumocam.model.hub`); else the repository's ``weights/`` folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pneumocam.errors import ModelLoadError
from pneumocam.model.artifact import META_FILE, MODEL_FILE, HubRef, LoadedModel, load_artifact
from pneumocam.model.hub import download_from_hub
from pneumocam.paths import DEFAULT_WEIGHTS_DIR, ENV_MODEL_PATH, ENV_REPO_ID, ENV_REVISION


@dataclass(frozen=True)
class ModelSource:
    """A resolved model folder and a human line saying where it came from."""

    directory: Path
    description: str
    hub: HubRef | None = None


def resolve_model(
    path: str | Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    *,
    fallback: bool = False,
    cache_dir: str | Path | None = None,
    default_dir: Path = DEFAULT_WEIGHTS_DIR,
    allow_unpinned: bool = False,
) -> ModelSource:
    """Find the model folder. Arguments win over ``PNEUMOCAM_*`` environment variables.

    With ``fallback=True`` (the Space) a Hub failure falls back to ``default_dir``
    and says so in the description; otherwise it is an error.
    """
    path = path or os.environ.get(ENV_MODEL_PATH) or None
    repo_id = repo_id or os.environ.get(ENV_REPO_ID) or None
    revision = revision or os.environ.get(ENV_REVISION) or None
    if path:
        p = Path(path)
        if p.is_file() and p.name in (MODEL_FILE, META_FILE):
            p = p.parent
        if not p.is_dir():
            raise ModelLoadError(f"model folder {p} does not exist")
        return ModelSource(p, f"local model {p}")
    if repo_id:
        try:
            if not revision:
                raise ModelLoadError(f"no revision given for {repo_id}; pin a commit hash")
            d = download_from_hub(repo_id, revision, cache_dir=cache_dir, allow_unpinned=allow_unpinned)
            return ModelSource(d, f"Hugging Face Hub {repo_id}@{revision}", HubRef(repo_id, revision, cache_dir))
        except ModelLoadError as exc:
            if not fallback:
                raise
            return ModelSource(default_dir, f"bundled model {default_dir} (Hub unavailable: {exc})")
    return ModelSource(default_dir, f"bundled model {default_dir}")


def load_model(
    path: str | Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    **kwargs,
) -> LoadedModel:
    """Resolve and load in one call (what the CLI and the Space do)."""
    source = resolve_model(path, repo_id, revision, **kwargs)
    return load_artifact(source.directory, source=source.description, hub=source.hub)
