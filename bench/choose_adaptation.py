"""Choose the site-adaptation method on the validation split, never on test.

A validation split drawn from train has no site shift, so we make some: the
validation images under fixed perturbations of ``core/stress.py`` (sharpness,
noise, exposure, equalisation), written as lossless PNGs to a scratch folder.
Each variant is scored as is and after unlabelled adaptation with each method;
the method with the best mean accuracy over the variants (clean included, where
adapting must not hurt) is the one to use.

    python bench/choose_adaptation.py --model weights --train-dir ../shared/data/chest_xray/train
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from core.artifact import load_artifact  # noqa: E402
from core.data import Sample, Scan, scan_dataset  # noqa: E402
from core.evaluation import Protocol, evaluate_scan  # noqa: E402
from core.inference import load_model_input  # noqa: E402
from core.options import ADAPT_METHODS  # noqa: E402
from core.stress import CLEAN, perturb  # noqa: E402
from core.training import recorded_split, split_by_patient  # noqa: E402

SHIFTS = (CLEAN, "blur-3", "noise-8", "gamma-1.6", "equalize")


def perturbed_scan(samples: list[Sample], spec, name: str, root: Path) -> Scan:
    out = []
    for s in samples:
        img = perturb(load_model_input(s.path, spec), name)
        path = root / name / s.label / (s.path.stem + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(path)
        out.append(Sample(path, s.label))
    return Scan(root / name, "three-folder", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("weights"))
    ap.add_argument("--train-dir", type=Path, required=True)
    ap.add_argument("--shifts", default=",".join(SHIFTS))
    ap.add_argument("--json", type=Path, help="Also write the table here.")
    args = ap.parse_args()
    loaded = load_artifact(args.model)
    _, val = split_by_patient(scan_dataset(args.train_dir).samples, *recorded_split(loaded.meta.training))
    protocols = {"as trained": Protocol()} | {m: Protocol(adapt=True, adapt_method=m) for m in ADAPT_METHODS}
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shifts.split(","):
            scan = perturbed_scan(val, loaded.meta.input, name, Path(tmp))
            for label, protocol in protocols.items():
                t = time.perf_counter()
                acc = evaluate_scan(loaded, scan, 32, protocol=protocol).metrics["accuracy"]
                table.setdefault(label, {})[name] = acc
                print(f"{name:<12}{label:<14}{acc:7.1%}  ({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"\n{'protocol':<14}" + "".join(f"{n:>12}" for n in args.shifts.split(",")) + f"{'mean':>8}")
    for label, row in table.items():
        print(f"{label:<14}" + "".join(f"{v:>12.1%}" for v in row.values()) + f"{np.mean(list(row.values())):>8.1%}")
    best = max(ADAPT_METHODS, key=lambda m: np.mean(list(table[m].values())))
    print(f"best adaptation method on shifted validation: {best}")
    if args.json:
        args.json.write_text(json.dumps({"validation_images": len(val), "accuracy": table, "best": best}, indent=2))


if __name__ == "__main__":
    main()
