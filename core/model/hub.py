"""Downloading a model from the Hugging Face Hub: pinned to a commit, into the standard cache.

Downloaded once, offline from the cache afterwards (``HF_HUB_OFFLINE``
honoured); optional files (the training statistics) are fetched when needed.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from pneumocam.errors import ModelLoadError
from pneumocam.model.artifact import META_FILE, MODEL_FILE, VALIDITY_FILE, HubRef, read_meta

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_pinned(revision: str | None) -> bool:
    """A revision is pinned when it is a full commit hash."""
    return bool(revision and _COMMIT.match(revision))


def download_from_hub(
    repo_id: str, revision: str, cache_dir: str | Path | None = None, allow_unpinned: bool = False
) -> Path:
    """Fetch ``model.json`` and ``model.keras`` at ``revision`` (and ``validity.npz`` if it names one); their folder."""
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
        raise ModelLoadError(f"cannot get {repo_id}@{revision} from the Hugging Face Hub: {first}") from exc
    folder = Path(paths[0]).parent
    if (record := read_meta(folder).validity) and record.sha256:
        download_optional(HubRef(repo_id, revision, cache_dir), VALIDITY_FILE)
    return folder


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
        raise ModelLoadError(f"cannot get {name} of {hub.repo_id}@{hub.revision}: {first}") from exc
