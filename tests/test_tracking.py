"""MLflow runs, for real: a SQLite store in a temporary folder, runs read back with mlflow.search_runs."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import make_dataset, run
from pneumocam.paths import REPO_ROOT
from pneumocam.reports.tracking import tracked, tracking_uri

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional install: pip install -r requirements-mlflow.txt")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture()
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def tracking_left_as_found():
    """``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI: later tests must not track into these stores."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)


def runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True)


def test_the_uri_comes_from_the_option_then_the_environment() -> None:
    assert tracking_uri(None, {}) is None
    assert tracking_uri(None, {"MLFLOW_TRACKING_URI": "sqlite:///a.db"}) == "sqlite:///a.db"
    assert tracking_uri("http://host:5000", {"MLFLOW_TRACKING_URI": "sqlite:///a.db"}) == "http://host:5000"


def test_train_then_evaluate_are_logged_with_params_metrics_steps_and_artifacts(
    tmp_path: Path, store: str, tiny_backbone_file: Path
) -> None:
    data = tmp_path / "data"
    make_dataset(data, "download", per_class=6)
    model = tmp_path / "model"
    args = ["train", data, "--out", model, "--backbone-weights", tiny_backbone_file, "--width-multiplier", "0.35"]
    args += ["--image-size", "64", "--epochs", "2", "--fine-tune-epochs", "2", "--cached-views", "1", "--mlflow", store]
    run(*args)
    history = json.loads((model / "history.json").read_text())
    report = tmp_path / "report"
    run("evaluate", data, "--model", model, "--out", report, "--record-as", "site", "--mlflow", store)

    df = runs(store)
    assert sorted(df["status"]) == ["FINISHED", "FINISHED"]
    by_command = {row["tags.command"]: row for _, row in df.iterrows()}
    train, evaluate = by_command["train"], by_command["evaluate"]
    assert train["params.train.epochs"] == "2" and train["params.arch.alpha"] == "0.35"
    assert train["tags.protocol"] == "train-only" and train["tags.model.sha256"]
    client = mlflow.tracking.MlflowClient()
    epochs = sum(len(stage["loss"]) for stage in history.values())
    steps = client.get_metric_history(train["run_id"], "val_accuracy")
    assert [m.step for m in steps] == list(range(epochs))
    assert [m.value for m in steps] == pytest.approx([v for s in history.values() for v in s["val_accuracy"]])
    model_files = {Path(a.path).name for a in client.list_artifacts(train["run_id"], "model")}
    assert {"model.keras", "model.json", "history.json"} <= model_files
    assert json.loads((model / "model.json").read_text())["training"]["mlflow"]["run_id"] == train["run_id"]

    metrics = json.loads((report / "metrics.json").read_text())
    assert evaluate["metrics.accuracy"] == pytest.approx(metrics["accuracy"])
    assert evaluate["metrics.NORMAL.recall"] == pytest.approx(metrics["per_class"]["NORMAL"]["recall"])
    low, high = metrics["ci95"]["accuracy"]
    assert (evaluate["metrics.ci95.accuracy.low"], evaluate["metrics.ci95.accuracy.high"]) == pytest.approx((low, high))
    assert evaluate["params.engine.name"] == "local" and evaluate["tags.protocol"] == "train-only"
    assert evaluate["tags.model.sha256"] == train["tags.model.sha256"]
    assert {a.path for a in client.list_artifacts(evaluate["run_id"])} == {p.name for p in report.iterdir()}
    assert metrics["provenance"]["mlflow"]["run_id"] == evaluate["run_id"]
    recorded = json.loads((model / "model.json").read_text())["metrics"]["site"]
    assert recorded["provenance"]["mlflow"]["run_id"] == evaluate["run_id"]
    experiments = {e.name for e in mlflow.search_experiments()}
    assert {"pneumocam-mobilenetv2/train", "pneumocam-mobilenetv2/evaluate"} <= experiments


def test_failed_and_interrupted_runs_are_never_left_running(store: str) -> None:
    with pytest.raises(RuntimeError):
        with tracked(store, "evaluate", "m", "broken", {}):
            raise RuntimeError("a bug")
    with pytest.raises(KeyboardInterrupt):
        with tracked(store, "evaluate", "m", "ctrl-c", {}):
            raise KeyboardInterrupt
    with pytest.raises(SystemExit):
        with tracked(store, "evaluate", "m", "sigterm", {}):
            sys.exit(143)
    status = dict(zip(runs(store)["tags.mlflow.runName"], runs(store)["status"]))
    assert status == {"broken": "FAILED", "ctrl-c": "KILLED", "sigterm": "KILLED"}


def test_sigterm_during_evaluate_ends_the_run_killed(tmp_path: Path, store: str, tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, "download", per_class=60)
    args = ["evaluate", str(data), "--model", str(tiny_model_dir), "--batch-size", "1", "--out", str(tmp_path / "r")]
    command = [sys.executable, "-m", "cli", *args, "--mlflow", store]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE)
    seen, deadline = b"", time.time() + 120
    while b"scoring" not in seen and time.time() < deadline and proc.poll() is None:  # the run has started
        if select.select([proc.stderr], [], [], 0.5)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    assert proc.poll() is None and b"scoring" in seen, seen.decode()
    assert list(runs(store)["status"]) == ["RUNNING"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(runs(store)["status"]) == ["KILLED"]
    assert not (tmp_path / "r").exists()  # the local report is written whole or not at all


def test_off_by_default_and_mlflow_never_imported(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data)
    code = (
        "import sys\nfrom cli.app import main\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('mlflow' in sys.modules, code)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(REPO_ROOT)}
    args = ["evaluate", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r")]
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False 0", out.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_without_mlflow_installed_the_option_says_what_to_install(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data)
    code = "import sys; sys.modules['mlflow'] = None; from pneumocam.cli.app import main; main()"
    args = ["evaluate", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"), "--mlflow"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --mlflow needs MLflow, which is not installed: pip install -r requirements-mlflow.txt"
    )
