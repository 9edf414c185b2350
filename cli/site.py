"""``adapt``, ``calibrate`` and ``tune``: a model for a new site, written as a new model folder; ``site-curve``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pneumocam.options import (
    ADAPT_BATCH_SIZE,
    ADAPT_METHODS,
    DEFAULT_ADAPT_METHOD,
    SITE_CURVE_REPEATS,
    SITE_CURVE_SIZES,
)

if TYPE_CHECKING:
    from pneumocam.config import SiteFit

from .common import (
    IntList,
    ModelChoice,
    batch_size_option,
    choice_option,
    mlflow_option,
    model_options,
    model_out_option,
    overwrite_option,
    progress,
    tracked_command,
)


@click.command()
@click.argument("image_dir", type=click.Path(path_type=Path))
@model_out_option()
@model_options
@choice_option(
    "--method",
    ADAPT_METHODS,
    DEFAULT_ADAPT_METHOD,
    "Re-standardise every batch-norm layer and the pooled features (bn+features), the pooled features only "
    "(features), or the batch-norm layers only (bn, AdaBN as published).",
)
@batch_size_option(ADAPT_BATCH_SIZE)
@overwrite_option("OUT")
@mlflow_option
def adapt(
    image_dir: Path,
    out: Path,
    model: ModelChoice,
    method: str,
    batch_size: int,
    overwrite: bool,
    mlflow_uri: str | None,
) -> None:
    """Adapt the model to a site from its unlabelled X-rays; write the adapted model to OUT.

    IMAGE_DIR is any folder of the site's images (searched recursively; labels,
    if its layout has them, are not read). Each batch-norm layer and the pooled
    features are re-standardised from the site's statistics to the training
    statistics stored with the model (AdaBN); the images are batched in the
    order of their content's hash, so the same images give the same model. The
    result is an ordinary model folder: evaluate, gallery, predict, stress and
    the Space serve it with --model OUT, and Grad-CAM explains its logits. A few
    hundred images suffice. (evaluate --adapt then also adjusts the folder's
    probabilities together with LAME, which no model folder can hold.)

    \b
    Example:
      python -m cli adapt /archive/site-b/xrays --out models/site-b
      python -m cli evaluate data/site-b-labelled --model models/site-b
    """
    from pneumocam.atomic import check_out
    from pneumocam.model.artifact import is_model_entry
    from pneumocam.site.models import adapt_to_site, site_images

    n = len(site_images(image_dir))
    check_out(out, is_model_entry, overwrite)
    predictor = model.load()

    from pneumocam.site.adaptation import check_adaptable, stat_passes

    check_adaptable(predictor)
    with tracked_command(mlflow_uri, "adapt", predictor, image_dir, out.name, protocol="site-adapted") as run:
        passes = stat_passes(method, predictor.validity_stats is not None)
        with progress(n * passes, "measuring site statistics") as bar:
            meta = adapt_to_site(predictor, image_dir, out, method, batch_size, bar.update, overwrite)
        info = meta.adaptation.applied
        click.echo(
            f"adapted to {info['n_images']} image(s) of {image_dir} ({method}, {info['layers']} layers); "
            f"model written to {out}/"
        )
        if run:
            run.params({"method": method, "batch_size": batch_size, "image_dir": image_dir.resolve().name})
            run.metrics({"n_images": info["n_images"], "layers": info["layers"]})
            run.artifacts(out, under="model")


def _labelled_site_options(f: Callable) -> Callable:
    """What calibrate and tune take: a labelled folder, OUT, the model, batch size, --overwrite, --mlflow."""
    for option in reversed(
        [
            click.argument("data_dir", type=click.Path(path_type=Path)),
            model_out_option(),
            model_options,
            batch_size_option(),
            overwrite_option("OUT"),
            mlflow_option,
        ]
    ):
        f = option(f)
    return f


@click.command()
@_labelled_site_options
def calibrate(
    data_dir: Path, out: Path, model: ModelChoice, batch_size: int, overwrite: bool, mlflow_uri: str | None
) -> None:
    """Calibrate the model on a labelled sample of a site; write the calibrated model to OUT.

    Fits a temperature and one logit bias per class (nothing else) by maximum
    likelihood on DATA_DIR (either layout; every class must be present) and
    folds them into the logits layer. Prints the sample's figures before and
    after (in-sample: measure on other images, or use evaluate --cross-calibrate).

    \b
    Example:
      python -m cli calibrate data/site-b-sample --out models/site-b-calibrated
      python -m cli calibrate data/site-b-sample --model models/site-b --out models/site-b-final
    """
    with _labelled_site_run("calibrate", data_dir, out, model, batch_size, overwrite, mlflow_uri) as (meta, run):
        cal, fit = meta.calibration, meta.calibration.params
        click.echo(
            f"temperature {fit['temperature']:.3f}, biases "
            + ", ".join(f"{c} {v:+.3f}" for c, v in zip(meta.classes, fit["biases"]))
        )
        click.echo(_in_sample_line(cal))
        if run:
            run.params({"batch_size": batch_size, "data_dir": data_dir.resolve().name})
            figures = {"temperature": float(fit["temperature"]), "n_images": float(cal.n_images)}
            figures |= {f"bias.{c}": float(v) for c, v in zip(meta.classes, fit["biases"])}
            run.metrics(figures | _in_sample_figures(cal))


@click.command()
@_labelled_site_options
def tune(
    data_dir: Path, out: Path, model: ModelChoice, batch_size: int, overwrite: bool, mlflow_uri: str | None
) -> None:
    """Re-fit the classifier head on a labelled sample of a site; write the tuned model to OUT.

    A new linear read-out of the pooled features is fitted on DATA_DIR (either
    layout; every class, at least a few images each), with the model's own
    logits kept as an offset. Its strength is chosen by a patient-grouped inner
    cross-validation on DATA_DIR alone, which falls back to calibration (a
    temperature and class biases) or to the model untouched when the sample is
    too small to do better. The tuned head is folded into the model: evaluate,
    gallery, predict, stress, audit and the Space serve it with --model OUT, and
    Grad-CAM explains its tuned logits. Tune after adapting, not before.
    Prints the sample's figures before and after (in-sample: measure on other
    images, or use evaluate --cross-tune; site-curve shows how many labels pay).

    \b
    Example:
      python -m cli tune data/site-b-labelled --out models/site-b-tuned
      python -m cli tune data/site-b-labelled --model models/site-b --out models/site-b-tuned
    """
    with _labelled_site_run("tune", data_dir, out, model, batch_size, overwrite, mlflow_uri) as (meta, run):
        t, fit = meta.tuning, meta.tuning.params
        losses = fit["inner_cv"]["log_loss"]
        chosen = "the model untouched" if t.kind == "untouched" else t.kind
        if t.kind == "tune":
            chosen += f" (penalty {fit['penalty']:g})"
        click.echo(
            f"inner {fit['inner_cv']['folds']}-fold cross-validation chose {chosen}: log loss "
            f"{min(losses.values()):.3f} (untouched {losses['untouched']:.3f}, calibrate {losses['calibrate']:.3f})"
        )
        click.echo(_in_sample_line(t))
        if run:
            run.params({"batch_size": batch_size, "data_dir": data_dir.resolve().name, "kind": t.kind})
            figures = {"n_images": float(t.n_images), "temperature": float(fit["temperature"])}
            figures |= {f"inner_log_loss.{k}": float(v) for k, v in losses.items()}
            run.metrics(figures | _in_sample_figures(t))


@contextmanager
def _labelled_site_run(
    name: str,
    data_dir: Path,
    out: Path,
    model: ModelChoice,
    batch_size: int,
    overwrite: bool,
    mlflow_uri: str | None,
) -> Iterator[tuple[Any, Any]]:
    """Calibrate or tune: score the labelled folder, fit, write OUT; yields the new metadata and the tracked run."""
    from pneumocam.atomic import check_out
    from pneumocam.images.data import scan_dataset
    from pneumocam.model.artifact import is_model_entry
    from pneumocam.site.models import fit_to_site

    protocol = {"calibrate": "site-calibrated", "tune": "site-tuned"}[name]
    scan = scan_dataset(data_dir)
    check_out(out, is_model_entry, overwrite)
    predictor = model.load()
    with tracked_command(mlflow_uri, name, predictor, data_dir, out.name, protocol=protocol) as run:
        with progress(len(scan.samples), "scoring") as bar:
            meta = fit_to_site(name, predictor, scan, out, batch_size, bar.update, overwrite)
        yield meta, run
        click.echo(f"model written to {out}/")
        if run:
            run.artifacts(out, under="model")


def _in_sample_line(record: SiteFit) -> str:
    b, a = record.in_sample["before"], record.in_sample["after"]
    return (
        f"on {record.n_images} images (in-sample): accuracy {b['accuracy']:.1%} -> {a['accuracy']:.1%}, "
        f"ECE {b['ece']:.3f} -> {a['ece']:.3f}"
    )


def _in_sample_figures(record: SiteFit) -> dict[str, float]:
    return {
        f"in_sample.{when}.{k}": float(record.in_sample[when][k])
        for when in ("before", "after")
        for k in ("accuracy", "ece")
    }


@click.command("site-curve")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), help="Report folder [default: reports/<DATA_DIR name>-site-curve/]."
)
@click.option(
    "--sizes",
    type=IntList(),
    default=",".join(map(str, SITE_CURVE_SIZES)),
    show_default=True,
    help="Labelled images per fit; the whole labelled half is always added.",
)
@click.option(
    "--repeats", type=click.IntRange(1, 20), default=SITE_CURVE_REPEATS, show_default=True, help="Random halvings."
)
@click.option(
    "--record-as",
    metavar="SPLIT",
    help="Also store the curve in the (local) model's model.json as SPLIT:site-curve, e.g. test.",
)
@model_options
@batch_size_option()
@overwrite_option("--out")
def site_curve(
    data_dir: Path,
    out: Path | None,
    sizes: tuple[int, ...],
    repeats: int,
    record_as: str | None,
    model: ModelChoice,
    batch_size: int,
    overwrite: bool,
) -> None:
    """How many labelled X-rays a site needs: calibration and tuning against the number of labels.

    DATA_DIR is a labelled folder of the site (either layout). It is halved
    REPEATS times by class and patient; from one half a class-stratified sample
    of each size is drawn, calibration and tuning are fitted on it and the other
    half is scored, then the halves swap. Writes site_curve.json (accuracy with
    95 % intervals, macro F1 and recall per class, for each method and size; the
    untouched and the unlabelled-adapted model as references) and site_curve.png.
    One forward pass per image serves every size and repeat.

    \b
    Example:
      python -m cli site-curve data/site-b-labelled
      python -m cli site-curve data/test --sizes 25,50,100,200 --repeats 3 --out reports/test-site-curve
    """
    from pneumocam.atomic import claim_output, save_figure, write_json
    from pneumocam.images.data import scan_dataset
    from pneumocam.plots import site_curve_figure
    from pneumocam.reports.site_curve import (
        SITE_CURVE_FILE,
        SITE_CURVE_FILES,
        SITE_CURVE_PLOT,
        adapt_passes,
        check_plan,
        fits_needed,
        format_curve,
        score_site,
    )
    from pneumocam.reports.site_curve import site_curve as make_curve

    scan = scan_dataset(data_dir)
    out = out or Path("reports", data_dir.resolve().name + "-site-curve")
    write = claim_output(out, lambda name: name in SITE_CURVE_FILES, overwrite)
    if record_as and model.is_hub():
        raise click.UsageError("--record-as needs a local model folder (--model), not a Hub download")
    check_plan(sizes, repeats, len(model.meta().classes))
    predictor = model.load()
    with progress(len(scan.samples) * (1 + adapt_passes(predictor)), "scoring") as bar:
        site = score_site(predictor, scan, batch_size=batch_size, on_batch=bar.update)
    with progress(fits_needed(sizes, repeats), "fitting") as bar:
        result = make_curve(site, sizes, repeats, bar.update)
    click.echo(format_curve(result))
    with write() as staging:
        write_json(staging / SITE_CURVE_FILE, result)
        save_figure(
            site_curve_figure(result, f"{data_dir.name}: {result['n_images']} images"), staging / SITE_CURVE_PLOT
        )
    click.echo(f"report written to {out}/")
    if record_as:
        from pneumocam.model.artifact import record_metrics
        from pneumocam.site.protocols import SITE_CURVE, metrics_key

        key = metrics_key(record_as, SITE_CURVE)
        record_metrics(predictor.directory, key, result)
        click.echo(f"curve recorded as {key!r} in {predictor.directory}/model.json")
