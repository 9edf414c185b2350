"""``evaluate``, ``stress`` and ``gallery``: reports on a labelled folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from pneumocam.options import DEFAULT_ENGINE, DEFAULT_SPLIT_SEED, ENGINES, GALLERY_LIMIT, GALLERY_PER_PAGE, RAY_INSTALL

from .common import (
    ModelChoice,
    batch_size_option,
    cam_method_option,
    choice_option,
    default_out,
    explain_option,
    layers_option,
    mlflow_option,
    model_options,
    opacity_option,
    overwrite_option,
    progress,
    tracked_command,
    views_option,
)


def _folds_option(flag: str, dest: str, text: str) -> Callable:
    """A cross-fitted site protocol: K folds of DATA_DIR, each scored by a fit on the others."""
    return click.option(flag, dest, type=click.IntRange(2, 10), metavar="K", help=text)


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_options
@views_option
@click.option("--out", type=click.Path(path_type=Path), help="Report folder [default: reports/<DATA_DIR name>/].")
@batch_size_option()
@click.option(
    "--record-as",
    metavar="SPLIT",
    help="Also store the metrics in the (local) model's model.json under this name, e.g. test "
    "(test:site-adapted etc. with --adapt / --cross-calibrate / --cross-tune).",
)
@overwrite_option("--out")
@click.option(
    "--adapt",
    is_flag=True,
    help="Unlabelled site adaptation first: re-standardise the model on DATA_DIR's own images (labels unused; "
    "transductive), then score.",
)
@_folds_option(
    "--cross-calibrate",
    "folds",
    "Labelled site calibration, cross-fitted: split DATA_DIR into K folds (by class, grouped by patient) "
    "and score each fold with a temperature and class biases fitted on the others. The benchmark uses K=2.",
)
@_folds_option(
    "--cross-tune",
    "tune_folds",
    "Labelled site tuning, cross-fitted: the same K-fold split; each fold scored by a head re-fitted on the "
    "others (its strength chosen inside them). The benchmark uses K=2. Not with --cross-calibrate.",
)
@click.option(
    "--split-seed",
    default=DEFAULT_SPLIT_SEED,
    show_default=True,
    type=int,
    help="Seed of the --cross-calibrate / --cross-tune split.",
)
@choice_option(
    "--engine",
    ENGINES,
    DEFAULT_ENGINE,
    "local: this process. ray: a Ray Data actor pool, on a local Ray or the cluster at --ray-address "
    f"(optional install: {RAY_INSTALL}). The report is the same.",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    show_envvar=True,
    metavar="ADDR",
    help="Ray cluster to join, e.g. auto or ray://head:10001 [default: start a local Ray].",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Ray actors, one CPU each [default: one per CPU of the cluster].",
)
@mlflow_option
def evaluate(
    data_dir: Path,
    model: ModelChoice,
    out: Path | None,
    batch_size: int,
    record_as: str | None,
    overwrite: bool,
    adapt: bool,
    folds: int | None,
    tune_folds: int | None,
    split_seed: int,
    engine: str,
    ray_address: str | None,
    workers: int | None,
    mlflow_uri: str | None,
) -> None:
    """Score every image of a labelled folder and write metrics, predictions and plots.

    DATA_DIR is in either layout (BACTERIA/ NORMAL/ VIRUS/, or the download's
    NORMAL/ PNEUMONIA/). Prints the per-class table with 95 % bootstrap
    intervals (patients resampled) and writes metrics.json (with ci95 and the
    protocol), predictions.csv, confusion_matrix.png, per_class_metrics.png,
    reliability.png and risk_coverage.png. Unreadable files are skipped and
    listed in metrics.json.

    How sure: the coverage and mean size of the prediction sets (the model's
    rule, fitted on validation; under --cross-calibrate/--cross-tune, refitted
    on the other folds, where the guarantee holds), per class too, and the
    accuracy of the 100/90/80/70/50 % most confident answers.

    Four protocols, each its own row in a comparison: as trained (default),
    --adapt (the site's unlabelled images; transductive), --cross-calibrate K
    and --cross-tune K (a labelled site sample, cross-fitted); --adapt combines
    with either of the last two.

    \b
    Example:
      python -m cli evaluate data/test
      python -m cli evaluate data/test --adapt --out reports/test-adapted
      python -m cli evaluate data/test --cross-calibrate 2 --out reports/test-calibrated
      python -m cli evaluate data/test --cross-tune 2 --out reports/test-tuned
      python -m cli evaluate /archive/xrays --engine ray --ray-address auto --out reports/archive
    """
    from pneumocam.atomic import claim_output
    from pneumocam.images.data import scan_dataset
    from pneumocam.reports.evaluation import GALLERY_DIR, evaluate_scan, is_report_entry, write_report

    settings = {"adapt": adapt, "cross_calibrate": folds, "cross_tune": tune_folds, "split_seed": split_seed}
    protocol, scorer = _protocol_and_engine(settings, engine, ray_address, workers)
    scan = scan_dataset(data_dir)
    out = out or default_out(data_dir)
    write = claim_output(out, is_report_entry, overwrite, keep=lambda name: name == GALLERY_DIR)
    if record_as and model.is_hub():
        raise click.UsageError("--record-as needs a local model folder (--model), not a Hub download")
    predictor = model.load()
    if adapt:
        from pneumocam.site.adaptation import check_adaptable

        check_adaptable(predictor)
    label = "adapting, then scoring" if adapt else f"scoring ({engine})"
    tags = {"protocol": protocol.name, "engine": engine}
    with tracked_command(mlflow_uri, "evaluate", predictor, data_dir, out.name, **tags) as run:
        with progress(len(scan.samples) * protocol.passes(), label) as bar:
            result = evaluate_scan(predictor, scan, batch_size, on_batch=bar.update, protocol=protocol, engine=scorer)
        _show(result.metrics, protocol, out)
        if run:
            result.metrics["provenance"]["mlflow"] = run.describe()
        with write() as staging:
            title = f"{data_dir.name} ({result.metrics['n_images']} images, {protocol.name})"
            write_report(staging, result, predictor.meta.classes, title=title)
        click.echo(f"report written to {out}/")
        if run:
            params = {"batch_size": batch_size, "engine": scorer.info(), "data_dir": data_dir.resolve().name}
            _track(run, result.metrics, {**params, "model": predictor.source}, out)
    if record_as:
        _record(predictor.directory, record_as, protocol.name, {**result.metrics, "data_dir": data_dir.resolve().name})


def _protocol_and_engine(
    settings: dict, engine: str, ray_address: str | None, workers: int | None
) -> tuple[object, object]:
    """The protocol and engine the options ask for; a protocol that cannot run on the engine is bad usage."""
    from pneumocam.errors import InputError
    from pneumocam.scoring.engine import make_engine
    from pneumocam.site.protocols import Protocol

    if engine == "local":
        ctx = click.get_current_context()
        if workers or ctx.get_parameter_source("ray_address") == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("--ray-address and --workers apply to --engine ray only")
        ray_address = None
    try:
        protocol = Protocol(**settings)
        protocol.check_engine(engine)
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    return protocol, make_engine(engine, ray_address, workers)


def _record(directory: Path, split: str, protocol: str, metrics: dict) -> None:
    """``--record-as``: the figures into the model folder's model.json, under the split and protocol."""
    from pneumocam.model.artifact import record_metrics
    from pneumocam.site.protocols import metrics_key

    key = metrics_key(split, protocol)
    record_metrics(directory, key, metrics)
    click.echo(f"metrics recorded as {key!r} in {directory}/model.json")


def _show(metrics: dict, protocol: object, out: Path) -> None:
    """The terminal's summary of an evaluation: the protocol, the table, validity, sets and risk-coverage."""
    from pneumocam.model.validity import format_summary
    from pneumocam.scoring.metrics import format_table
    from pneumocam.scoring.selective import format_risk_coverage, format_sets

    click.echo(f"protocol: {protocol.name}: {protocol.describe()}")
    click.echo(format_table(metrics))
    click.echo(format_summary(metrics["validity"]))
    if "sets" in metrics:
        click.echo(format_sets(metrics["sets"]))
    click.echo(format_risk_coverage(metrics["risk_coverage"]))
    if metrics["skipped"]:
        click.echo(f"skipped {len(metrics['skipped'])} unreadable file(s); see {out / 'metrics.json'}", err=True)


def _track(run: object, metrics: dict, params: dict, out: Path) -> None:
    """An evaluate's MLflow run: its settings and protocol (without the per-image split) as parameters, figures."""
    from pneumocam.reports.tracking import report_metrics

    protocol = {k: v for k, v in metrics["protocol"].items() if k not in ("split", "calibrations", "tunings")}
    run.params({**params, "protocol": protocol})
    run.metrics(report_metrics(metrics))
    run.artifacts(out)


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_options
@views_option
@click.option(
    "--out", type=click.Path(path_type=Path), help="Report folder [default: reports/<DATA_DIR name>-stress/]."
)
@click.option(
    "--only",
    metavar="NAMES",
    help="Comma-separated perturbations to run (default: all), e.g. blur-3,noise-8.",
)
@click.option(
    "--subset",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Only the files this list names (one per line, relative to DATA_DIR), e.g. a model's validation.txt.",
)
@batch_size_option()
@overwrite_option("--out")
@mlflow_option
def stress(
    data_dir: Path,
    model: ModelChoice,
    out: Path | None,
    only: str | None,
    subset: Path | None,
    batch_size: int,
    overwrite: bool,
    mlflow_uri: str | None,
) -> None:
    """Score a labelled folder again under blur, noise, zoom, exposure and compression changes.

    Shows how much of the accuracy survives images acquired a little
    differently (another scanner, site or year), without touching a test split:
    run it on a validation split: `train` writes the list of its validation
    images as validation.txt in the model folder, for --subset. Every
    perturbation is fixed and deterministic (see core/reports/stress.py); each acts
    on the resized image, before the model's own JPEG step and views. Writes
    stress.json and stress.png (accuracy, recall per class and the share of
    calls changed, for each perturbation).

    \b
    Example:
      python -m cli stress ../shared/data/chest_xray/train --subset weights/validation.txt
      python -m cli stress data/site-b --only blur-3,noise-8,zoom-in-1.2
    """
    from pneumocam.atomic import claim_output
    from pneumocam.images.data import scan_dataset
    from pneumocam.images.data import subset as data_subset
    from pneumocam.reports.stress import (
        CLEAN,
        STRESS_FILES,
        STRESS_NAMES,
        format_stress,
        run_metrics,
        stress_scan,
        unknown_names,
        write_stress_report,
    )

    names = list(STRESS_NAMES)
    if only:
        names = [CLEAN, *[n.strip() for n in only.split(",") if n.strip() and n.strip() != CLEAN]]
        bad = unknown_names(names)
        if bad:
            raise click.BadParameter(
                f"unknown {bad[0]!r}; choose from {', '.join(STRESS_NAMES[1:])}", param_hint="--only"
            )
    scan = scan_dataset(data_dir)
    if subset:
        scan = data_subset(scan, subset)
    out = out or Path("reports", data_dir.resolve().name + "-stress")
    write = claim_output(out, lambda name: name in STRESS_FILES, overwrite)
    predictor = model.load()
    with tracked_command(mlflow_uri, "stress", predictor, data_dir, out.name) as run:
        with progress(len(scan.samples), f"scoring x{len(names)}") as bar:
            result = stress_scan(predictor, scan, names, batch_size, on_batch=bar.update)
        click.echo(format_stress(result))
        if result["skipped"]:
            click.echo(f"skipped {len(result['skipped'])} unreadable file(s); see {out / STRESS_FILES[0]}", err=True)
        with write() as staging:
            title = f"{data_dir.name}: {result['n_images']} images under perturbation"
            write_stress_report(staging, result, title=title)
        click.echo(f"report written to {out}/")
        if run:
            run.params({"perturbations": ",".join(names), "subset": subset.name if subset else "", "batch": batch_size})
            run.metrics(run_metrics(result))
            run.artifacts(out)


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--class", "cls", required=True, help="Class to look at, e.g. VIRUS.")
@click.option(
    "--outcome",
    required=True,
    type=click.Choice(["TP", "FP", "FN", "TN"], case_sensitive=False),
    help="One-vs-rest outcome for that class (FN: VIRUS images called something else).",
)
@layers_option
@click.option(
    "--limit", default=GALLERY_LIMIT, show_default=True, type=click.IntRange(1), help="At most this many images."
)
@click.option(
    "--per-page", default=GALLERY_PER_PAGE, show_default=True, type=click.IntRange(1, 50), help="Rows per PNG page."
)
@explain_option("'predicted', 'true' (the label) or a class name", dest="explain")
@cam_method_option
@opacity_option
@click.option(
    "--predictions",
    type=click.Path(path_type=Path, dir_okay=False),
    help="An evaluate run's predictions.csv: reuse it instead of scoring again.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Gallery folder [default: reports/<DATA_DIR name>/gallery/<CLASS>_<OUTCOME>/].",
)
@batch_size_option()
@overwrite_option("--out")
@model_options
@views_option
def gallery(
    data_dir: Path,
    cls: str,
    outcome: str,
    n_layers: int | None,
    limit: int,
    per_page: int,
    explain: str,
    method: str | None,
    opacity: float,
    predictions: Path | None,
    out: Path | None,
    batch_size: int,
    overwrite: bool,
    model: ModelChoice,
) -> None:
    """Grad-CAM gallery of one class's TP / FP / FN / TN: paged PNG grids plus index.html.

    Each row shows the X-ray, the model's default map (the audited method and
    layer set, framed and named), then one map per explained layer, titled with
    the file name, true and predicted class and probability. Most confident first.

    \b
    Examples:
      python -m cli gallery data/test --class VIRUS --outcome FN
      python -m cli gallery data/test --class BACTERIA --outcome FP --layers 1 \\
          --predictions reports/test/predictions.csv
    """
    from pneumocam.atomic import claim_output
    from pneumocam.errors import DataError
    from pneumocam.images.data import scan_dataset
    from pneumocam.reports.evaluation import GALLERY_DIR, evaluate_scan, matching_predictions, read_predictions
    from pneumocam.reports.gallery import is_gallery_entry, render_pages, select, write_index

    if predictions and not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    scan = None if predictions else scan_dataset(data_dir)
    meta = model.meta()
    classes = meta.classes
    cls, outcome = cls.upper(), outcome.upper()
    if explain not in ("predicted", "true", *classes):
        raise click.BadParameter(f"'predicted', 'true' or one of {', '.join(classes)}", param_hint="--explain")
    if cls not in classes:
        raise click.BadParameter(f"choose one of {', '.join(classes)}", param_hint="--class")
    out = out or default_out(data_dir, GALLERY_DIR, f"{cls}_{outcome}")
    write = claim_output(out, is_gallery_entry, overwrite)
    if scan is not None and not predictions:
        predictions = matching_predictions(default_out(data_dir), meta, data_dir)
        if predictions:
            click.echo(f"reusing {predictions} (same model and data folder; pass --predictions to choose)", err=True)
            scan = None
    predictor = model.load()

    from pneumocam.explain.explainer import Explainer
    from pneumocam.explain.shown import method_warning

    if scan is None:
        preds = read_predictions(predictions, classes)
        root = data_dir
    else:
        root = scan.root
        with progress(len(scan.samples), "scoring") as bar:
            preds = evaluate_scan(predictor, scan, batch_size, on_batch=bar.update).predictions
    chosen = select(preds, classes, cls, outcome)
    shown = chosen[:limit]
    title = f"{cls} {outcome}: {len(chosen)} image(s), explaining the {explain} class"
    explainer = Explainer(predictor, method=method)
    warning = method_warning(meta, explainer.method, explainer.score)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    with write() as staging, progress(len(shown), "explaining") as bar:
        pages, failed = render_pages(
            explainer, shown, root, staging, n_layers, per_page, explain, opacity, title, on_page=bar.update
        )
        for name, reason in failed:
            click.echo(f"skipped {name}: {reason}", err=True)
        summary = f"{len(chosen)} image(s) with outcome {outcome} for class {cls}; showing {len(shown) - len(failed)}."
        write_index(staging, pages, title, f"{summary} {warning}".strip())
    click.echo(summary)
    click.echo(f"{len(pages)} page(s) written; open {out / 'index.html'}")
