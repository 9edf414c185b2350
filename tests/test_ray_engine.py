"""The Ray Data engine: its actor class alone, then a local Ray against the local engine, row for row."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_dataset, run
from pneumocam.errors import EngineError, InputError
from pneumocam.paths import REPO_ROOT

ray = pytest.importorskip("ray", reason="Ray is an optional install: pip install -r requirements-ray.txt")

from pneumocam.scoring.engine import make_engine  # noqa: E402
from pneumocam.scoring.ray_engine import ERROR, PATH, PROBABILITIES, BatchScorer, merge_rows, pool_size, probe  # noqa: E402

pytestmark = pytest.mark.timeout(600)  # a Ray job that hangs fails here, not at CI's limit


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def broken_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_dataset(root, "download")
    (root / "PNEUMONIA" / "person77_virus_1.jpeg").write_bytes(b"half a file")
    (root / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"")
    return root


# --- without a cluster -------------------------------------------------------------------------


def test_the_actor_scores_as_the_predictor_and_names_broken_files(tiny_model_dir: Path, tiny_predictor, broken_folder):
    paths = sorted(str(p) for p in broken_folder.rglob("*.jpeg"))
    scorer = BatchScorer(str(tiny_model_dir), tiny_predictor.meta.weights_sha256, threads=1)
    rows = scorer({PATH: np.array(paths, dtype=object)})
    local = tiny_predictor.score(paths)
    assert list(rows[PATH]) == paths
    errors = dict(zip(rows[PATH], rows[ERROR]))
    assert {p for p, e in errors.items() if e} == {str(p) for p, _ in local.skipped} and len(local.skipped) == 2
    assert errors[str(broken_folder / "NORMAL" / "IM-9999-0001.jpeg")] == "file is empty"
    good = [i for i, p in enumerate(paths) if not errors[p]]
    assert np.allclose(rows[PROBABILITIES][good], local.probabilities, atol=1e-6)
    assert np.isnan(rows[PROBABILITIES][[i for i in range(len(paths)) if errors[paths[i]]]]).all()


def test_the_actor_refuses_a_model_that_is_not_the_drivers(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pneumocam.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not the one the driver loaded"):
        BatchScorer(str(tiny_model_dir), "0" * 64)
    with pytest.raises(ModelLoadError, match="no model.json"):
        BatchScorer(str(tmp_path / "nowhere"), None)


def test_the_pool_has_one_actor_per_cpu() -> None:
    assert pool_size(2, None) == 2
    assert pool_size(16.5, None) == 16
    assert pool_size(0.5, None) == 1
    assert pool_size(8, 3) == 3
    with pytest.raises(InputError, match="needs 3 CPUs"):
        pool_size(2, 3)


def test_a_file_missing_from_the_results_fails_the_run() -> None:
    paths = [Path("/a.jpeg"), Path("/b.jpeg")]
    row = np.array([0.2, 0.3, 0.5], np.float32)
    rows = {"/a.jpeg": ("", row, 0.5, ""), "/b.jpeg": ("file is empty", row * np.nan, np.nan, "")}
    scores = merge_rows(paths[::-1], rows, 3, has_stats=True)
    assert scores.paths == [Path("/a.jpeg")] and scores.skipped == [(Path("/b.jpeg"), "file is empty")]
    assert scores.ood_scores.tolist() == [0.5] and scores.verdicts()[0].in_distribution
    with pytest.raises(EngineError, match="no result for 1 file"):
        merge_rows(paths, {"/a.jpeg": ("", row, 0.5, "")}, 3)


def test_an_address_that_does_not_answer_fails_in_one_line(tiny_model_dir: Path, broken_folder) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(EngineError, match="cannot connect to Ray at 127.0.0.1"):
            probe(f"127.0.0.1:{port}", timeout=2)
        args = ["--model", tiny_model_dir, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
        result = run("evaluate", broken_folder, *args, code=1)
    assert result.output.strip().splitlines()[-1].startswith("error: cannot connect to Ray at 127.0.0.1")


def test_without_ray_installed_the_engine_says_what_to_install(tiny_model_dir: Path, broken_folder) -> None:
    code = "import sys; sys.modules['ray'] = None; from pneumocam.cli.app import main; main()"
    args = ["evaluate", str(broken_folder), "--model", str(tiny_model_dir), "--engine", "ray"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: --engine ray needs Ray Data, which is not installed: pip install -r requirements-ray.txt"
    ]


def test_ray_options_need_the_ray_engine(tiny_model_dir: Path, broken_folder) -> None:
    result = run("evaluate", broken_folder, "--model", tiny_model_dir, "--workers", "2", code=2)
    assert "apply to --engine ray only" in result.output
    result = run("evaluate", broken_folder, "--model", tiny_model_dir, "--engine", "ray", "--adapt", code=2)
    assert "python -m cli adapt" in result.output


# --- on a local Ray --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    # One CPU, one actor: the other pytest worker shares the machine.
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


def assert_same_report(local: Path, on_ray: Path) -> None:
    a, b = read_csv(local / "predictions.csv"), read_csv(on_ray / "predictions.csv")
    assert [r["file"] for r in a] == [r["file"] for r in b]
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]
    probs = [k for k in a[0] if k.startswith("p_")]
    diff = max(abs(float(x[k]) - float(y[k])) for x, y in zip(a, b) for k in probs)
    assert diff <= 1e-5
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (local, on_ray))
    assert ma["skipped"] == mb["skipped"]
    assert ma["accuracy"] == pytest.approx(mb["accuracy"]) and ma["n_images"] == mb["n_images"]
    assert ma["provenance"]["engine"]["name"] == "local"
    assert mb["provenance"]["engine"] == {
        "name": "ray",
        "version": ray.__version__,
        "address": "local",
        "workers": 1,
    }
    assert {p.name for p in local.iterdir()} == {p.name for p in on_ray.iterdir()}


def test_a_killed_worker_loses_and_repeats_no_row(local_ray, tiny_predictor, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "download", per_class=12)
    paths = sorted(root.rglob("*.jpeg"))
    killed: list[int] = []

    def kill_the_actor(n: int) -> None:
        if killed:
            return
        for proc in Path("/proc").iterdir():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if proc.name.isdigit() and b"BatchScorer" in cmd:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))

    scores = make_engine("ray").score(tiny_predictor, paths, 3, kill_the_actor)
    assert killed, "no actor process was found to kill"
    local = tiny_predictor.score(paths, 3)
    assert scores.paths == local.paths and len(scores.paths) == len(paths)
    assert np.allclose(scores.probabilities, local.probabilities, atol=1e-6)


def test_a_model_folder_workers_cannot_read_is_one_line(local_ray, tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from pneumocam.scoring.predictor import load_predictor

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    loaded = load_predictor(copy)
    shutil.rmtree(copy)  # the driver has it loaded; the workers find nothing
    root = tmp_path / "data"
    make_dataset(root, "download")
    with pytest.raises(EngineError, match=r"a Ray worker failed: no model.json in .*model"):
        make_engine("ray").score(loaded, sorted(root.rglob("*.jpeg")), 4)


def test_the_cli_ships_the_package_to_the_workers(tiny_model_dir: Path, broken_folder, tmp_path: Path) -> None:
    """Started from elsewhere, with nothing on the workers' path: the Ray the CLI starts gets core/ itself (one
    actor: the other pytest worker shares the machine), and its report is the local engine's, row for row, broken
    files skipped alike, the folder reached through a link as ../shared is in CI."""
    link = tmp_path / "link"
    link.symlink_to(broken_folder.parent, target_is_directory=True)
    data = link / broken_folder.name
    local = tmp_path / "local"
    run("evaluate", data, "--model", tiny_model_dir, "--batch-size", 4, "--out", local)
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); from pneumocam.cli.app import main; main()"
    out = tmp_path / "ray"
    args = ["evaluate", str(data), "--model", str(tiny_model_dir), "--engine", "ray", "--workers", "1"]
    args += ["--batch-size", "4", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert_same_report(local, out)
    skipped = json.loads((out / "metrics.json").read_text())["skipped"]
    assert {s["file"] for s in skipped} == {"PNEUMONIA/person77_virus_1.jpeg", "NORMAL/IM-9999-0001.jpeg"}
