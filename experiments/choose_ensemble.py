"""Would an ensemble of trained candidates beat the best one? Validation only, by the selection rule.

Each model folder is scored once on its validation split (the same seed and
share for all, so the same images) clean and under the perturbations of
``core/reports/stress.py``; every combination's averaged probabilities are then ranked
by the rule that ranks training candidates (``pneumocam.reports.stress.selection_score``).
Greedy selection (add the model that helps most, stop when none helps) gives
the ensemble worth building. No test image is read.

    python experiments/choose_ensemble.py weights runs/invariance runs/dropout05 \\
        --train-dir ../shared/data/chest_xray/train
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from pneumocam.runtime import import_tensorflow_quietly

import_tensorflow_quietly()

import numpy as np  # noqa: E402

from pneumocam.images.data import class_indices, labels_of, scan_dataset  # noqa: E402
from pneumocam.model.artifact import read_meta  # noqa: E402
from pneumocam.reports.stress import CLEAN, selection_score, stress_metrics, stress_probabilities  # noqa: E402
from pneumocam.scoring.predictor import load_predictor  # noqa: E402
from pneumocam.training.split import recorded_split, split_by_patient  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--train-dir", type=Path, required=True)
    args = ap.parse_args()
    splits = {recorded_split(read_meta(folder).training) for folder in args.models}
    if len(splits) != 1:
        raise SystemExit("the models were validated on different images (another seed or validation share)")
    samples = scan_dataset(args.train_dir).samples
    _, val = split_by_patient(samples, *splits.pop())
    paths = [s.path for s in val]
    probs: dict[str, dict[str, np.ndarray]] = {}
    for folder in args.models:
        loaded = load_predictor(folder, use_views=False)
        t = time.perf_counter()
        kept, probs[str(folder)], _ = stress_probabilities(loaded, paths)
        classes = loaded.meta.classes
        y = class_indices(labels_of(val, kept), classes)
        print(f"scored {folder} ({time.perf_counter() - t:.0f} s)", flush=True)

    def score(members: tuple[str, ...]) -> tuple[float, dict]:
        avg = {k: np.mean([probs[m][k] for m in members], axis=0) for k in probs[members[0]]}
        metrics = stress_metrics(y, avg, classes)
        return selection_score(metrics), metrics

    print(f"\n{'members':<70}{'clean':>7}{'perturbed':>10}{'rule':>7}{'changed':>9}")
    names = [str(m) for m in args.models]
    for k in range(1, len(names) + 1):
        for members in itertools.combinations(names, k):
            rule, m = score(members)
            print(
                f"{' + '.join(members):<70}{m['perturbations'][CLEAN]['accuracy']:>7.1%}{m['mean_accuracy']:>10.1%}"
                f"{rule:>7.1%}{m['max_changed_encoding']:>9.1%}"
            )
    chosen: tuple[str, ...] = ()
    best = -1.0
    while True:
        options = [(score((*chosen, n))[0], n) for n in names if n not in chosen]
        if not options or max(options)[0] <= best:
            break
        best, name = max(options)
        chosen = (*chosen, name)
    print(f"\ngreedy choice: {' + '.join(chosen)} (rule {best:.1%})")


if __name__ == "__main__":
    main()
