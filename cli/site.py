"""``adapt`` and ``calibrate``: a model for a new site, written as a new model folder."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import (
    ModelChoice,
    batch_size_option,
    command,
    mlflow_option,
    model_options,
    model_out_option,
    overwrite_option,
    progress,
    tracked_command,
)
from core.options import ADAPT_BATCH_SIZE, ADAPT_METHODS, DEFAULT_ADAPT_METHOD


@command()
@click.argument("image_dir", type=click.Path(path_type=Path))
@model_out_option()
@model_options
@click.option(
    "--method",
    type=click.Choice(ADAPT_METHODS),
    default=DEFAULT_ADAPT_METHOD,
    show_default=True,
    help="Re-standardise every batch-norm layer and the pooled features (bn+features), the pooled features only "
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
    statistics stored with the model (AdaBN). The result is an ordinary model
    folder: evaluate, gallery, predict, stress and the Space serve it with
    --model OUT, and Grad-CAM explains its logits. A few hundred images suffice.

    \b
    Example:
      python -m cli adapt /archive/site-b/xrays --out models/site-b
      python -m cli evaluate data/site-b-labelled --model models/site-b
    """
    from core.artifact import is_model_entry
    from core.atomic import check_out
    from core.site import adapt_to_site, site_images

    n = len(site_images(image_dir))
    check_out(out, is_model_entry, overwrite)
    loaded = model.load()

    from core.adaptation import check_adaptable, stat_passes

    check_adaptable(loaded)
    with tracked_command(mlflow_uri, "adapt", loaded, image_dir, out.name, protocol="site-adapted") as run:
        with progress(n * stat_passes(method), "measuring site statistics") as bar:
            meta = adapt_to_site(loaded, image_dir, out, method, batch_size, bar.update, overwrite)
        info = meta.adaptation["applied"]
        click.echo(
            f"adapted to {info['n_images']} image(s) of {image_dir} ({method}, {info['layers']} layers); "
            f"model written to {out}/"
        )
        if run:
            run.params({"method": method, "batch_size": batch_size, "image_dir": image_dir.resolve().name})
            run.metrics({"n_images": info["n_images"], "layers": info["layers"]})
            run.artifacts(out, under="model")


@command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_out_option()
@model_options
@batch_size_option()
@overwrite_option("OUT")
@mlflow_option
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
    from core.artifact import is_model_entry
    from core.atomic import check_out
    from core.data import scan_dataset
    from core.site import calibrate_to_site

    scan = scan_dataset(data_dir)
    check_out(out, is_model_entry, overwrite)
    loaded = model.load()
    with tracked_command(mlflow_uri, "calibrate", loaded, data_dir, out.name, protocol="site-calibrated") as run:
        with progress(len(scan.samples), "scoring") as bar:
            meta = calibrate_to_site(loaded, scan, out, batch_size, bar.update, overwrite)
        cal = meta.calibration
        b, a = cal["in_sample"]["before"], cal["in_sample"]["after"]
        click.echo(
            f"temperature {cal['temperature']:.3f}, biases "
            + ", ".join(f"{c} {v:+.3f}" for c, v in zip(meta.classes, cal["biases"]))
        )
        click.echo(
            f"on {cal['n_images']} images (in-sample): accuracy {b['accuracy']:.1%} -> {a['accuracy']:.1%}, "
            f"ECE {b['ece']:.3f} -> {a['ece']:.3f}"
        )
        click.echo(f"model written to {out}/")
        if run:
            run.params({"batch_size": batch_size, "data_dir": data_dir.resolve().name})
            figures = {"temperature": float(cal["temperature"]), "n_images": float(cal["n_images"])}
            figures |= {f"bias.{c}": float(v) for c, v in zip(meta.classes, cal["biases"])}
            for when, d in (("before", b), ("after", a)):
                figures |= {f"in_sample.{when}.{k}": float(d[k]) for k in ("accuracy", "ece")}
            run.metrics(figures)
            run.artifacts(out, under="model")
