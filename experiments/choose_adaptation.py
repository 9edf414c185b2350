"""Choose the site-adaptation method on the validation split, never on test.

A validation split drawn from train has no site shift, so we make some: the
validation images under fixed perturbations of ``core/reports/stress.py`` (sharpness,
noise, exposure, equalisation), written as lossless PNGs to a scratch folder.
Each variant is scored as is and after unlabelled adaptation with each
candidate; the candidate with the best mean accuracy over the variants (clean
included, where adapting must not hurt) is the one to use.

Candidates: the re-standardisations of ``pneumocam.site.adaptation`` (``bn+features``,
``bn``, ``features``), and two back-propagation-free methods that work on the
outputs, each alone and on top of ``bn+features``:

* T3A (Iwasawa and Matsuo 2021): per class, the ``K`` lowest-entropy site
  features called that class (and the trained class weights) form prototypes
  that replace the last layer; on a whole folder at once, so no order enters.
* LAME (Boudiaf et al. 2022, ``pneumocam.site.adaptation.lame``): the probabilities are
  pulled towards those of each image's nearest neighbours (5-NN on the pooled
  features) by a Laplacian-regularised maximum likelihood; it needs the folder
  at prediction time and cannot be folded into a model, so it serves
  ``evaluate --adapt`` (and the ``adapt`` command keeps the weights part).

    python experiments/choose_adaptation.py --model weights --train-dir ../shared/data/chest_xray/train
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pneumocam.runtime import import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pneumocam.images.data import Sample, Scan, class_indices, labels_of, scan_dataset  # noqa: E402
from pneumocam.images.readers import read_image  # noqa: E402
from pneumocam.model.network import FEATURES_LAYER  # noqa: E402
from pneumocam.options import ADAPT_METHODS  # noqa: E402
from pneumocam.reports.stress import CLEAN, perturb  # noqa: E402
from pneumocam.scoring.predictor import Predictor, load_predictor  # noqa: E402
from pneumocam.site.adaptation import adapted_site  # noqa: E402
from pneumocam.site.lame import lame  # noqa: E402
from pneumocam.training.split import recorded_split, split_by_patient  # noqa: E402

SHIFTS = (CLEAN, "blur-3", "noise-8", "gamma-1.6", "equalize")
T3A_FILTERS = (20, 100)


def perturbed_scan(samples: list[Sample], predictor: Predictor, name: str, root: Path) -> Scan:
    out = []
    for s in samples:
        img = perturb(predictor.model_input(read_image(s.path)), name)
        path = root / name / s.label / (s.path.stem + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(path)
        out.append(Sample(path, s.label))
    return Scan(root / name, "three-folder", out)


def outputs(predictor: Predictor, paths: list[Path]) -> tuple[list[Path], dict[str, np.ndarray]]:
    """Probabilities, the last layer's input and the pooled features of every image, in one pass."""
    model, logits_layer = predictor.model, predictor.meta.logits_layer
    probe = keras.Model(
        model.inputs[0], [model.output, model.get_layer(logits_layer).input, model.get_layer(FEATURES_LAYER).output]
    )
    kept, parts = [], []
    for batch in predictor.batches(paths, 32):
        parts.append([o.numpy() for o in probe(batch.images, training=False)])
        kept += batch.paths
    p, h, f = (np.concatenate(a) for a in zip(*parts))
    return kept, {"p": p, "h": h, "f": f}


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(p * np.log(np.clip(p, 1e-12, 1)), axis=1)


def _normalise(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def t3a(out: dict[str, np.ndarray], kernel: np.ndarray, bias: np.ndarray, filter_k: int) -> np.ndarray:
    """T3A on a whole folder: prototypes from the trained weights plus the K most confident features per class."""
    k = kernel.shape[1]
    warm = kernel.T  # (k, d): the trained class weights are the first supports
    warm_p = _softmax(warm @ kernel + bias)
    supports = np.concatenate([warm, out["h"]])
    labels = np.concatenate([warm_p.argmax(1), out["p"].argmax(1)])
    ent = np.concatenate([_entropy(warm_p), _entropy(out["p"])])
    protos = []
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(ent[idx])[:filter_k]]
        protos.append(_normalise(supports[idx], 1).sum(axis=0))
    weights = _normalise(np.stack(protos, axis=1), 0)  # (d, k)
    return _softmax(out["h"] @ weights)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("weights"))
    ap.add_argument("--train-dir", type=Path, required=True)
    ap.add_argument("--shifts", default=",".join(SHIFTS))
    ap.add_argument("--json", type=Path, help="Also write the table here.")
    args = ap.parse_args()
    loaded = load_predictor(args.model, use_views=False)  # the choice was made on the image alone
    meta = loaded.meta
    _, val = split_by_patient(scan_dataset(args.train_dir).samples, *recorded_split(meta.training))
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shifts.split(","):
            scan = perturbed_scan(val, loaded, name, Path(tmp))
            paths = [s.path for s in scan.samples]
            for base in ("as trained", *ADAPT_METHODS):
                t = time.perf_counter()
                site = loaded if base == "as trained" else adapted_site(loaded, paths, base)[0]
                model = site.model
                kept, out = outputs(site, paths)
                y = class_indices(labels_of(scan.samples, kept), meta.classes)
                kernel, bias = (np.array(w) for w in model.get_layer(meta.logits_layer).get_weights())
                results = {base: out["p"]}
                if base in ("as trained", "bn+features"):
                    prefix = "" if base == "as trained" else f"{base}+"
                    for k in T3A_FILTERS:
                        results[f"{prefix}t3a-{k}"] = t3a(out, kernel, bias, k)
                    results[f"{prefix}lame"] = lame(out["p"], out["f"])
                for label, p in results.items():
                    acc = float(np.mean(p.argmax(1) == y))
                    table.setdefault(label, {})[name] = acc
                    print(f"{name:<12}{label:<24}{acc:7.1%}  ({time.perf_counter() - t:.0f} s)", flush=True)
    names = args.shifts.split(",")
    print(f"\n{'candidate':<24}" + "".join(f"{n:>12}" for n in names) + f"{'mean':>8}")
    for label, row in sorted(table.items(), key=lambda kv: -np.mean(list(kv[1].values()))):
        print(f"{label:<24}" + "".join(f"{row[n]:>12.1%}" for n in names) + f"{np.mean(list(row.values())):>8.1%}")
    best = max((m for m in table if m != "as trained"), key=lambda m: np.mean(list(table[m].values())))
    print(f"best adaptation method on shifted validation: {best}")
    if args.json:
        args.json.write_text(json.dumps({"validation_images": len(val), "accuracy": table, "best": best}, indent=2))


if __name__ == "__main__":
    main()
