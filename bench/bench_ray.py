"""Ray Data engine against the local engine on one machine (a script, not a test): prints a table.

    python bench/bench_ray.py [--data ../shared/data/chest_xray/test] [--model weights/] [--repeats 2]

Local: ``Predictor.score`` in this process, after a warm-up pass. Ray: a fresh
local Ray; start-up (Ray, the actor pool, TensorFlow import and model load in
each actor, up to the first batch back) is timed apart from throughput (the
images after the first batch, over the time after it). Target: Ray's
throughput at least 0.6x the local engine's on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import print_table

from pneumocam.images.data import scan_dataset
from pneumocam.options import DEFAULT_BATCH_SIZE
from pneumocam.paths import REPO_ROOT
from pneumocam.scoring.engine import make_engine
from pneumocam.scoring.predictor import load_predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared/data/chest_xray/test")
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "weights")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--repeats", type=int, default=2, help="Passes over the folder per engine (best kept).")
    args = ap.parse_args()

    paths = [s.path for s in scan_dataset(args.data).samples]
    predictor = load_predictor(args.model)
    predictor.score(paths[: args.batch_size], args.batch_size)  # trace once
    local = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        predictor.score(paths, args.batch_size)
        local.append(len(paths) / (time.perf_counter() - t))
    local_rate = max(local)

    t0 = time.perf_counter()
    engine = make_engine("ray")
    connect_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeats):
        stamps: list[tuple[float, int]] = []
        t = time.perf_counter()
        engine.score(predictor, paths, args.batch_size, lambda n, s=stamps: s.append((time.perf_counter(), n)))
        end = time.perf_counter()
        first_t, first_n = stamps[0]
        runs.append((first_t - t, (len(paths) - first_n) / (end - first_t), end - t))
    first_s, _, total_s = runs[0]
    ray_rate = max(r[1] for r in runs)
    print_table(
        [
            ("machine", f"{os.cpu_count()} CPUs; {len(paths)} images from {args.data}"),
            ("local engine", f"{local_rate:.1f} img/s (best of {args.repeats})"),
            ("ray: start a local Ray", f"{connect_s:.1f} s"),
            ("ray: start-up to first batch", f"{first_s:.1f} s (actor pool, TF import, model load, first batch)"),
            ("ray: whole first run", f"{total_s:.1f} s"),
            ("ray: throughput after start-up", f"{ray_rate:.1f} img/s with {engine.info()['workers']} worker(s)"),
            ("ray / local", f"{ray_rate / local_rate:.2f}x (target >= 0.6x)"),
        ]
    )


if __name__ == "__main__":
    main()
