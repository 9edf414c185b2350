"""The Ray engine on the real test split (skipped where ../shared or Ray is absent).

The command itself, on Ray: its report holds every figure ``weights/model.json`` records for the local engine
(row-for-row equality with the local engine is checked on generated folders in test_ray_engine.py), and a gallery
is drawn from it. Its own module, so pytest-xdist can run it beside the other real-data tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers import SHARED_DATA, requires_shared, run
from pneumocam.model.artifact import read_meta
from pneumocam.paths import DEFAULT_WEIGHTS_DIR

ray = pytest.importorskip("ray", reason="Ray is an optional install: pip install -r requirements-ray.txt")

pytestmark = [requires_shared, pytest.mark.shared, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def local_ray():
    # One CPU, one actor: the other pytest worker shares the machine.
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_evaluate_on_ray_gives_the_recorded_figures_and_feeds_a_gallery(local_ray, tmp_path: Path) -> None:
    test_dir = SHARED_DATA / "test"
    on_ray = tmp_path / "ray"
    run("evaluate", test_dir, "--engine", "ray", "--out", on_ray)
    m = json.loads((on_ray / "metrics.json").read_text())
    recorded = read_meta(DEFAULT_WEIGHTS_DIR).metrics["test"]
    assert m["n_images"] == 624 and m["skipped"] == []
    assert m["confusion_matrix"] == recorded["confusion_matrix"]  # every call as the local engine recorded it
    assert m["accuracy"] == pytest.approx(recorded["accuracy"])
    assert m["validity"]["n_flagged"] == recorded["validity"]["n_flagged"]
    assert m["sets"]["coverage"] == pytest.approx(recorded["sets"]["coverage"], abs=0.005)
    assert m["provenance"]["engine"] == {"name": "ray", "version": ray.__version__, "address": "local", "workers": 1}
    with open(on_ray / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 624
    out = tmp_path / "gallery"
    args = ["gallery", test_dir, "--class", "VIRUS", "--outcome", "FN", "--limit", 4, "--out", out]
    result = run(*args, "--predictions", on_ray / "predictions.csv")
    fn = sum(r["true"] == "VIRUS" and r["predicted"] != "VIRUS" for r in rows)
    assert fn > 4 and f"{fn} image(s) with outcome FN" in result.output
    assert [p.name for p in out.glob("page_*.png")] == ["page_001.png"]
