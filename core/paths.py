"""Where things live by default, and the environment variables that move them."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def bundled_weights_dir(root: Path = REPO_ROOT) -> Path:
    """A checkout's ``weights/``; in an installed package, the copy ``pip install`` put in ``core/weights``."""
    checkout = root / "weights"
    return checkout if (checkout / "model.json").is_file() else Path(__file__).resolve().parent / "weights"


DEFAULT_WEIGHTS_DIR = bundled_weights_dir()

ENV_BACKBONE_WEIGHTS = "PNEUMOCAM_BACKBONE_WEIGHTS"
ENV_MODEL_PATH = "PNEUMOCAM_MODEL"
ENV_REPO_ID = "PNEUMOCAM_REPO_ID"
ENV_REVISION = "PNEUMOCAM_REVISION"
ENV_DEBUG = "PNEUMOCAM_DEBUG"  # 1: show tracebacks of our own errors too
