"""``train``: a recipe (core/training/recipes/) on cached activations, any option overriding it; and two completions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pneumocam.config import POOLINGS
from pneumocam.options import AUGMENTATIONS
from pneumocam.paths import ENV_BACKBONE_WEIGHTS
from pneumocam.runtime import import_tensorflow_quietly
from pneumocam.training.recipe import PUBLISHED_RECIPE, SEED_RECIPE, available_recipes, load_recipe

from .common import IntList, mlflow_option, model_out_option, progress


class LayerIndex(click.ParamType):
    """A backbone layer index, or ``none`` (kept as the string)."""

    name = "INDEX|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or str(value).lower() == "none":
            return value if isinstance(value, int) else "none"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a layer index nor 'none'", param, ctx)


#: Which recipe section each option overrides (the option's name is the setting's, except where mapped).
_SECTION = {"alpha": "arch", "pooling": "arch", "dropout": "arch", "dense_units": "arch", "rotation": "arch"}


def recipe_overrides(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The options given on the command line (not None), sorted into the recipe's sections."""
    out: dict[str, dict[str, Any]] = {"train": {}, "arch": {}, "input": {}}
    for name, value in settings.items():
        if value is None:
            continue
        if name == "image_size":
            out["input"].update(height=value, width=value)
        elif name == "alpha":
            out["arch"]["alpha"] = float(value)
        elif name == "fine_tune_from":
            out["train"]["fine_tune_from"] = None if value == "none" else value
        else:
            out[_SECTION.get(name, "train")][name] = value
    return out


