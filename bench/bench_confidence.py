"""What the prediction sets and the richer validity cost (a script, not a test): prints a table.

    python bench/bench_confidence.py --baseline MODEL_DIR [--model weights] [--data ../shared/data/chest_xray/test]

``--baseline`` is the same model without them (a copy of the folder from before ``fit-conformal`` and
``fit-validity --proxy``). Both are timed in turns, twice each, so a machine that slows down hurts both alike:
``predict``'s path for one file (decode, the pipeline, the served forward with the validity summary, the set) and
``evaluate``'s scoring of a whole folder (the same, batched), plus the whole ``evaluate_scan`` (metrics,
intervals, sets and risk-coverage included).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import print_table

from pneumocam.runtime import import_tensorflow_quietly

import_tensorflow_quietly()

from pneumocam.images.data import scan_dataset  # noqa: E402
from pneumocam.paths import REPO_ROOT  # noqa: E402
from pneumocam.reports.evaluation import evaluate_scan  # noqa: E402
from pneumocam.scoring.predictor import load_predictor  # noqa: E402


def predict_ms(predictor, path: Path, repeat: int = 30) -> float:
    """One file as ``predict`` scores it: the median of ``repeat`` calls, after a warm-up."""

    def once() -> None:
        scores = predictor.score([path])
        probs = dict(zip(predictor.classes, scores.probabilities[0]))
        predictor.prediction_set(probs)
        scores.verdicts()

    once()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "weights")
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray" / "test")
    args = ap.parse_args()
    scan = scan_dataset(args.data)
    paths = [s.path for s in scan.samples]
    models = {"without": load_predictor(args.baseline), "with": load_predictor(args.model)}
    figures: dict[str, dict[str, list[float]]] = {k: {"predict": [], "score": [], "evaluate": []} for k in models}
    for predictor in models.values():
        predictor.score(paths[:64])  # trace both before timing
    for _ in range(2):
        for name, predictor in models.items():
            figures[name]["predict"].append(predict_ms(predictor, paths[0]))
            start = time.perf_counter()
            predictor.score(paths)
            figures[name]["score"].append(len(paths) / (time.perf_counter() - start))
            start = time.perf_counter()
            evaluate_scan(predictor, scan)
            figures[name]["evaluate"].append(len(paths) / (time.perf_counter() - start))
    rows = []
    for key, unit, better in (("predict", "ms", min), ("score", "img/s", max), ("evaluate", "img/s", max)):
        base, new = better(figures["without"][key]), better(figures["with"][key])
        change = (new / base - 1) if unit == "ms" else (base / new - 1)
        rows.append((f"{key} ({unit}), without / with sets and the discriminator", f"{base:.1f} / {new:.1f}"))
        rows.append((f"{key}: time added", f"{100 * change:+.1f} %"))
    print_table(rows)


if __name__ == "__main__":
    main()
