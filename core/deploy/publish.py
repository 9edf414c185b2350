"""Uploading to the Hugging Face Hub: the model folder (and, later, the Space)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pneumocam.deploy.space_config import load_space_config
from pneumocam.errors import PublishError
from pneumocam.model.artifact import (
    CARD_FILE,
    META_FILE,
    MODEL_FILE,
    SOURCE_STATS_FILE,
    SPLITS_FILE,
    TRAINING_FILES,
    VALIDITY_FILE,
)
from pneumocam.model.hub import is_pinned
from pneumocam.paths import REPO_ROOT

MODEL_CARD = CARD_FILE
REQUIRED_MODEL_FILES = (MODEL_FILE, META_FILE, MODEL_CARD)
OPTIONAL_MODEL_FILES = (SOURCE_STATS_FILE, VALIDITY_FILE, SPLITS_FILE, *TRAINING_FILES)


def model_files(folder: str | Path) -> list[Path]:
    """Exactly what ``publish`` uploads from a model folder; refuses an incomplete one."""
    d = Path(folder)
    missing = [n for n in REQUIRED_MODEL_FILES if not (d / n).is_file()]
    if missing:
        raise PublishError(f"{d} lacks {', '.join(missing)} (run train, evaluate --record-as test, model-card)")
    return [d / n for n in (*REQUIRED_MODEL_FILES, *OPTIONAL_MODEL_FILES) if (d / n).is_file()]


def space_files(root: Path = REPO_ROOT, with_weights: bool = False) -> list[tuple[Path, str]]:
    """Exactly what the Space needs, as (local file, path in the Space repo).

    The core package, the app, its config and examples, requirements.txt at the
    root (where Spaces read it) and the Space card ``space/README.md`` as the
    root README.md. The model comes from the Hub at the revision pinned in
    ``space/config.json``; without one, ``with_weights`` uploads ``weights/``
    too, and otherwise the Space is refused: it would have no model to serve.
    """

    config = load_space_config(root / "space" / "config.json", environ={})
    if not with_weights and not (config.repo_id and is_pinned(config.revision)):
        raise PublishError(
            "space/config.json pins no model revision, so the Space would have no model: publish the model and "
            "put its commit in space/config.json, or upload weights/ with the Space (--with-weights)"
        )
    pairs = [(p, p.relative_to(root).as_posix()) for p in sorted((root / "core").rglob("*.py"))]
    pairs += [(root / "space" / n, f"space/{n}") for n in ("app.py", "config.json")]
    pairs += [(p, p.relative_to(root).as_posix()) for p in sorted((root / "space" / "examples").glob("*"))]
    if with_weights:
        weights = root / "weights"
        pairs += [(weights / n, f"weights/{n}") for n in (MODEL_FILE, META_FILE, SOURCE_STATS_FILE, VALIDITY_FILE)]
    pairs += [(root / "requirements.txt", "requirements.txt"), (root / "space" / "README.md", "README.md")]
    missing = [str(p) for p, _ in pairs if not p.is_file()]
    if missing:
        raise PublishError(f"missing Space files: {', '.join(missing)}")
    return pairs


def upload(
    files: Sequence[tuple[Path, str]], repo_id: str, repo_type: str = "model", message: str = "", **create_kw: object
) -> str:
    """Create the repo if missing and upload ``(local file, path in repo)`` pairs in one commit.

    Returns the commit hash to pin.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, **create_kw)
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(f)) for f, name in files]
        info = api.create_commit(
            repo_id, ops, commit_message=message or f"Upload {len(files)} files", repo_type=repo_type
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PublishError(f"cannot upload to the Hugging Face Hub ({repo_id}): {first}") from exc
    return info.oid