_FROM_RECIPE = " [default: the recipe's]"


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_out_option()
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT folder.")
@click.option(
    "--recipe",
    default=SEED_RECIPE,
    show_default=True,
    help=f"A recipe name ({', '.join(available_recipes())}) or a JSON file of the same shape; "
    f"'{PUBLISHED_RECIPE}' is the published model's. The options below override it.",
)
@click.option(
    "--backbone-weights",
    envvar=ENV_BACKBONE_WEIGHTS,
    default="imagenet",
    show_default=True,
    help="'imagenet' (Keras download) or a local MobileNetV2 no-top .h5 file [env: PNEUMOCAM_BACKBONE_WEIGHTS].",
)
@click.option("--epochs", type=click.IntRange(1), help="Baseline: at most N epochs." + _FROM_RECIPE)
@click.option("--batch-size", type=click.IntRange(1), help="Baseline batch size." + _FROM_RECIPE)
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), help="Baseline learning rate.")
@click.option("--patience", type=click.IntRange(1), help="Baseline early stopping." + _FROM_RECIPE)
@click.option(
    "--fine-tune-from",
    type=LayerIndex(),
    help="Unfreeze the backbone from this layer index (as in a standalone MobileNetV2); 'none' skips stage 2.",
)
@click.option("--fine-tune-epochs", type=click.IntRange(1))
@click.option("--fine-tune-batch-size", type=click.IntRange(1))
@click.option("--fine-tune-lr-divisor", type=click.FloatRange(min=1), help="Stage-2 lr = lr / this.")
@click.option("--fine-tune-patience", type=click.IntRange(1), help="Stage-2 early stopping (none: all epochs run).")
@click.option("--image-size", type=click.IntRange(32, 1024), help="Model input size." + _FROM_RECIPE)
@click.option(
    "--width-multiplier",
    "alpha",
    type=click.Choice(["0.35", "0.5", "0.75", "1.0", "1.3", "1.4"]),
    help="MobileNetV2 alpha (must match --backbone-weights).",
)
@click.option("--pooling", type=click.Choice(POOLINGS))
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True))
@click.option("--dense", "dense_units", type=IntList(at_least=0), help="Hidden ReLU layer sizes, e.g. 256,64.")
@click.option("--rotation", type=click.FloatRange(0, 0.5), help="RandomRotation factor.")
@click.option(
    "--copies",
    "--cached-views",
    "copies",
    type=click.IntRange(1),
    help="Augmented copies of each training image cached (copy 0 is the image itself); --cached-views: the older name.",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENTATIONS),
    help="flips: flips and rotations; acquisition: also zoom, resolution, blur, gamma, contrast and noise; "
    "invariance: also resampling filters, scale and JPEG quality.",
)
@click.option(
    "--consistency",
    type=click.FloatRange(min=0),
    help="Fine-tuning: weight of the Jensen-Shannon consistency among each image's clean and two augmented copies "
    "(AugMix); 0: plain cross-entropy.",
)
@click.option("--val-fraction", type=click.FloatRange(0.05, 0.45))
@click.option("--label-smoothing", type=click.FloatRange(0, 0.5))
@click.option("--class-weight", type=click.Choice(["balanced", "none"]))
@click.option("--seed", type=int, help="Split, augmentation and initial weights.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep cached activations here.")
@mlflow_option
def train(
    data_dir: Path,
    out: Path,
    overwrite: bool,
    recipe: str,
    backbone_weights: str,
    cache_dir: Path | None,
    mlflow_uri: str | None,
    **settings: Any,
) -> None:
    """Train the classifier from a recipe: baseline head on a frozen MobileNetV2, then fine-tuning.

    A recipe is a file of settings (core/training/recipes/): 'seed' is the seed
    project's (backbone unfrozen from layer 145, lr / 100, batch 300, 10
    epochs; about 6 minutes on a laptop CPU), 'pneumocam' the published
    model's (about an hour). Any option given overrides the recipe, and
    model.json records the recipe, its hash and the overrides. Class imbalance
    is handled by balanced class weights. The frozen backbone runs once per
    augmented view and its activations are cached, so both stages fit on a
    laptop CPU. The validation split is taken from DATA_DIR (stratified,
    grouped by patient); the checkpoint of each stage is the epoch with the
    best validation loss; the test-time views are chosen on it. The test
    split is never used.

    Writes model.keras, model.json, history.json, training_curves.png,
    train.log, validation.txt, source_stats.npz (training statistics for site
    adaptation) and validity.npz into OUT (built beside it and swapped in at
    the end, so a failed run leaves OUT as it was).

    \b
    Example:
      python -m cli train ../shared/data/chest_xray/train --out runs/published --recipe pneumocam \\
          --backbone-weights ../shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5
    """
    from pneumocam.images.data import scan_dataset

    if backbone_weights != "imagenet" and not Path(backbone_weights).is_file():
        raise click.BadParameter(f"{backbone_weights} is not a file", param_hint="--backbone-weights")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise click.UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")
    overrides = recipe_overrides(settings)
    chosen = load_recipe(recipe).with_overrides(overrides)
    cfg, arch, spec = chosen.train, chosen.arch, chosen.input
    scan = scan_dataset(data_dir)
    import_tensorflow_quietly()
    from pneumocam.model.artifact import ModelMeta
    from pneumocam.reports.tracking import tracked, tracking_uri
    from pneumocam.training.trainer import train_to_folder

    tags = {"data_dir": data_dir.resolve().name, "protocol": "train-only", "backbone": Path(backbone_weights).name}
    with tracked(tracking_uri(mlflow_uri), "train", ModelMeta.name, out.name, tags) as run:
        if run:
            run.params(
                {"recipe": chosen.name, "train": cfg.to_dict(), "arch": arch.to_dict(), "input": spec.to_dict(), **tags}
            )
        with progress(len(scan.samples), "backbone activations (once)") as bar:
            on_epoch = (lambda step, logs: run.metrics(logs, step=step)) if run else None
            result = train_to_folder(
                scan,
                out,
                cfg,
                arch,
                spec,
                backbone_weights,
                cache_dir,
                bar.update,
                overwrite=True,
                on_epoch=on_epoch,
                recipe=chosen.record(overrides),
            )
        _say(result.meta, out)
        if run:
            _track_trained(run, result.meta, out)


def _say(meta: Any, out: Path) -> None:
    """What the terminal shows of a trained model: its validation figures, with and without perturbation."""
    val, shift = meta.metrics["validation"], meta.metrics["validation_shift"]
    minutes = meta.training.wall_minutes
    click.echo(
        f"validation accuracy {val['accuracy']:.1%}, macro F1 {val['macro_f1']:.3f} "
        f"({val['n_images']} images); {minutes:.1f} min; model written to {out}/"
    )
    click.echo(
        f"validation under perturbation: mean accuracy {shift['mean_accuracy']:.1%}, worst {shift['worst']}; "
        f"re-encoding, resampling and an original changed at most {shift['max_changed_encoding']:.1%} of calls"
    )
    click.echo(f"test-time views (chosen on validation): {', '.join(meta.predict.views)}")


