"""The model artifact: save/load, integrity checks, safe mode, and the Hub resolver on a real cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import TINY_ARCH, TINY_SPEC, run, save_gray, xray_like
from pneumocam.errors import ModelLoadError
from pneumocam.model.artifact import (
    META_FILE,
    MODEL_FILE,
    VALIDITY_FILE,
    load_artifact,
    new_meta,
    read_meta,
    save_artifact,
)
from pneumocam.model.hub import is_pinned
from pneumocam.model.network import backbone_layers, build_model, conv_layer_names, set_fine_tuning
from pneumocam.model.resolve import resolve_model
from pneumocam.paths import REPO_ROOT

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_model_json_from_before_the_jpeg_step_serves_as_it_was_measured(tiny_model_dir: Path, tmp_path: Path) -> None:
    """New models record the copies' JPEG step; an older model.json without it keeps the resize alone."""
    from pneumocam.scoring.predictor import load_predictor

    assert read_meta(tiny_model_dir).input.jpeg_quality == 75
    older = tmp_path / "older"
    shutil.copytree(tiny_model_dir, older)
    d = json.loads((older / META_FILE).read_text())
    del d["input"]["jpeg_quality"]
    (older / META_FILE).write_text(json.dumps(d))
    image = save_gray(tmp_path / "x.png", xray_like(150, 120, seed=3))
    new, old = load_predictor(tiny_model_dir), load_predictor(older)
    assert old.spec.jpeg_quality is None and old.spec == TINY_SPEC.without_jpeg()
    p_new, p_old = new.score([image]).probabilities, old.score([image]).probabilities
    assert not np.allclose(p_new, p_old, atol=1e-7)  # the step is real: the JPEG texture reaches the model


def test_round_trip_keeps_predictions_and_metadata(tiny_model_dir: Path, tiny_predictor) -> None:
    meta = read_meta(tiny_model_dir)
    assert meta.classes == ["BACTERIA", "NORMAL", "VIRUS"]
    assert meta.input == TINY_SPEC and meta.arch == TINY_ARCH
    assert meta.gradcam_layers == [*conv_layer_names(tiny_predictor.model)[:-1], "out_relu"]
    assert len(meta.weights_sha256) == 64
    x = np.random.default_rng(0).uniform(0, 255, (2, *TINY_SPEC.shape)).astype("float32")
    again = load_artifact(tiny_model_dir)
    np.testing.assert_allclose(
        again.model(x, training=False).numpy(), tiny_predictor.model(x, training=False).numpy(), rtol=1e-5
    )


def test_backbone_layers_are_top_level_and_fine_tuning_keeps_bn_frozen(tiny_predictor) -> None:
    model = tiny_predictor.model
    bb = backbone_layers(model)
    assert bb[1].name == "Conv1" and bb[-1].name == "out_relu"
    assert all(model.get_layer(n) is not None for n in tiny_predictor.meta.gradcam_layers)
    fresh = build_model(TINY_ARCH, TINY_SPEC, backbone_weights=None)
    assert not any(layer.trainable for layer in backbone_layers(fresh))
    set_fine_tuning(fresh, 145)
    layers = backbone_layers(fresh)
    assert not any(layer.trainable for layer in layers[:145])
    tuned = [layer for layer in layers[145:] if layer.trainable]
    assert tuned and not any(isinstance(layer, keras.layers.BatchNormalization) for layer in tuned)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers[145:])


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "m")
    with open(d / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_artifact(d)


def test_a_newer_metadata_format_is_refused_with_a_clear_message(tiny_model_dir: Path, tmp_path: Path) -> None:

    from pneumocam.model.artifact import FORMAT_VERSION

    d = copy_model(tiny_model_dir, tmp_path / "m")
    meta = json.loads((d / META_FILE).read_text())
    assert meta["format_version"] == FORMAT_VERSION
    meta["format_version"] = FORMAT_VERSION + 1
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=f"format version {FORMAT_VERSION + 1}.*upgrade PneumoCAM"):
        load_artifact(d)
    image = save_gray(tmp_path / "x.png", xray_like())
    result = run("predict", image, "--model", d, code=1)
    assert "upgrade PneumoCAM" in result.stderr


def test_metadata_disagreeing_with_model_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "m")
    meta = json.loads((d / META_FILE).read_text())
    meta["classes"] = ["NORMAL", "PNEUMONIA"]
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="3 outputs but metadata lists 2"):
        load_artifact(d)
    meta["classes"] = ["BACTERIA", "NORMAL", "VIRUS"]
    meta["gradcam_layers"].append("no_such_conv")
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="no_such_conv"):
        load_artifact(d)


