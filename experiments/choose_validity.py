"""Which validity score (a script, not a test): candidates judged on validation and on images that are not X-rays.

    python experiments/choose_validity.py --train ../shared/data/chest_xray/train --model weights [--out runs/validity]

Candidates: class-conditional Mahalanobis distance (shared Ledoit-Wolf covariance) on the pooled features, on the
spatial mean or spread of ``out_relu`` and of shallower layers, pairs of them (max of the ratios to each one's own
threshold), and the maximum softmax probability. Each threshold accepts 95 % of the clean validation split.

The rule, fixed before the first run: a candidate passes if it flags at least 95 % of the proxy set (the files our
dependencies ship, and validation X-rays inverted, rotated, cropped to a corner, tiled; text pages) with an AUROC of
at least 0.99; among those, the highest mean acceptance of the validation X-rays under the 17 stress
perturbations wins. Also printed: the worst acceptance over the re-encoding perturbations. The test split is not
read. Results: docs/validity.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pneumocam.runtime import import_tensorflow_quietly

import_tensorflow_quietly()

import cv2  # noqa: E402
import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pneumocam.images.data import class_indices, labels_of, scan_dataset  # noqa: E402
from pneumocam.images.readers import read_image  # noqa: E402
from pneumocam.model import validity  # noqa: E402
from pneumocam.model.network import FEATURES_LAYER  # noqa: E402
from pneumocam.reports.stress import ENCODING, PERTURBATIONS, perturb  # noqa: E402
from pneumocam.scoring.predictor import Predictor, load_predictor  # noqa: E402
from pneumocam.training.split import recorded_split, split_by_patient  # noqa: E402

LAYERS = ("block_6_expand_relu", "block_10_expand_relu", "block_13_expand_relu", "block_16_expand_relu", "out_relu")
PAIRS = tuple(("pooled", f"{how}:{layer}") for layer in LAYERS[:-1] for how in ("mean", "std"))


def summaries_model(model: keras.Model, layers: tuple[str, ...] = LAYERS) -> tuple[keras.Model, list[str]]:
    """Probabilities, pooled features and each layer's spatial mean and spread, from one pass."""
    names, outs = ["probabilities", "pooled"], [model.output, model.get_layer(FEATURES_LAYER).output]
    for layer in layers:
        act = model.get_layer(layer).output
        names += [f"mean:{layer}", f"std:{layer}"]
        outs += [keras.ops.mean(act, axis=(1, 2)), keras.ops.std(act, axis=(1, 2))]
    return keras.Model(model.inputs[0], outs), names


