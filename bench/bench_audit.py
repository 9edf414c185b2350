"""Audit time on this machine (a script, not a test): prints a table.

    python bench/bench_audit.py [--data ../shared/data/chest_xray/test] [--model weights/] [--limit 100]

Times ``pneumocam.explain.audit.audit_images`` with the command's defaults (four CAM methods
explaining the model's score, the default layer sets, ROAD at six shares, the head randomised
for every method and 4 stages for the default), scored as served (the model's input pipeline
and test-time views), on a seeded sample, after the model has loaded.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import print_table

from pneumocam.explain.audit import AuditPlan, audit_images, audit_sample
from pneumocam.images.data import scan_dataset
from pneumocam.paths import REPO_ROOT
from pneumocam.scoring.predictor import load_predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared/data/chest_xray/test")
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "weights")
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()

    paths = audit_sample(scan_dataset(args.data).samples, args.limit)
    predictor = load_predictor(args.model)
    plan = AuditPlan().for_model(predictor.meta.explain.score)
    start = time.perf_counter()
    result = audit_images(predictor, paths, plan)
    seconds = time.perf_counter() - start
    rec = result.recommendation
    print_table(
        [
            ("machine", f"{os.cpu_count()} CPUs"),
            ("images", f"{result.n_images} from {args.data}"),
            ("as served", f"{result.served['input']}; views {', '.join(result.served['views'])}"),
            (
                "methods x scores x layer sets",
                f"{len(plan.methods)} x {len(plan.scores)} x {len(result.layer_sets)}",
            ),
            ("measured (passed sanity)", f"{sum(r.morf_auc is not None for r in result.table)} rows"),
            ("audit time", f"{seconds / 60:.1f} min ({seconds / result.n_images:.2f} s per image)"),
            ("recommended", f"{rec.method} ({rec.score}), {rec.layer_set}"),
            ("border-flagged", f"{len(result.border.flagged)}"),
        ]
    )


if __name__ == "__main__":
    main()
