"""``train``: the two-stage recipe on cached activations; every default comes from the recipe dataclasses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.common import command, mlflow_option, model_out_option, progress
from core.config import POOLINGS, ArchConfig, InputSpec, TrainConfig
from core.options import AUGMENTATIONS
from core.paths import ENV_BACKBONE_WEIGHTS
from core.runtime import import_tensorflow_quietly

T, A, I = TrainConfig, ArchConfig, InputSpec  # noqa: E741  (the defaults shown in --help)


@command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_out_option()
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT folder.")
@click.option(
    "--backbone-weights",
    envvar=ENV_BACKBONE_WEIGHTS,
    default="imagenet",
    show_default=True,
    help="'imagenet' (Keras download) or a local MobileNetV2 no-top .h5 file [env: PNEUMOCAM_BACKBONE_WEIGHTS].",
)
@click.option(
    "--epochs", default=T.epochs, show_default=True, type=click.IntRange(1), help="Baseline: at most N epochs."
)
@click.option(
    "--batch-size", default=T.batch_size, show_default=True, type=click.IntRange(1), help="Baseline batch size."
)
@click.option(
    "--lr", "learning_rate", default=T.learning_rate, show_default=True, type=click.FloatRange(min=0, min_open=True)
)
@click.option(
    "--patience", default=T.patience, show_default=True, type=click.IntRange(1), help="Baseline early stopping."
)
@click.option(
    "--fine-tune-from",
    default=str(T.fine_tune_from),
    show_default=True,
    help="Unfreeze the backbone from this layer index (as in a standalone MobileNetV2); 'none' skips stage 2.",
)
@click.option("--fine-tune-epochs", default=T.fine_tune_epochs, show_default=True, type=click.IntRange(1))
@click.option("--fine-tune-batch-size", default=T.fine_tune_batch_size, show_default=True, type=click.IntRange(1))
@click.option(
    "--fine-tune-lr-divisor",
    default=T.fine_tune_lr_divisor,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Stage-2 lr = lr / this.",
)
@click.option(
    "--fine-tune-patience", type=click.IntRange(1), help="Stage-2 early stopping [default: none, all epochs run]."
)
@click.option(
    "--image-size", default=I.height, show_default=True, type=click.IntRange(32, 1024), help="Model input size."
)
@click.option(
    "--width-multiplier",
    "alpha",
    default=str(A.alpha),
    show_default=True,
    type=click.Choice(["0.35", "0.5", "0.75", "1.0", "1.3", "1.4"]),
    help="MobileNetV2 alpha (must match --backbone-weights).",
)
@click.option("--pooling", type=click.Choice(POOLINGS), default=A.pooling, show_default=True)
@click.option("--dropout", default=A.dropout, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option(
    "--dense",
    "dense_units",
    default=",".join(map(str, A.dense_units)),
    show_default=True,
    help="Hidden ReLU layer sizes, e.g. 256,64.",
)
@click.option(
    "--rotation", default=A.rotation, show_default=True, type=click.FloatRange(0, 0.5), help="RandomRotation factor."
)
@click.option(
    "--standardize/--no-standardize",
    default=A.standardize,
    show_default=True,
    help="Give every image the same mean and spread inside the model (exposure and contrast differ by site).",
)
@click.option(
    "--input-blur",
    "blur",
    default=A.blur,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Low-pass every input with a Gaussian of this sigma (pixels) inside the model: fine texture and JPEG "
    "artefacts differ by scanner and encoder. 0: none.",
)
@click.option(
    "--cached-views",
    "views",
    default=T.views,
    show_default=True,
    type=click.IntRange(1),
    help="Augmented training views cached per image (view 0 is the image itself).",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENTATIONS),
    default=T.augment,
    show_default=True,
    help="seed: flips and rotations; acquisition: also zoom, resolution, blur, gamma, contrast and noise; "
    "invariance: also resampling filters, scale and JPEG quality.",
)
@click.option(
    "--wise-ft",
    default=",".join(map(str, T.wise_ft)),
    show_default=True,
    help="Weight-space ensemble (WiSE-FT): keep this share of the fine-tuning, the rest from the weights before "
    "it (one model, no extra cost). Several, e.g. 0.5,0.75,1: the validation rule picks one.",
)
@click.option(
    "--consistency",
    default=T.consistency,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Fine-tuning: weight of the Jensen-Shannon consistency among each image's clean and two augmented views "
    "(AugMix); 0: plain cross-entropy.",
)
@click.option("--val-fraction", default=T.val_fraction, show_default=True, type=click.FloatRange(0.05, 0.45))
@click.option("--label-smoothing", default=T.label_smoothing, show_default=True, type=click.FloatRange(0, 0.5))
@click.option("--class-weight", type=click.Choice(["balanced", "none"]), default=T.class_weight, show_default=True)
@click.option("--seed", default=T.seed, show_default=True, type=int)
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep cached activations here.")
@mlflow_option
def train(
    data_dir: Path,
    out: Path,
    overwrite: bool,
    backbone_weights: str,
    cache_dir: Path | None,
    dense_units: str,
    fine_tune_from: str,
    wise_ft: str,
    image_size: int,
    alpha: str,
    pooling: str,
    dropout: float,
    rotation: float,
    standardize: bool,
    blur: float,
    mlflow_uri: str | None,
    **settings: Any,
) -> None:
    """Train the classifier: baseline head on a frozen MobileNetV2, then fine-tuning.

    The defaults are the seed's recipe: (1) backbone frozen, batch 100, dropout
    0.2, Adam 1e-3, up to 50 epochs with early stopping; (2) backbone unfrozen
    from layer 145, learning rate / 100, batch 300, 10 epochs. Class imbalance
    is handled by balanced class weights. The frozen backbone runs once per
    augmented view and its activations are cached, so both stages fit on a
    laptop CPU. The validation split is taken from DATA_DIR (stratified, grouped
    by patient); the checkpoint of each stage is the epoch with the best
    validation loss. The test split is never used.

    Writes model.keras, model.json, history.json, training_curves.png and
    train.log and source_stats.npz (training statistics for site adaptation)
    into OUT (built beside it and swapped in at the end, so a failed run leaves
    OUT as it was).

    \b
    Example:
      python -m cli train ../shared/data/chest_xray/train --out runs/seed-recipe \\
          --backbone-weights ../shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5
    """
    from core.data import scan_dataset

    try:
        units = tuple(int(u) for u in dense_units.split(",") if u.strip())
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 256,64", param_hint="--dense") from None
    try:
        ft_from = None if fine_tune_from.lower() == "none" else int(fine_tune_from)
    except ValueError:
        raise click.BadParameter("a layer index or 'none'", param_hint="--fine-tune-from") from None
    try:
        alphas = tuple(float(a) for a in wise_ft.split(",") if a.strip())
    except ValueError:
        raise click.BadParameter("comma-separated shares in [0, 1], e.g. 0.5,0.75,1", param_hint="--wise-ft") from None
    if backbone_weights != "imagenet" and not Path(backbone_weights).is_file():
        raise click.BadParameter(f"{backbone_weights} is not a file", param_hint="--backbone-weights")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise click.UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")
    scan = scan_dataset(data_dir)
    import_tensorflow_quietly()
    from core.training import train_to_folder

    cfg = TrainConfig(fine_tune_from=ft_from, wise_ft=alphas, **settings)
    arch = ArchConfig(
        alpha=float(alpha),
        pooling=pooling,
        dropout=dropout,
        dense_units=units,
        rotation=rotation,
        standardize=standardize,
        blur=blur,
    )
    spec = InputSpec(height=image_size, width=image_size)
    from core.artifact import ModelMeta, record_run
    from core.tracking import report_metrics, tracked, tracking_uri

    tags = {"data_dir": data_dir.resolve().name, "protocol": "train-only", "backbone": Path(backbone_weights).name}
    with tracked(tracking_uri(mlflow_uri), "train", ModelMeta.name, out.name, tags) as run:
        if run:
            run.params({"train": cfg.to_dict(), "arch": arch.to_dict(), "input": spec.to_dict(), **tags})
        with progress(len(scan.samples), "backbone activations (once)") as bar:
            on_epoch = (lambda step, logs: run.metrics(logs, step=step)) if run else None
            result = train_to_folder(
                scan, out, cfg, arch, spec, backbone_weights, cache_dir, bar.update, overwrite=True, on_epoch=on_epoch
            )
        val = result.meta.metrics["validation"]
        minutes = result.meta.training["wall_minutes"]
        click.echo(
            f"validation accuracy {val['accuracy']:.1%}, macro F1 {val['macro_f1']:.3f} "
            f"({val['n_images']} images); {minutes:.1f} min; model written to {out}/"
        )
        shift = result.meta.metrics["validation_shift"]
        click.echo(
            f"validation under perturbation: mean accuracy {shift['mean_accuracy']:.1%}, worst {shift['worst']}; "
            f"re-encoding, resampling and an original changed at most {shift['max_changed_encoding']:.1%} of calls"
        )
        click.echo(f"test-time views (chosen on validation): {', '.join(result.meta.predict.views)}")
        if run:
            final = {f"final.validation.{k}": v for k, v in report_metrics(val).items()}
            run.metrics({**final, "final.validation_shift.mean_accuracy": shift["mean_accuracy"]})
            run.metrics({"wall_minutes": float(minutes)})
            run.tags({"model.sha256": result.meta.weights_sha256})
            record_run(out, run.describe())
            run.artifacts(out, under="model")


def model_dir_option(what: str) -> Any:
    """``--model-dir``: a model folder a command completes in place."""
    return click.option(
        "--model-dir",
        required=True,
        type=click.Path(path_type=Path, file_okay=False),
        help=f"The model folder {what} (its model.json is updated).",
    )


@command("fit-validity")
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_dir_option("to add validity.npz to")
def fit_validity(data_dir: Path, model_dir: Path) -> None:
    """Fit the validity statistics of a model trained before they were kept, from its training data.

    DATA_DIR is the folder the model was trained on. Its training and
    validation splits are rebuilt from the configuration in model.json (same
    share and seed, so the same patients): the statistics are fitted on the
    training split and the threshold accepts 95 % of the validation split, as
    training now stores them. Every call then carries in_distribution and
    ood_score.

    \b
    Example:
      python -m cli fit-validity ../shared/data/chest_xray/train --model-dir weights
    """
    import_tensorflow_quietly()
    from core.artifact import load_artifact
    from core.data import scan_dataset
    from core.training import add_validity

    scan = scan_dataset(data_dir)
    loaded = load_artifact(model_dir)
    add_validity(loaded, scan)
    v = loaded.meta.validity
    click.echo(
        f"validity statistics of {v['layer']} from {v['n_train']} training images; the threshold accepts "
        f"{v['validation']['accepted']:.1%} of {v['validation']['n_images']} validation images; "
        f"written to {model_dir}/"
    )


@command("choose-views")
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_dir_option("whose test-time views to choose")
def choose_views(data_dir: Path, model_dir: Path) -> None:
    """Choose the test-time views of a model trained before training chose them, on its validation split.

    DATA_DIR is the folder the model was trained on; the validation split is
    rebuilt from model.json. Each validation image is scored with each
    candidate view under every stress perturbation; the rule keeps the sets
    that no re-encoding, resampling or imitated original changes for more than
    3 % of the calls, and of those the most accurate (clean and perturbed);
    none stable: the steadiest. The winner goes into model.json (predict.views)
    and every entry point then averages it; the validation figures are
    recorded with it, and without (``:no-views``).

    \b
    Example:
      python -m cli choose-views ../shared/data/chest_xray/train --model-dir weights
    """
    import_tensorflow_quietly()
    from core.artifact import load_artifact
    from core.data import scan_dataset
    from core.training import add_views, recorded_split, split_by_patient
    from core.view_choice import format_choice

    scan = scan_dataset(data_dir)
    loaded = load_artifact(model_dir)
    n_val = len(split_by_patient(scan.samples, *recorded_split(loaded.meta.training))[1])
    with progress(n_val, "validation images, every view and perturbation") as bar:
        choice = add_views(loaded, scan, bar.update)
    click.echo(format_choice(choice))
    click.echo(f"written to {model_dir}/model.json")
