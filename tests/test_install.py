"""The package installs under one name: ``pip install .`` gives ``pneumocam`` (the command and the Python API),
which finds the bundled model from any folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from helpers import make_dataset
from pneumocam.images.readers import read_image
from pneumocam.model.artifact import read_meta
from pneumocam.paths import REPO_ROOT
from pneumocam.scoring.predictor import load_predictor

#: What a checkout holds besides the package sources (caches, local runs, data): left out of the copy installed.
_TOP_LEVEL_EXTRAS = {"runs", "data", ".git", "test-artifacts", "build", "reports", "pneumocam.egg-info"}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    """``copytree``'s ignore: the checkout's own extras at its top, caches anywhere (``core/reports`` is a package)."""
    top = Path(folder).resolve() == REPO_ROOT.resolve()
    return {n for n in names if (top and n in _TOP_LEVEL_EXTRAS) or n == "__pycache__" or n.endswith("_cache")}


@pytest.mark.slow
def test_pip_install_gives_a_pneumocam_command_that_runs_from_any_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO_ROOT, src, ignore=_not_sources)
    env_dir = tmp_path / "venv"
    # The test machine's runtime packages are seen through; the build runs isolated, with the setuptools that
    # pyproject.toml asks for, whatever the base Python carries (3.11's bundled 65.5 has no bdist_wheel).
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    bindir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python = str(bindir / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--no-deps", str(src)]
    built = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    shutil.rmtree(src)  # the command must not lean on the checkout it came from

    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", where], capture_output=True, text=True, check=True).stdout.strip())
    installed = site / "pneumocam"
    assert (installed / "cli" / "app.py").is_file() and (installed / "weights" / "model.json").is_file()
    assert not (site / "core").exists() and not (site / "cli").exists(), "generic top-level names installed"

    elsewhere = tmp_path / "elsewhere"
    make_dataset(elsewhere / "data", "download", per_class=2)
    command = str(bindir / "pneumocam")
    proc = subprocess.run(
        [command, "evaluate", "data", "--out", "report"], cwd=elsewhere, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((elsewhere / "report" / "metrics.json").read_text())
    assert metrics["n_images"] == 3 * 2 + 3
    model = metrics["provenance"]["model"]
    assert model["sha256"] == read_meta(REPO_ROOT / "weights").weights_sha256 and "site-packages" in model["source"]
    assert str(REPO_ROOT) not in model["source"]
    usage = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith("Usage: pneumocam")

    # The README's three lines, from another folder, give the bundled model's call as this checkout serves it.
    xray = next((elsewhere / "data" / "NORMAL").iterdir())
    script = (
        "import json, pneumocam\n"
        "model = pneumocam.load()\n"
        f"result = model.explain({str(xray)!r})\n"
        "print(json.dumps([pneumocam.__file__, result.predicted, result.probabilities, len(result.heatmaps)]))\n"
    )
    api = subprocess.run([python, "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert api.returncode == 0, api.stderr[-2000:]
    where, predicted, probabilities, n_maps = json.loads(api.stdout.strip().splitlines()[-1])
    assert "site-packages" in where and n_maps >= 1
    expected, _ = load_predictor(REPO_ROOT / "weights").score_images([read_image(xray)])[0]
    assert predicted == max(expected, key=expected.get)
    assert probabilities == pytest.approx(expected, abs=1e-5)