def _track_trained(run: Any, meta: Any, out: Path) -> None:
    """The training run's final figures, the model's hash, and the model folder as artefacts."""
    from pneumocam.model.artifact import record_run
    from pneumocam.reports.tracking import report_metrics

    shift = meta.metrics["validation_shift"]
    final = {f"final.validation.{k}": v for k, v in report_metrics(meta.metrics["validation"]).items()}
    run.metrics({**final, "final.validation_shift.mean_accuracy": shift["mean_accuracy"]})
    run.metrics({"wall_minutes": float(meta.training.wall_minutes)})
    run.tags({"model.sha256": meta.weights_sha256})
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


@click.command("fit-validity")
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_dir_option("to add validity.npz to")
@click.option(
    "--proxy",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="A folder of radiographs that are not pediatric frontal chest X-rays (adult, lateral, other body parts), "
    "searched recursively: a discriminator against them joins the distance, so adults are flagged too.",
)
def fit_validity(data_dir: Path, model_dir: Path, proxy: Path | None) -> None:
    """Fit the validity statistics of a model trained before they were kept, from its training data.

    DATA_DIR is the folder the model was trained on. Its training and
    validation splits are rebuilt from the configuration in model.json (same
    share and seed, so the same patients): the statistics are fitted on the
    training split and the threshold accepts 95 % of the validation split, as
    training now stores them. Every call then carries in_distribution and
    ood_score.

    With --proxy, a logistic-regression discriminator on the channel means and
    spreads of a deeper layer, fitted on the training X-rays against those
    radiographs, joins the distance; the joint threshold still accepts 95 % of
    the validation split.

    \b
    Example:
      python -m cli fit-validity ../shared/data/chest_xray/train --model-dir weights
      python -m cli fit-validity ../shared/data/chest_xray/train --model-dir weights --proxy ../shared/ood_proxy
    """
    import_tensorflow_quietly()
    from pneumocam.images.data import scan_dataset
    from pneumocam.scoring.predictor import load_predictor
    from pneumocam.training.completion import add_validity

    scan = scan_dataset(data_dir)
    predictor = load_predictor(model_dir)
    v = add_validity(predictor, scan, proxy).validity
    click.echo(
        f"validity statistics of {v.layer} from {v.n_train} training images; the threshold accepts "
        f"{v.validation['accepted']:.1%} of {v.validation['n_images']} validation images"
        + (f"; a discriminator against {v.discriminator['against']['images']} proxy radiographs" if proxy else "")
        + f"; written to {model_dir}/"
    )


@click.command("fit-conformal")
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_dir_option("to give a temperature and prediction sets")
def fit_conformal(data_dir: Path, model_dir: Path) -> None:
    """Give a model trained before them its validation temperature and its prediction-set rule.

    DATA_DIR is the folder the model was trained on; the validation split is
    rebuilt from model.json and scored as served. A temperature fitted there
    is folded into the logits (model.keras is rewritten) when it lowers the
    validation calibration error, cross-fitted on two patient halves. Then the
    set score is chosen by the rule in pneumocam.model.conformal and its
    threshold fitted at the 90 % level, both recorded in model.json; every
    call then carries its prediction set. Training does both for new models.

    \b
    Example:
      python -m cli fit-conformal ../shared/data/chest_xray/train --model-dir weights
    """
    scan, predictor, n_val = _completing(data_dir, model_dir)
    from pneumocam.training.confidence import add_confidence, format_record

    with progress(2 * n_val, "validation images, as served") as bar:
        record = add_confidence(predictor, scan, bar.update)
    click.echo(format_record(record))
    click.echo(f"written to {model_dir}/")


def _completing(data_dir: Path, model_dir: Path) -> tuple[Any, Any, int]:
    """The training folder, the model folder to complete, and how many validation images it has."""
    import_tensorflow_quietly()
    from pneumocam.images.data import scan_dataset
    from pneumocam.scoring.predictor import load_predictor
    from pneumocam.training.split import recorded_split, split_by_patient

    scan = scan_dataset(data_dir)
    predictor = load_predictor(model_dir)
    return scan, predictor, len(split_by_patient(scan.samples, *recorded_split(predictor.meta.training))[1])


@click.command("choose-views")
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
    scan, predictor, n_val = _completing(data_dir, model_dir)
    from pneumocam.training.completion import add_views
    from pneumocam.training.view_choice import format_choice

    with progress(n_val, "validation images, every view and perturbation") as bar:
        choice = add_views(predictor, scan, bar.update)
    click.echo(format_choice(choice))
    click.echo(f"written to {model_dir}/model.json")
