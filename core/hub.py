"""Which model to serve: one resolver for the CLI and the Space.

Order: an explicit folder; else a Hugging Face Hub repo at a pinned revision
(downloaded once into the standard cache, offline from the cache afterwards,
``HF_HUB_OFFLINE`` honoured); else the repository's ``weights/`` folder.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from core.artifact import META_FILE, MODEL_FILE, HubRef, LoadedModel, load_artifact
from core.errors import ModelLoadError
from core.paths import DEFAULT_WEIGHTS_DIR, ENV_MODEL_PATH, ENV_REPO_ID, ENV_REVISION

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model folder and a human line saying where it came from."""

    directory: Path
    description: str
    hub: HubRef | None = None


def is_pinned(revision: str | None) -> bool:
    """A revision is pinned when it is a full commit hash."""
    return bool(revision and _COMMIT.match(revision))


def download_from_hub(
    repo_id: str, revision: str, cache_dir: str | Path | None = None, allow_unpinned: bool = False
) -> Path:
    """Fetch ``model.json`` and ``model.keras`` at ``revision``; returns their folder."""
    from huggingface_hub import hf_hub_download

    if not is_pinned(revision):
        if not allow_unpinned:
            raise ModelLoadError(
                f"revision {revision!r} is not a commit hash; pin one (or allow unpinned revisions explicitly)"
            )
        warnings.warn(f"loading {repo_id} at unpinned revision {revision!r}", stacklevel=2)
    try:
        paths = [
            hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir) for name in (META_FILE, MODEL_FILE)
        ]
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot get {repo_id}@{revision} from the Hugging Face Hub: {first}") from None
    return Path(paths[0]).parent


def download_optional(hub: HubRef, name: str) -> Path | None:
    """One more file of a Hub model (e.g. the training statistics), fetched only when needed; None if absent."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(hub.repo_id, name, revision=hub.revision, cache_dir=hub.cache_dir))
    except EntryNotFoundError:  # not published, or (offline) not in the cache
        return None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot get {name} of {hub.repo_id}@{hub.revision}: {first}") from None


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
