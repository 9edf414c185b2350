"""Speed and memory figures on this machine (a script, not a test): prints a table.

    python bench/bench.py [--data ../shared/data/chest_xray/test] [--model weights/]

Measures: single-image forward latency; predict + compiled Grad-CAM latency for
1 and 3 layers (and the eager one-layer-at-a-time recipe for reference);
evaluate throughput on a real folder (decoding included) against bare
``model(x)`` on pre-decoded tensors; gallery throughput; peak RSS.
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
from pneumocam.model.resolve import load_model  # noqa: E402
from pneumocam.paths import REPO_ROOT  # noqa: E402
from pneumocam.reports.evaluation import Prediction  # noqa: E402
from pneumocam.reports.gallery import render_pages  # noqa: E402
from pneumocam.scoring.forward import compile_forward, load_model_input, score_files  # noqa: E402


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

    loaded = load_model(args.model)
    model, meta = loaded.model, loaded.meta
    scan = scan_dataset(args.data)
    paths = [s.path for s in scan.samples]
    rows: list[tuple[str, str]] = []

    forward = compile_forward(model)
    x1 = tf.constant(load_model_input(paths[0], meta.input)[None])
    t_fwd = timed(lambda: forward(x1).numpy(), args.repeat)
    rows.append(("forward, 1 image (ms)", f"{t_fwd:.1f}"))

    explainer = Explainer(loaded)
    for n in (1, 3):
        cam = explainer.cam(meta.last_layers(n))
        t = timed(lambda cam=cam: cam(x1.numpy()), args.repeat)
        rows.append((f"predict + Grad-CAM {n} layer(s), compiled (ms)", f"{t:.1f}  ({t / t_fwd:.2f}x forward)"))
    if loaded.validity is not None:
        stats, layers = loaded.validity, meta.last_layers(meta.explain.layers)
        bare_cam = METHODS[explainer.method](model, layers, meta.logits_layer)
        with_score = METHODS[explainer.method](model, layers, meta.logits_layer, stats.layer)
        t_bare = timed(lambda: bare_cam(x1.numpy()), args.repeat)
        t_valid = timed(lambda: stats.scores(with_score(x1.numpy()).summaries), args.repeat)
        rows.append(
            ("predict + default Grad-CAM, without / with validity (ms)", f"{t_bare:.1f} / {t_valid:.1f}  "
             f"(+{t_valid / t_bare - 1:.1%})")
        )  # fmt: skip
    views = loaded.views
    if len(views) > 1:
        layers, summary = meta.last_layers(meta.explain.layers), loaded.validity.layer if loaded.validity else None
        cam_views = METHODS[explainer.method](model, layers, meta.logits_layer, summary, views)
        t = timed(lambda: cam_views(x1.numpy()), args.repeat)
        rows.append(
            (f"predict + default Grad-CAM with the {len(views)} test-time views (ms)",
             f"{t:.1f}  ({t / t_fwd:.2f}x one bare forward; target <= 3x)")
        )  # fmt: skip
    rgb = read_image(paths[0])
    t = timed(lambda: explainer.explain([rgb], n_layers=3), args.repeat)
    rows.append(("explain() 3 layers incl. resize + overlays (ms)", f"{t:.1f}  ({t / t_fwd:.2f}x forward)"))
    t = timed(
        lambda: [eager_gradcam(model, name, meta.logits_layer, x1) for name in meta.last_layers(3)],
        max(3, args.repeat // 4),
        warmup=1,
    )
    rows.append(("eager tutorial recipe, 3 layers (ms)", f"{t:.1f}  ({t / t_fwd:.2f}x forward)"))

    decoded = np.stack([load_model_input(p, meta.input) for p in paths])
    batches = [tf.constant(decoded[i : i + args.batch_size]) for i in range(0, len(decoded), args.batch_size)]
    forward(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        forward(b).numpy()
    bare = len(decoded) / (time.perf_counter() - t0)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for stats in (None, loaded.validity):  # trace both once
        score_files(model, meta.input, paths[: args.batch_size * 2], args.batch_size, validity=stats)
    for _ in range(2):  # alternated, so both see the same machine
        for with_validity in (False, True):
            t0 = time.perf_counter()
            scores = score_files(
                model, meta.input, paths, args.batch_size, validity=loaded.validity if with_validity else None
            )
            rates[with_validity].append(len(scores.paths) / (time.perf_counter() - t0))
    full, plain = max(rates[True]), max(rates[False])
    rows.append((f"bare model(x), pre-decoded, batch {args.batch_size} (img/s)", f"{bare:.1f}"))
    rows.append(
        (f"evaluate scoring incl. decoding and validity, {len(paths)} files (img/s)",
         f"{full:.1f}  ({full / bare:.2f}x bare; without validity {plain:.1f}, {full / plain - 1:+.1%})")
    )  # fmt: skip

    if len(views) > 1:
        score_files(
            model, meta.input, paths[: args.batch_size * 2], args.batch_size, validity=loaded.validity, views=views
        )
        t0 = time.perf_counter()
        scores = score_files(model, meta.input, paths, args.batch_size, validity=loaded.validity, views=views)
        rate = len(scores.paths) / (time.perf_counter() - t0)
        rows.append(
            (f"evaluate scoring with the {len(views)} test-time views (img/s)",
             f"{rate:.1f}  ({rate / (bare / len(views)):.2f}x bare / {len(views)} views; target >= 0.85x)")
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
        ("gallery with --predictions, 3 layers, PNG pages (img/s)", f"{rate:.1f}  ({rate / full:.2f}x evaluate)")
    )
    rows.append(("peak RSS (MiB)", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"))

    print(f"model: {loaded.source}; data: {args.data} ({len(paths)} images); TF threads: default")
    print_table(rows)


if __name__ == "__main__":
    main()
