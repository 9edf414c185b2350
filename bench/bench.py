"""Speed and memory figures on this machine (a script, not a test): prints a table.

    python bench/bench.py [--data ../shared/data/chest_xray/test] [--model weights/]

Measures: single-image forward latency; the input pipeline; predict + compiled Grad-CAM
latency for 1 and 3 layers, and as served (views, validity; the eager one-layer-at-a-time
recipe for reference); evaluate throughput on a real folder (decoding and the input
pipeline included) against bare ``model(x)`` on pre-decoded tensors; gallery throughput;
peak RSS. Everything goes through the model's Predictor, as the commands do.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from common import print_table

from pneumocam.runtime import import_tensorflow_quietly

import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pneumocam.explain.explainer import Explainer  # noqa: E402
from pneumocam.explain.gradcam import METHODS  # noqa: E402
from pneumocam.images.data import scan_dataset  # noqa: E402
from pneumocam.images.readers import read_image  # noqa: E402
from pneumocam.paths import REPO_ROOT  # noqa: E402
from pneumocam.reports.evaluation import Prediction  # noqa: E402
from pneumocam.reports.gallery import render_pages  # noqa: E402
from pneumocam.scoring.predictor import Predictor, load_predictor  # noqa: E402


def timed(fn, repeat: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def eager_gradcam(model, layer: str, logits_layer: str, x: np.ndarray) -> np.ndarray:
    """The Keras tutorial's recipe: an eager tape per layer."""
    import keras

    grad_model = keras.Model(model.inputs[0], [model.get_layer(layer).output, model.get_layer(logits_layer).output])
    with tf.GradientTape() as tape:
        conv, logits = grad_model(x)
        score = logits[:, int(tf.argmax(logits[0]))]
    grads = tape.gradient(score, conv)
    return tf.nn.relu(tf.reduce_sum(conv * tf.reduce_mean(grads, axis=(1, 2), keepdims=True), -1)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray" / "test")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    served = load_predictor(args.model)  # its views, validity and input pipeline, as every entry point serves it
    alone = Predictor.of(served.loaded, use_views=False)
    model, meta, views = served.model, served.meta, served.views
    scan = scan_dataset(args.data)
    paths = [s.path for s in scan.samples]
    rows: list[tuple[str, str]] = []

    forward = alone.forward()
    rgb = read_image(paths[0])
    x1 = tf.constant(served.model_input(rgb)[None])
    t_fwd = timed(lambda: forward(x1).numpy(), args.repeat)
    rows.append(("forward, 1 image (ms)", f"{t_fwd:.1f}"))
    t = timed(lambda: served.model_input(rgb), args.repeat)
    rows.append((f"input pipeline of one file's pixels: {meta.input.describe()} (ms)", f"{t:.1f}"))

    plain = Explainer(alone)
    for n in (1, 3):
        cam = plain.cam(meta.last_layers(n))
        t = timed(lambda cam=cam: cam(x1.numpy()), args.repeat)
        rows.append(
            (f"predict + Grad-CAM {n} layer(s), compiled, no views (ms)", f"{t:.1f}  ({t / t_fwd:.2f}x forward)")
        )
    explainer = Explainer(served)
    default = meta.shown_layers()
    if served.validity_stats is not None:
        bare_cam = METHODS[plain.method].serving(alone.derived(validity=None), default)
        with_score = plain.cam(default)
        t_bare = timed(lambda: bare_cam(x1.numpy()), args.repeat)
        t_valid = timed(lambda: served.validity_stats.scores(with_score(x1.numpy()).summaries), args.repeat)
        rows.append(
            ("predict + default Grad-CAM, without / with validity (ms)", f"{t_bare:.1f} / {t_valid:.1f}  "
             f"(+{t_valid / t_bare - 1:.1%})")
        )  # fmt: skip
    cam_served = explainer.cam(default)
    t = timed(lambda: cam_served(x1.numpy()), args.repeat)
    rows.append(
        (f"predict + default Grad-CAM as served, {len(views)} view(s) (ms)",
         f"{t:.1f}  ({t / t_fwd:.2f}x one bare forward; target <= 3x)")
    )  # fmt: skip
    t = timed(lambda: explainer.explain([rgb]), args.repeat)
    rows.append(
        ("explain() as served, incl. the input pipeline and overlays (ms)", f"{t:.1f}  ({t / t_fwd:.2f}x forward)")
    )
    t = timed(
        lambda: [eager_gradcam(model, name, meta.logits_layer, x1) for name in meta.last_layers(3)],
        max(3, args.repeat // 4),
        warmup=1,
    )
    rows.append(("eager tutorial recipe, 3 layers (ms)", f"{t:.1f}  ({t / t_fwd:.2f}x forward)"))

    decoded = np.stack([served.model_input(read_image(p)) for p in paths])
    batches = [tf.constant(decoded[i : i + args.batch_size]) for i in range(0, len(decoded), args.batch_size)]
    forward(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        forward(b).numpy()
    bare = len(decoded) / (time.perf_counter() - t0)
    rates: dict[str, list[float]] = {"alone": [], "no validity": [], "served": []}
    scorers = {"alone": alone, "no validity": alone.derived(validity=None), "served": served}
    for scorer in scorers.values():  # trace each once
        scorer.score(paths[: args.batch_size * 2], args.batch_size)
    for _ in range(2):  # alternated, so all see the same machine
        for name, scorer in scorers.items():
            t0 = time.perf_counter()
            scores = scorer.score(paths, args.batch_size)
            rates[name].append(len(scores.paths) / (time.perf_counter() - t0))
    full, plain_rate, served_rate = (max(rates[k]) for k in ("alone", "no validity", "served"))
    rows.append((f"bare model(x), pre-decoded, batch {args.batch_size} (img/s)", f"{bare:.1f}"))
    rows.append(
        (f"evaluate scoring incl. decoding, the input pipeline and validity, {len(paths)} files, no views (img/s)",
         f"{full:.1f}  ({full / bare:.2f}x bare; without validity {plain_rate:.1f}, {full / plain_rate - 1:+.1%})")
    )  # fmt: skip
    rows.append(
        (f"evaluate scoring as served, {len(views)} view(s) (img/s)",
         f"{served_rate:.1f}  ({served_rate / (bare / len(views)):.2f}x bare / {len(views)} views; target >= 0.85x)")
    )  # fmt: skip

    preds = [
        Prediction(
            str(p.relative_to(scan.root)), "NORMAL", meta.classes[int(np.argmax(pr))], dict(zip(meta.classes, pr))
        )
        for p, pr in zip(scores.paths[:24], scores.probabilities[:24])
    ]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        render_pages(explainer, preds, scan.root, Path(tmp), n_layers=3, per_page=6)
        rate = len(preds) / (time.perf_counter() - t0)
    rows.append(
        ("gallery with --predictions, 3 layers, PNG pages (img/s)", f"{rate:.1f}  ({rate / served_rate:.2f}x evaluate)")
    )
    rows.append(("peak RSS (MiB)", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"))

    print(f"model: {served.source}; data: {args.data} ({len(paths)} images); TF threads: default")
    print_table(rows)


if __name__ == "__main__":
    main()