def test_lambda_layer_is_refused_by_safe_mode(tmp_path: Path) -> None:
    inp = keras.Input((TINY_SPEC.height, TINY_SPEC.width, 3))
    out = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(out)))
    meta = new_meta(build_model(TINY_ARCH, TINY_SPEC, None), TINY_ARCH, TINY_SPEC, ["BACTERIA", "NORMAL", "VIRUS"])
    meta.gradcam_layers = []
    save_artifact(model, meta, tmp_path / "evil")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_artifact(tmp_path / "evil")


def fill_hub_cache(cache: Path, repo_id: str, commit: str, model_dir: Path) -> Path:
    """Lay a model out exactly as huggingface_hub's cache stores a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in (META_FILE, MODEL_FILE, VALIDITY_FILE):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_resolver_order(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PNEUMOCAM_MODEL", "PNEUMOCAM_REPO_ID", "PNEUMOCAM_REVISION"):
        monkeypatch.delenv(var, raising=False)
    default = tmp_path / "weights"
    assert resolve_model(default_dir=default).directory == default
    assert resolve_model(tiny_model_dir, default_dir=default).directory == tiny_model_dir
    assert resolve_model(tiny_model_dir / MODEL_FILE).directory == tiny_model_dir
    monkeypatch.setenv("PNEUMOCAM_MODEL", str(tiny_model_dir))
    assert resolve_model(default_dir=default).directory == tiny_model_dir
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(tmp_path / "missing")


def test_hub_download_from_prefilled_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = fill_hub_cache(cache, "pneumocam/test-model", COMMIT, tiny_model_dir)
    source = resolve_model(repo_id="pneumocam/test-model", revision=COMMIT, cache_dir=cache)
    assert source.directory == snap
    assert "pneumocam/test-model@" + COMMIT in source.description
    loaded = load_artifact(source.directory)
    assert loaded.meta.classes == ["BACTERIA", "NORMAL", "VIRUS"] and loaded.validity_stats is not None


def test_hub_errors_and_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start-up
    assert is_pinned(COMMIT) and not is_pinned("main")
    with pytest.raises(ModelLoadError, match="not a commit hash"):
        resolve_model(repo_id="pneumocam/x", revision="main", cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="cannot get pneumocam/x"):
        resolve_model(repo_id="pneumocam/x", revision=COMMIT, cache_dir=tmp_path)
    fallback = resolve_model(repo_id="pneumocam/x", revision=COMMIT, cache_dir=tmp_path, fallback=True)
    assert fallback.directory == REPO_ROOT / "weights" and "Hub unavailable" in fallback.description


def test_cli_predicts_offline_through_the_hub_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The whole path as a user runs it: HF_HUB_OFFLINE, HF_HUB_CACHE, --repo-id/--revision."""
    cache = tmp_path / "hub"
    fill_hub_cache(cache, "pneumocam/test-model", COMMIT, tiny_model_dir)
    image = save_gray(tmp_path / "x.png", xray_like())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "cli", "predict", str(image), "--json"]
    cmd += ["--repo-id", "pneumocam/test-model", "--revision", COMMIT]
    run = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out[0]["file"] == str(image)
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert f"pneumocam/test-model@{COMMIT}" in run.stderr


def test_unpinned_revision_needs_the_flag_and_warns(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    fill_hub_cache(cache, "pneumocam/test-model", COMMIT, tiny_model_dir)
    image = save_gray(tmp_path / "x.png", xray_like())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "predict",
        str(image),
        "--repo-id",
        "pneumocam/test-model",
        "--revision",
        "main",
    ]
    refused = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "not a commit hash" in refused.stderr
    allowed = subprocess.run(
        [*cmd, "--allow-unpinned"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: loading pneumocam/test-model at unpinned revision 'main'" in allowed.stderr


def test_recorded_folds_live_beside_model_json_named_by_their_hash(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from helpers import recorded_folds
    from pneumocam.model.artifact import SPLITS_FILE, read_meta, record_metrics

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    folds = {f"NORMAL/im{i}.jpeg": i % 2 for i in range(50)}
    split = {"k": 2, "seed": 0, "folds": folds}
    for key in ("site:site-calibrated", "site:site-tuned"):  # one split, two protocols: stored once
        record_metrics(folder, key, {"accuracy": 0.5, "protocol": {"name": key, "split": split}})
    recorded = read_meta(folder).metrics["site:site-tuned"]["protocol"]["split"]
    assert recorded["k"] == 2 and set(recorded["folds"]) == {"file", "sha256"}
    assert len(json.loads((folder / "model.json").read_text())["metrics"]["site:site-tuned"]["protocol"]["split"]) == 3
    assert recorded_folds(folder, recorded) == folds
    assert len(json.loads((folder / SPLITS_FILE).read_text())) == 1
