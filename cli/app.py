"""The ``python -m cli`` commands: argument parsing and printing only; the work is in ``core``."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from core.errors import PneumoCAMError
from core.options import (
    ADAPT_METHODS,
    AUGMENTATIONS,
    DEFAULT_ADAPT_METHOD,
    DEFAULT_SPLIT_SEED,
)
from core.paths import ENV_BACKBONE_WEIGHTS
from core.runtime import import_tensorflow_quietly

EXIT_ERROR = 1  # input or model problems; click uses 2 for bad usage


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so staging folders and temporary files are cleaned up."""
    sys.exit(128 + signum)


class Command(click.Command):
    """Imports TensorFlow (quietly) once arguments parsed, so `--help` stays instant and clean."""

    def invoke(self, ctx: click.Context) -> Any:
        import_tensorflow_quietly()
        return super().invoke(ctx)


class Group(click.Group):
    """Turns our errors into one line on stderr and exit code 1, never a traceback."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except (PneumoCAMError, ValueError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name=None, version=__import__("core").__version__, prog_name="pneumocam")
def main() -> None:
    """PneumoCAM: explainable triage of pediatric chest X-rays (BACTERIA / NORMAL / VIRUS).

    A MobileNetV2 model sorts each X-ray into bacterial pneumonia, normal or viral
    pneumonia; Grad-CAM heatmaps of the last conv layers show which regions drove
    the call. Research tool, not a medical device.

    Exit codes: 0 success, 1 an input or model problem (one line on stderr), 2 bad usage.
    """


@dataclass(frozen=True)
class ModelChoice:
    """The --model / --repo-id / --revision options, loaded only when the command needs the model."""

    path: Path | None
    repo_id: str | None
    revision: str | None
    allow_unpinned: bool = False

    def load(self) -> Any:
        import warnings

        from core.hub import load_model

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = load_model(self.path, self.repo_id, self.revision, allow_unpinned=self.allow_unpinned)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        click.echo(f"model: {loaded.source}", err=True)
        return loaded


def model_options(f: Callable) -> Callable:
    """Add --model / --repo-id / --revision (resolved by core.hub; default: the bundled weights/)."""

    @click.option(
        "--model", "model_path", type=click.Path(path_type=Path), help="Model folder (model.keras + model.json)."
    )
    @click.option("--repo-id", help="Hugging Face Hub model repo, e.g. org/pneumocam [env: PNEUMOCAM_REPO_ID].")
    @click.option("--revision", help="Commit hash to pin the Hub download to [env: PNEUMOCAM_REVISION].")
    @click.option(
        "--allow-unpinned",
        is_flag=True,
        help="Accept a branch or tag as --revision (with a warning): not reproducible.",
    )
    @functools.wraps(f)
    def wrapper(
        *args: Any, model_path: Path | None, repo_id: str | None, revision: str | None, allow_unpinned: bool, **kw: Any
    ) -> Any:
        return f(*args, model=ModelChoice(model_path, repo_id, revision, allow_unpinned), **kw)

    return wrapper


def progress(total: int, label: str):
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True)


def _default_out(data_dir: Path, *parts: str) -> Path:
    return Path("reports", data_dir.resolve().name, *parts)


@main.command("prepare-data")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace the class folders of a non-empty DEST.")
def prepare_data(src: Path, dest: Path, overwrite: bool) -> None:
    """Lay out a download-layout folder (NORMAL/ PNEUMONIA/) as BACTERIA/ NORMAL/ VIRUS/.

    Files are hard-linked where possible (copied otherwise); bacteria/virus is read
    from the file names. Prints the counts per class and lists files whose class
    cannot be told (they are left out).

    \b
    Example:
      python -m cli prepare-data ~/Downloads/chest_xray/test data/test
    """
    from core.data import prepare_layout

    scan = prepare_layout(src, dest, overwrite=overwrite)
    for name, n in scan.counts().items():
        click.echo(f"{name:<9}{n:>6}")
    click.echo(f"{'total':<9}{len(scan.samples):>6}  -> {dest}")
    if scan.unlabeled:
        click.echo(f"{len(scan.unlabeled)} file(s) left out, class not in the name:", err=True)
        for p in scan.unlabeled:
            click.echo(f"  {p}", err=True)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_options
@click.option("--out", type=click.Path(path_type=Path), help="Report folder [default: reports/<DATA_DIR name>/].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option(
    "--record-as",
    metavar="SPLIT",
    help="Also store the metrics in the (local) model's model.json under this name, e.g. test.",
)
@click.option("--overwrite", is_flag=True, help="Replace --out even if it holds files that are not a report.")
@click.option(
    "--adapt",
    is_flag=True,
    help="Unlabelled site adaptation first: re-standardise the model on DATA_DIR's own images (labels unused; "
    "transductive), then score.",
)
@click.option(
    "--cross-calibrate",
    "folds",
    type=click.IntRange(2, 10),
    metavar="K",
    help="Labelled site calibration, cross-fitted: split DATA_DIR into K folds (by class, grouped by patient) "
    "and score each fold with a temperature and class biases fitted on the others. The benchmark uses K=2.",
)
@click.option(
    "--split-seed", default=DEFAULT_SPLIT_SEED, show_default=True, type=int, help="Seed of the --cross-calibrate split."
)
def evaluate(
    data_dir: Path,
    model: ModelChoice,
    out: Path | None,
    batch_size: int,
    record_as: str | None,
    overwrite: bool,
    adapt: bool,
    folds: int | None,
    split_seed: int,
) -> None:
    """Score every image of a labelled folder and write metrics, predictions and plots.

    DATA_DIR is in either layout (BACTERIA/ NORMAL/ VIRUS/, or the download's
    NORMAL/ PNEUMONIA/). Prints the per-class table with 95 % bootstrap
    intervals (patients resampled) and writes metrics.json (with ci95 and the
    protocol), predictions.csv, confusion_matrix.png, per_class_metrics.png and
    reliability.png. Unreadable files are skipped and listed in metrics.json.

    Three protocols, each its own row in a comparison: as trained (default),
    --adapt (the site's unlabelled images; transductive) and --cross-calibrate K
    (a labelled site sample, cross-fitted); --adapt and --cross-calibrate combine.

    \b
    Example:
      python -m cli evaluate data/test
      python -m cli evaluate data/test --adapt --out reports/test-adapted
      python -m cli evaluate data/test --cross-calibrate 2 --out reports/test-calibrated
    """
    from core.data import scan_dataset
    from core.evaluation import Protocol, evaluate_scan, is_report_entry, write_report
    from core.metrics import format_table
    from core.reports import replace_folder

    scan = scan_dataset(data_dir)
    loaded = model.load()
    out = out or _default_out(data_dir)
    protocol = Protocol(adapt=adapt, cross_calibrate=folds, split_seed=split_seed)
    if adapt:
        from core.adaptation import check_adaptable

        check_adaptable(loaded)
    label = "adapting, then scoring" if adapt else "scoring"
    with progress(len(scan.samples) * protocol.passes(), label) as bar:
        result = evaluate_scan(loaded, scan, batch_size, on_batch=bar.update, protocol=protocol)
    click.echo(f"protocol: {protocol.name}: {protocol.describe()}")
    click.echo(format_table(result.metrics))
    skipped = result.metrics["skipped"]
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable file(s); see {out / 'metrics.json'}", err=True)
    with replace_folder(out, is_report_entry, overwrite) as staging:
        title = f"{data_dir.name} ({result.metrics['n_images']} images, {protocol.name})"
        write_report(staging, result, loaded.meta.classes, title=title)
    click.echo(f"report written to {out}/")
    if record_as:
        from core.artifact import record_metrics

        if loaded.from_hub:
            raise click.UsageError("--record-as needs a local model folder (--model), not a Hub download")
        key = record_as if protocol.name == "train-only" else f"{record_as}:{protocol.name}"
        record_metrics(loaded.directory, key, {**result.metrics, "data_dir": data_dir.resolve().name})
        click.echo(f"metrics recorded as {key!r} in {loaded.directory}/model.json")


@main.command()
@click.argument("image_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Model folder to write.")
@model_options
@click.option(
    "--method",
    type=click.Choice(ADAPT_METHODS),
    default=DEFAULT_ADAPT_METHOD,
    show_default=True,
    help="Re-standardise every batch-norm layer and the pooled features, or the pooled features only.",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option("--overwrite", is_flag=True, help="Replace OUT even if it holds other files.")
def adapt(image_dir: Path, out: Path, model: ModelChoice, method: str, batch_size: int, overwrite: bool) -> None:
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
    from core.adaptation import check_adaptable, stat_passes
    from core.site import adapt_to_site, site_images

    n = len(site_images(image_dir))
    loaded = model.load()
    check_adaptable(loaded)
    with progress(n * stat_passes(method), "measuring site statistics") as bar:
        meta = adapt_to_site(loaded, image_dir, out, method, batch_size, bar.update, overwrite)
    info = meta.adaptation["applied"]
    click.echo(
        f"adapted to {info['n_images']} image(s) of {image_dir} ({method}, {info['layers']} layers); "
        f"model written to {out}/"
    )


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Model folder to write.")
@model_options
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--overwrite", is_flag=True, help="Replace OUT even if it holds other files.")
def calibrate(data_dir: Path, out: Path, model: ModelChoice, batch_size: int, overwrite: bool) -> None:
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
    from core.data import scan_dataset
    from core.site import calibrate_to_site

    scan = scan_dataset(data_dir)
    loaded = model.load()
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


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_options
@click.option(
    "--out", type=click.Path(path_type=Path), help="Report folder [default: reports/<DATA_DIR name>-stress/]."
)
@click.option(
    "--only",
    metavar="NAMES",
    help="Comma-separated perturbations to run (default: all), e.g. blur-3,noise-8.",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--overwrite", is_flag=True, help="Replace --out even if it holds files that are not a stress report.")
def stress(
    data_dir: Path, model: ModelChoice, out: Path | None, only: str | None, batch_size: int, overwrite: bool
) -> None:
    """Score a labelled folder again under blur, noise, zoom, exposure and compression changes.

    Shows how much of the accuracy survives images acquired a little
    differently (another scanner, site or year), without touching a test split:
    run it on a validation folder. Every perturbation is fixed and deterministic
    (see core/shift.py). Writes stress.json and stress.png (accuracy and recall
    per class for each perturbation).

    \b
    Example:
      python -m cli stress data/val
      python -m cli stress data/val --only blur-3,noise-8,zoom-in-1.2
    """
    from core.data import scan_dataset
    from core.reports import replace_folder
    from core.shift import (
        CLEAN,
        PERTURBATIONS,
        STRESS_FILES,
        format_stress,
        stress_scan,
        unknown_names,
        write_stress_report,
    )

    names = [CLEAN, *PERTURBATIONS]
    if only:
        names = [CLEAN, *[n.strip() for n in only.split(",") if n.strip() and n.strip() != CLEAN]]
        bad = unknown_names(names)
        if bad:
            raise click.BadParameter(f"unknown {bad[0]!r}; choose from {', '.join(PERTURBATIONS)}", param_hint="--only")
    scan = scan_dataset(data_dir)
    loaded = model.load()
    out = out or Path("reports", data_dir.resolve().name + "-stress")
    with progress(len(scan.samples), f"scoring x{len(names)}") as bar:
        result = stress_scan(loaded, scan, names, batch_size, on_batch=bar.update)
    click.echo(format_stress(result))
    if result["skipped"]:
        click.echo(f"skipped {len(result['skipped'])} unreadable file(s); see {out / STRESS_FILES[0]}", err=True)
    with replace_folder(out, lambda name: name in STRESS_FILES, overwrite) as staging:
        write_stress_report(staging, result, title=f"{data_dir.name}: {result['n_images']} images under perturbation")
    click.echo(f"report written to {out}/")


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--class", "cls", required=True, help="Class to look at, e.g. VIRUS.")
@click.option(
    "--outcome",
    required=True,
    type=click.Choice(["TP", "FP", "FN", "TN"], case_sensitive=False),
    help="One-vs-rest outcome for that class (FN: VIRUS images called something else).",
)
@click.option(
    "--layers", "n_layers", default=3, show_default=True, type=click.IntRange(1), help="Explain the last N conv layers."
)
@click.option("--limit", default=24, show_default=True, type=click.IntRange(1), help="At most this many images.")
@click.option("--per-page", default=6, show_default=True, type=click.IntRange(1, 50), help="Rows per PNG page.")
@click.option(
    "--explain",
    type=click.Choice(["predicted", "true"]),
    default="predicted",
    show_default=True,
    help="Explain the predicted class or the true class.",
)
@click.option("--method", type=click.Choice(["gradcam", "gradcam++"]), default="gradcam", show_default=True)
@click.option("--alpha", default=0.4, show_default=True, type=click.FloatRange(0, 1), help="Heatmap opacity.")
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
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--overwrite", is_flag=True, help="Replace --out even if it holds files that are not a gallery.")
@model_options
def gallery(
    data_dir: Path,
    cls: str,
    outcome: str,
    n_layers: int,
    limit: int,
    per_page: int,
    explain: str,
    method: str,
    alpha: float,
    predictions: Path | None,
    out: Path | None,
    batch_size: int,
    overwrite: bool,
    model: ModelChoice,
) -> None:
    """Grad-CAM gallery of one class's TP / FP / FN / TN: paged PNG grids plus index.html.

    Each row shows the X-ray and one overlay per explained layer, titled with the
    file name, true and predicted class and probability. Most confident first.

    \b
    Examples:
      python -m cli gallery data/test --class VIRUS --outcome FN
      python -m cli gallery data/test --class BACTERIA --outcome FP --layers 1 \\
          --predictions reports/test/predictions.csv
    """
    from core.data import scan_dataset
    from core.errors import DataError
    from core.evaluation import GALLERY_DIR, evaluate_scan, read_predictions
    from core.gallery import is_gallery_entry, render_pages, select, write_index
    from core.inference import Explainer
    from core.reports import replace_folder

    if predictions and not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    scan = None if predictions else scan_dataset(data_dir)
    loaded = model.load()
    classes = loaded.meta.classes
    cls, outcome = cls.upper(), outcome.upper()
    if cls not in classes:
        raise click.BadParameter(f"choose one of {', '.join(classes)}", param_hint="--class")
    if scan is None:
        preds = read_predictions(predictions, classes)
        root = data_dir
    else:
        root = scan.root
        with progress(len(scan.samples), "scoring") as bar:
            preds = evaluate_scan(loaded, scan, batch_size, on_batch=bar.update).predictions
    chosen = select(preds, classes, cls, outcome)
    shown = chosen[:limit]
    out = out or _default_out(data_dir, GALLERY_DIR, f"{cls}_{outcome}")
    title = f"{cls} {outcome}: {len(chosen)} image(s), explaining the {explain} class"
    explainer = Explainer(loaded, method=method)
    with replace_folder(out, is_gallery_entry, overwrite) as staging, progress(len(shown), "explaining") as bar:
        pages, failed = render_pages(
            explainer, shown, root, staging, n_layers, per_page, explain, alpha, title, on_page=bar.update
        )
        for name, reason in failed:
            click.echo(f"skipped {name}: {reason}", err=True)
        summary = f"{len(chosen)} image(s) with outcome {outcome} for class {cls}; showing {len(shown) - len(failed)}."
        write_index(staging, pages, title, summary)
    click.echo(summary)
    click.echo(f"{len(pages)} page(s) written; open {out / 'index.html'}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--layers", "n_layers", default=3, show_default=True, type=click.IntRange(1), help="Explain the last N conv layers."
)
@click.option(
    "--cam-out", type=click.Path(path_type=Path, file_okay=False), help="Write <name>_gradcam.png overlays here."
)
@click.option("--explain", "target", help="Class to explain [default: the predicted one].")
@click.option("--method", type=click.Choice(["gradcam", "gradcam++"]), default="gradcam", show_default=True)
@click.option("--alpha", default=0.4, show_default=True, type=click.FloatRange(0, 1), help="Heatmap opacity.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@model_options
def predict(
    images: tuple[Path, ...],
    n_layers: int,
    cam_out: Path | None,
    target: str | None,
    method: str,
    alpha: float,
    as_json: bool,
    model: ModelChoice,
) -> None:
    """Class probabilities for each image, with Grad-CAM overlays when asked.

    Any image file works: JPEG, PNG (8/16 bit), BMP or DICOM, any size. A file
    that cannot be read gives a one-line error and exit code 1 (the others are
    still reported).

    \b
    Examples:
      python -m cli predict xray.jpeg
      python -m cli predict a.png b.dcm --cam-out cams/ --json
    """
    from core.errors import ImageLoadError
    from core.images import read_image
    from core.inference import Explainer
    from core.plots import gallery_figure
    from core.reports import save_figure

    explainer = Explainer(model.load(), method=method)
    results, failures = [], 0
    for path in images:
        try:
            rgb = read_image(path)
        except ImageLoadError as exc:
            click.echo(f"error: {exc}", err=True)
            failures += 1
            continue
        e = explainer.explain([rgb], n_layers=n_layers, target=target, alpha=alpha, max_side=1024)[0]
        record: dict[str, Any] = {"file": str(path), "predicted": e.predicted, "probabilities": e.probabilities}
        if cam_out:
            row = {
                "image": e.image,
                "overlays": e.overlays,
                "layers": e.layer_names,
                "caption": f"{path.name}\n{e.predicted} ({e.probabilities[e.predicted]:.0%}), explaining {e.explained}",
            }
            record["gradcam"] = str(save_figure(gallery_figure([row]), cam_out / f"{path.stem}_gradcam.png"))
        results.append(record)
        if not as_json:
            probs = "  ".join(f"{c} {p:6.1%}" for c, p in e.probabilities.items())
            click.echo(f"{path}\t{e.predicted}\t{probs}")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if failures:
        sys.exit(EXIT_ERROR)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Model folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT folder.")
@click.option(
    "--backbone-weights",
    envvar=ENV_BACKBONE_WEIGHTS,
    default="imagenet",
    show_default=True,
    help="'imagenet' (Keras download) or a local MobileNetV2 no-top .h5 file [env: PNEUMOCAM_BACKBONE_WEIGHTS].",
)
@click.option("--epochs", default=50, show_default=True, type=click.IntRange(1), help="Baseline: at most N epochs.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1), help="Baseline batch size.")
@click.option("--lr", "learning_rate", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--patience", default=5, show_default=True, type=click.IntRange(1), help="Baseline early stopping.")
@click.option(
    "--fine-tune-from",
    default="145",
    show_default=True,
    help="Unfreeze the backbone from this layer index (as in a standalone MobileNetV2); 'none' skips stage 2.",
)
@click.option("--fine-tune-epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option("--fine-tune-batch-size", default=300, show_default=True, type=click.IntRange(1))
@click.option(
    "--fine-tune-lr-divisor",
    default=100.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Stage-2 lr = lr / this.",
)
@click.option(
    "--fine-tune-patience", type=click.IntRange(1), help="Stage-2 early stopping [default: none, all epochs run]."
)
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 1024), help="Model input size.")
@click.option(
    "--width-multiplier",
    "alpha",
    default="1.0",
    show_default=True,
    type=click.Choice(["0.35", "0.5", "0.75", "1.0", "1.3", "1.4"]),
    help="MobileNetV2 alpha (must match --backbone-weights).",
)
@click.option("--pooling", type=click.Choice(["max", "avg"]), default="max", show_default=True)
@click.option("--dropout", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--dense", "dense_units", default="128", show_default=True, help="Hidden ReLU layer sizes, e.g. 256,64.")
@click.option(
    "--rotation", default=0.1, show_default=True, type=click.FloatRange(0, 0.5), help="RandomRotation factor."
)
@click.option("--views", default=3, show_default=True, type=click.IntRange(1), help="Augmented views cached per image.")
@click.option(
    "--augment",
    type=click.Choice(AUGMENTATIONS),
    default="seed",
    show_default=True,
    help="seed: flips and rotations; acquisition: also zoom, resolution, blur, gamma, contrast and noise; "
    "invariance: also resampling filters, scale and JPEG quality.",
)
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0.05, 0.45))
@click.option("--label-smoothing", default=0.0, show_default=True, type=click.FloatRange(0, 0.5))
@click.option("--class-weight", type=click.Choice(["balanced", "none"]), default="balanced", show_default=True)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep cached activations here.")
def train(
    data_dir: Path,
    out: Path,
    overwrite: bool,
    backbone_weights: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    fine_tune_from: str,
    fine_tune_epochs: int,
    fine_tune_batch_size: int,
    fine_tune_lr_divisor: float,
    fine_tune_patience: int | None,
    image_size: int,
    alpha: str,
    pooling: str,
    dropout: float,
    dense_units: str,
    rotation: float,
    views: int,
    augment: str,
    val_fraction: float,
    label_smoothing: float,
    class_weight: str,
    seed: int,
    cache_dir: Path | None,
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
    train.log into OUT (built in OUT.partial, moved into place at the end).

    \b
    Example:
      python -m cli train ../shared/data/chest_xray/train --out runs/seed-recipe \\
          --backbone-weights ../shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5
    """
    import logging
    import shutil
    import time

    from core.artifact import save_artifact
    from core.data import scan_dataset
    from core.model import ArchConfig
    from core.plots import training_curves_figure
    from core.preprocess import InputSpec
    from core.reports import save_figure, write_json
    from core.training import EpochLog, TrainConfig, train_model

    try:
        units = tuple(int(u) for u in dense_units.split(",") if u.strip())
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 256,64", param_hint="--dense") from None
    try:
        ft_from = None if fine_tune_from.lower() == "none" else int(fine_tune_from)
    except ValueError:
        raise click.BadParameter("a layer index or 'none'", param_hint="--fine-tune-from") from None
    if backbone_weights != "imagenet" and not Path(backbone_weights).is_file():
        raise click.BadParameter(f"{backbone_weights} is not a file", param_hint="--backbone-weights")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise click.UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")
    scan = scan_dataset(data_dir)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        fine_tune_from=ft_from,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_batch_size=fine_tune_batch_size,
        fine_tune_lr_divisor=fine_tune_lr_divisor,
        fine_tune_patience=fine_tune_patience,
        views=views,
        val_fraction=val_fraction,
        seed=seed,
        class_weight=class_weight,
        label_smoothing=label_smoothing,
        augment=augment,
    )
    arch = ArchConfig(alpha=float(alpha), pooling=pooling, dropout=dropout, dense_units=units, rotation=rotation)
    spec = InputSpec(height=image_size, width=image_size)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = logging.getLogger("pneumocam")
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(partial / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.info("train %s -> %s", data_dir, out)
    log.info("config %s", json.dumps({"train": cfg.to_dict(), "arch": arch.to_dict(), "backbone": backbone_weights}))
    started = time.perf_counter()
    with progress(len(scan.samples), "backbone activations (once)") as bar:
        result = train_model(
            scan,
            cfg,
            arch,
            spec,
            backbone_weights=backbone_weights,
            cache_dir=cache_dir,
            on_batch=bar.update,
            callbacks=[EpochLog(log)],
        )
    minutes = (time.perf_counter() - started) / 60
    result.meta.training["wall_minutes"] = round(minutes, 1)
    log.info("done in %.1f min", minutes)
    log.info(
        "validation %s",
        json.dumps({k: v for k, v in result.meta.metrics["validation"].items() if k != "calibration_bins"}),
    )
    log.info("validation under perturbation %s", json.dumps(result.meta.metrics["validation_shift"]))
    save_artifact(result.model, result.meta, partial, source_stats=result.source_stats)
    write_json(partial / "history.json", result.history)
    save_figure(training_curves_figure(result.history), partial / "training_curves.png")
    log.removeHandler(handler)
    handler.close()
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    val = result.meta.metrics["validation"]
    click.echo(
        f"validation accuracy {val['accuracy']:.1%}, macro F1 {val['macro_f1']:.3f} "
        f"({val['n_images']} images); {minutes:.1f} min; model written to {out}/"
    )
    shift = result.meta.metrics["validation_shift"]
    click.echo(
        f"validation under perturbation: mean accuracy {shift['mean_accuracy']:.1%}, worst {shift['worst']}; "
        f"re-encoding/resampling changed at most {shift['max_changed_encoding']:.1%} of calls"
    )


@main.command("model-card")
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
def model_card_cmd(model_dir: Path) -> None:
    """Write MODEL_DIR/README.md, the Hugging Face model card, from its model.json.

    Run it after `evaluate --record-as test` so the card carries the test figures.

    \b
    Example:
      python -m cli model-card weights/
    """
    from core.artifact import read_meta
    from core.card import model_card
    from core.reports import write_text

    path = write_text(model_dir / "README.md", model_card(read_meta(model_dir)))
    click.echo(f"model card written to {path}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--repo-id", required=True, help="Target model repo, e.g. org/pneumocam (created when missing).")
@click.option("--revision-message", default="", help="Commit message on the Hub.")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--dry-run", is_flag=True, help="Check the model and list what would be uploaded; upload nothing.")
def publish(folder: Path, repo_id: str, revision_message: str, private: bool, dry_run: bool) -> None:
    """Upload a model folder (model.keras, model.json, model card...) to the Hugging Face Hub.

    The model is loaded first (safe mode, SHA-256 and metadata checked), so a
    broken model is never published. Prints the commit hash to pin in the Space
    (PNEUMOCAM_REVISION). Needs network and a token (HF_TOKEN or
    `huggingface-cli login`).

    \b
    Example:
      python -m cli publish weights/ --repo-id org/pneumocam --dry-run
      python -m cli publish weights/ --repo-id org/pneumocam --revision-message "fine-tuned, 3 views"
    """
    from core.artifact import load_artifact
    from core.publish import model_files, upload

    files = model_files(folder)
    load_artifact(folder)
    if dry_run:
        for f in files:
            click.echo(f"{f.relative_to(folder).as_posix()}\t{f.stat().st_size:,} bytes")
        click.echo(f"dry run: {len(files)} file(s) would be uploaded to {repo_id}")
        return
    pairs = [(f, f.relative_to(folder).as_posix()) for f in files]
    commit = upload(pairs, repo_id, "model", revision_message, private=private)
    click.echo(commit)
    click.echo(f"uploaded {len(files)} file(s) to {repo_id}; pin revision {commit}", err=True)


@main.command("deploy-space")
@click.option("--space-id", required=True, help="Target Space, e.g. org/pneumocam (created when missing).")
@click.option("--message", default="", help="Commit message on the Hub.")
@click.option("--dry-run", is_flag=True, help="List the files that would be uploaded; upload nothing.")
def deploy_space(space_id: str, message: str, dry_run: bool) -> None:
    """Upload the Gradio Space: core/, space/app.py and config, requirements.txt, the Space card.

    The Space pulls its model from the Hub repo and revision in space/config.json
    (set them after `publish`). Needs network and a token (HF_TOKEN or
    `huggingface-cli login`).

    \b
    Example:
      python -m cli deploy-space --space-id org/pneumocam --dry-run
    """
    from core.publish import space_files, upload

    pairs = space_files()
    if dry_run:
        for local, name in pairs:
            click.echo(f"{name}\t{local.stat().st_size:,} bytes")
        click.echo(f"dry run: {len(pairs)} file(s) would be uploaded to Space {space_id}")
        return
    commit = upload(pairs, space_id, "space", message, space_sdk="gradio")
    click.echo(commit)
    click.echo(f"uploaded {len(pairs)} file(s) to Space {space_id}", err=True)
