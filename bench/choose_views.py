"""Which test-time views (a script, not a test): every subset judged on the validation split by the stability rule.

    python bench/choose_views.py MODEL [MODEL ...] --train ../shared/data/chest_xray/train [--record]

Candidates, fixed before the first run: ``identity`` plus any subset of ``jpeg-75`` (the data set's own quality),
``blur-0.7``, ``zoom-1.1`` (8 sets, at most 4 views). For each model, every validation image is scored once
per view under each stress perturbation (clean, and the 18 of ``core.stress``); a set's call is the mean of its
views' probabilities.

The rule (``core.stress.stability_rank``): the sets whose every re-encoding, resampling and "original"
perturbation changes at most 3 % of the calls, ranked by the mean of clean accuracy and the mean accuracy under the
perturbations; if none is stable, the fewest calls changed. Ties go to fewer views. Several models: the rule ranks
every (model, views) pair, so it also judges training candidates. The test split is not read.

``--record`` writes each model's best set into its ``model.json`` (``predict``), with the table, and the chosen
set's validation stress as ``metrics.validation_shift`` (the image alone as ``validation_shift:no-views``).
Per-view probabilities are cached in ``--cache`` (one npz per model).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.artifact import META_FILE, load_artifact, read_meta  # noqa: E402
from core.atomic import write_json  # noqa: E402
from core.config import PredictDefaults  # noqa: E402
from core.data import class_indices, labels_of, scan_dataset  # noqa: E402
from core.inference import image_batches  # noqa: E402
from core.stress import CLEAN, ENCODING, PERTURBATIONS, perturb, selection_score, stability_rank, stress_metrics  # noqa: E402
from core.training import recorded_split, split_by_patient  # noqa: E402
from core.views import IDENTITY, make_views  # noqa: E402

OPTIONAL = ("jpeg-75", "blur-0.7", "zoom-1.1")
CANDIDATES = [(IDENTITY, *c) for k in range(len(OPTIONAL) + 1) for c in itertools.combinations(OPTIONAL, k)]
UNION = (IDENTITY, *OPTIONAL)
NAMES = (CLEAN, *PERTURBATIONS)


def per_view_probabilities(model_dir: Path, train_dir: Path, cache: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``{perturbation: (views, n, classes)}`` over the validation split, and the labels; cached."""
    loaded = load_artifact(model_dir)
    key = hashlib.sha256(f"{loaded.meta.weights_sha256}{UNION}{NAMES}".encode()).hexdigest()[:16]
    path = cache / f"views-{key}.npz"
    _, val = split_by_patient(scan_dataset(train_dir).samples, *recorded_split(loaded.meta.training))
    if path.is_file():
        data = np.load(path)
        return {n: data[n] for n in NAMES}, data["y"]
    model, spec = loaded.model, loaded.meta.input
    n_views = len(UNION)
    forward = tf.function(
        lambda x: tf.reshape(model(make_views(x, UNION), training=False), [n_views, tf.shape(x)[0], -1]),
        input_signature=[tf.TensorSpec([None, *spec.shape], tf.float32)],
    )
    out: dict[str, list[np.ndarray]] = {n: [] for n in NAMES}
    kept = []
    done = 0
    for batch in image_batches([s.path for s in val], spec, 32):
        kept += batch.paths
        for name in NAMES:
            out[name].append(forward(np.stack([perturb(im, name) for im in batch.images])).numpy())
        done += batch.size
        print(f"\r{model_dir.name}: {done}/{len(val)} validation images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    probs = {n: np.concatenate(v, axis=1) for n, v in out.items()}
    y = class_indices(labels_of(val, kept), loaded.meta.classes)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, y=y, **probs)
    return probs, y


def judge(probs: dict[str, np.ndarray], y: np.ndarray, classes: list[str], views: tuple[str, ...]) -> dict:
    """The validation stress of one view set: each perturbation's call is the mean over the set's views."""
    idx = [UNION.index(v) for v in views]
    return stress_metrics(y, {n: p[idx].mean(axis=0) for n, p in probs.items()}, classes)


def row(model: str, views: tuple[str, ...], shift: dict) -> dict:
    rows = shift["perturbations"]
    return {
        "model": model,
        "views": list(views),
        "stable": stability_rank(shift)[0],
        "score": selection_score(shift),
        "clean_accuracy": rows[CLEAN]["accuracy"],
        "mean_accuracy": shift["mean_accuracy"],
        "max_changed": shift["max_changed_encoding"],
        "changed": {k: rows[k]["changed"] for k in ENCODING},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("runs/views"))
    parser.add_argument("--record", action="store_true", help="Write each model's best set into its model.json.")
    parser.add_argument("--out", type=Path, help="Write the whole table here as JSON.")
    args = parser.parse_args()
    table, best, judge_plain = [], {}, {}
    for model_dir in args.models:
        classes = read_meta(model_dir).classes
        probs, y = per_view_probabilities(model_dir, args.train, args.cache)
        shifts = {views: judge(probs, y, classes, views) for views in CANDIDATES}
        ranked = sorted(CANDIDATES, key=lambda v: (*stability_rank(shifts[v]), -len(v)), reverse=True)
        best[model_dir] = (ranked[0], shifts[ranked[0]], [row(model_dir.name, v, shifts[v]) for v in CANDIDATES])
        judge_plain[model_dir] = shifts[(IDENTITY,)]
        table += best[model_dir][2]
    table.sort(key=lambda r: (r["stable"], r["score"] if r["stable"] else -r["max_changed"]), reverse=True)
    print(f"{'model':<16}{'views':<42}{'stable':>7}{'score':>8}{'clean':>8}{'mean':>8}{'changed':>9}  worst")
    for r in table:
        worst = max(r["changed"], key=r["changed"].get)
        print(
            f"{r['model']:<16}{'+'.join(r['views']):<42}{str(r['stable']):>7}{r['score']:>8.1%}"
            f"{r['clean_accuracy']:>8.1%}{r['mean_accuracy']:>8.1%}{r['max_changed']:>9.1%}  {worst}"
        )
    if args.out:
        write_json(args.out, table)
    if args.record:
        for model_dir, (views, shift, rows) in best.items():
            meta = read_meta(model_dir)
            meta.metrics["validation_shift:no-views"] = judge_plain[model_dir]
            meta.metrics["validation_shift"] = shift
            rule = (
                "the sets whose every re-encoding, resampling and 'original' perturbation changes at most 3 % of "
                "the validation calls, ranked by the mean of clean accuracy and the mean accuracy under the stress "
                "perturbations (none stable: the fewest calls changed); ties to fewer views"
            )
            meta.predict = PredictDefaults(
                views=views,
                choice={"script": "bench/choose_views.py", "split": "validation", "rule": rule, "table": rows},
            )
            write_json(Path(model_dir) / META_FILE, meta.to_dict())
            print(f"{model_dir}: views {', '.join(views)} recorded")


if __name__ == "__main__":
    main()