def altered(folder: Path, sources: list[Path]) -> None:
    """Validation X-rays made into what is not one: inverted, turned, a corner, tiled; plus text pages."""
    for src in sources:
        g = np.asarray(Image.open(src).convert("L"))
        h, w = g.shape
        made = {
            "inverted": 255 - g,
            "rot90": np.rot90(g),
            "rot270": np.rot90(g, 3),
            "corner": g[: h // 3, : w // 3],
            "tiled": np.tile(cv2.resize(g, (w // 2, h // 2)), (2, 2)),
        }
        for kind, img in made.items():
            (folder / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(img)).save(folder / kind / f"{src.stem}.png")
    (folder / "page").mkdir(parents=True, exist_ok=True)
    for i in range(5):
        page = np.full((224, 224), 245, np.uint8)
        for k in range(8):
            cv2.putText(page, f"Patient report line {k}", (10, 20 + 25 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 20, 1)
        Image.fromarray(page).save(folder / "page" / f"page_{i}.png")


def shipped(folder: Path) -> None:
    """What our dependencies ship: matplotlib's samples, pydicom's test files, scikit-image's data (if installed)."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    files = [sample / n for n in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png")]
    files += sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))
    try:
        import skimage

        files += sorted(p for p in (Path(skimage.__file__).parent / "data").iterdir() if p.suffix in (".png", ".jpg"))
    except ImportError:
        pass
    for f in files:
        shutil.copy(f, folder / f"{f.parent.name}_{f.name}")


def measure(probe: keras.Model, names: list[str], predictor: Predictor, paths) -> tuple[list[Path], dict]:
    forward = tf.function(lambda x: probe(x, training=False))
    kept, outs = [], []
    for batch in predictor.batches(paths, 64):
        if len(batch.images):
            outs.append([o.numpy() for o in forward(batch.images)])
            kept += batch.paths
        for p, why in batch.skipped:
            print("skipped", p, why)
    return kept, {n: np.concatenate(a) for n, a in zip(names, zip(*outs))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, required=True, help="the folder the model was trained on")
    ap.add_argument("--model", type=Path, default=Path("weights"))
    ap.add_argument("--out", type=Path, default=Path("runs/validity"))
    ap.add_argument("--altered", type=int, default=60, help="validation X-rays altered per kind")
    ap.add_argument(
        "--limit", type=int, default=None, help="at most this many training and validation images (a quick check)"
    )
    args = ap.parse_args()

    loaded = load_predictor(args.model)
    classes = loaded.meta.classes
    train, val = split_by_patient(scan_dataset(args.train).samples, *recorded_split(loaded.meta.training))
    train, val = train[: args.limit], val[: args.limit]
    proxy = args.out / "proxy"
    shutil.rmtree(proxy, ignore_errors=True)
    pick = np.random.default_rng(0).choice(len(val), min(args.altered, len(val)), replace=False)
    altered(proxy / "altered", [val[i].path for i in pick])
    shipped(proxy / "shipped")
    probe, names = summaries_model(loaded.model)
    kept, tr = measure(probe, names, loaded, [s.path for s in train])
    y = class_indices(labels_of(train, kept), classes)
    _, va = measure(probe, names, loaded, [s.path for s in val])
    _, ood = measure(probe, names, loaded, sorted(p for p in proxy.rglob("*") if p.is_file()))
    clean = np.stack([loaded.model_input(read_image(s.path)) for s in val])
    forward = tf.function(lambda x: probe(x, training=False))
    shifted = {}
    for name in PERTURBATIONS:
        outs = [
            [o.numpy() for o in forward(np.stack([perturb(c, name) for c in clean[i : i + 64]]))]
            for i in range(0, len(clean), 64)
        ]
        shifted[name] = {n: np.concatenate(a) for n, a in zip(names, zip(*outs))}
        print(f"features under {name}", flush=True)

    scores: dict[str, dict[str, np.ndarray]] = {}
    for key in names[1:]:
        stats = validity.fit(tr[key], y, va[key], key)
        scores[key] = {"val": stats.scores(va[key]), "ood": stats.scores(ood[key])}
        scores[key] |= {p: stats.scores(shifted[p][key]) for p in PERTURBATIONS}
    for pair in PAIRS:
        scores["max:" + "+".join(pair)] = {k: np.maximum(*(scores[c][k] for c in pair)) for k in scores[pair[0]]}
    msp = {"val": -va["probabilities"].max(1), "ood": -ood["probabilities"].max(1)}
    scores["max softmax"] = msp | {p: -shifted[p]["probabilities"].max(1) for p in PERTURBATIONS}

    rows = []
    for name, s in scores.items():
        thr = np.quantile(s["val"], validity.VALIDITY_ACCEPT, method="higher")
        flagged = float(np.mean(s["ood"] > thr))
        auc = float(roc_auc_score(np.r_[np.zeros(len(s["val"])), np.ones(len(s["ood"]))], np.r_[s["val"], s["ood"]]))
        accepted = {p: float(np.mean(s[p] <= thr)) for p in PERTURBATIONS}
        rows.append(
            {
                "candidate": name,
                "passes": flagged >= 0.95 and auc >= 0.99,
                "proxy_flagged": flagged,
                "auroc": auc,
                "shifted_accepted": float(np.mean(list(accepted.values()))),
                "worst_encoding": min(accepted[p] for p in ENCODING),
            }
        )
    rows.sort(key=lambda r: (not r["passes"], -r["shifted_accepted"]))
    for r in rows:
        print(
            f"{'PASS' if r['passes'] else 'fail'} {r['candidate']:44s} flagged {r['proxy_flagged']:.3f} "
            f"AUROC {r['auroc']:.4f} shifted accepted {r['shifted_accepted']:.3f} "
            f"worst re-encoding {r['worst_encoding']:.3f}"
        )
    print(f"winner: {rows[0]['candidate']}")
    (args.out / "choose_validity.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
