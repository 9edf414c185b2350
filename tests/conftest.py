"""Shared fixtures: tiny real models and generated labelled folders (helpers.py holds what they are made with)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import (  # noqa: E402
    TINY_ARCH,
    TINY_SPEC,
    calibrate_batchnorm,
    make_dataset,
    run,
    tiny_validity,
    xray_like,
)
from pneumocam.model.artifact import DEFAULT_CLASSES, new_meta, save_artifact  # noqa: E402
from pneumocam.model.network import build_model  # noqa: E402

#: The modules that take longest (``--durations``, on two workers), longest first. pytest-xdist hands whole modules
#: to its workers in collection order (``--no-loadscope-reorder``): started first, they leave no worker alone with
#: one of them at the end while the other idles.
LONGEST_FIRST = (
    "test_real_data.py",
    "test_training.py",
    "test_ray_engine.py",
    "test_audit.py",
    "test_cli.py",
    "test_site.py",
    "test_tuning.py",
    "test_tracking.py",
    "test_validity.py",
    "test_views.py",
    "test_artifact_hub.py",
    "test_robustness.py",
    "test_space.py",
    "test_install.py",
    "test_conformal.py",
    "test_stress.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's own order kept


@pytest.fixture(scope="session")
def tiny_backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV2 (alpha 0.35, 64x64) no-top weights file, as --backbone-weights takes it."""
    keras.utils.set_random_seed(11)
    bb = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=TINY_SPEC.shape)
    images = np.stack([np.repeat(xray_like(64, 64, seed=i)[..., None], 3, -1) for i in range(16)])
    calibrate_batchnorm(bb, images.astype("float32") / 127.5 - 1.0)
    path = tmp_path_factory.mktemp("backbone") / "mobilenet_v2_0.35_64_no_top.weights.h5"
    bb.save_weights(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_file: Path) -> Path:
    """A real PneumoCAM model at 64x64 (small random backbone, random head), saved as an artifact."""
    keras.utils.set_random_seed(7)
    model = build_model(TINY_ARCH, TINY_SPEC, backbone_weights=str(tiny_backbone_file))
    meta = new_meta(model, TINY_ARCH, TINY_SPEC, list(DEFAULT_CLASSES))
    out = tmp_path_factory.mktemp("tiny_model")
    stats, meta.validity = tiny_validity(model)
    save_artifact(model, meta, out, validity_stats=stats)
    return out


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_file: Path) -> tuple[Path, Path]:
    """A tiny model trained (a few epochs, head only) on a generated folder, and that folder: the one trained model
    shared by the tests that need its maps to mean something but do not test training itself."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    make_dataset(data, "download", per_class=6)
    out = root / "model"
    args = ["train", data, "--out", out, "--backbone-weights", tiny_backbone_file, "--width-multiplier", "0.35"]
    args += ["--image-size", "64", "--epochs", "3", "--fine-tune-from", "none", "--cached-views", "1"]
    run(*args)
    return data, out


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model_dir: Path):
    from pneumocam.scoring.predictor import load_predictor

    return load_predictor(tiny_model_dir)


@pytest.fixture()
def dataset_download(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    root = tmp_path / "data"
    return root, make_dataset(root, "download")


# --- the real test split, scored once per session (skipped where ../shared is absent) ---------------------------


@pytest.fixture(scope="session")
def real_scan():
    """The real test split in the download's layout."""
    from helpers import SHARED_DATA, SHARED_WEIGHTS
    from pneumocam.images.data import scan_dataset

    if not (SHARED_DATA / "test").is_dir() or not SHARED_WEIGHTS.is_file():
        pytest.skip(f"real data/weights not found in {SHARED_DATA.parent.parent} (set PNEUMOCAM_SHARED)")
    return scan_dataset(SHARED_DATA / "test")


@pytest.fixture(scope="session")
def real_predictor():
    """The committed model, served as ``evaluate`` serves it by default (its test-time views on)."""
    from pneumocam.paths import DEFAULT_WEIGHTS_DIR
    from pneumocam.scoring.predictor import load_predictor

    return load_predictor(DEFAULT_WEIGHTS_DIR)


@pytest.fixture(scope="session")
def real_scored(real_predictor, real_scan):
    """The test split through the committed model once, pooled features kept: every protocol without adaptation
    (as trained, cross-calibrated, cross-tuned, the site curve) starts from these scores, as ``evaluate`` does."""
    from pneumocam.site.protocols import Protocol

    return Protocol().score(real_predictor, [s.path for s in real_scan.samples], features=True)


@pytest.fixture(scope="session")
def real_adapted(real_predictor, real_scan):
    """The test split through the committed model adapted to it (``evaluate --adapt``'s passes), once."""
    from pneumocam.site.protocols import Protocol

    return Protocol(adapt=True).score(real_predictor, [s.path for s in real_scan.samples])
