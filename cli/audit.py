"""``audit``: are the heatmaps faithful? Sanity, ROAD, blank maps and border shortcuts, as served."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pneumocam.options import AUDIT_LIMIT, AUDIT_SEED, CAM_METHODS, CAM_SCORES, DEFAULT_LAYERS, MAX_SHOWN_LAYERS

if TYPE_CHECKING:
    from pneumocam.explain.audit_result import AuditResult

from .common import (
    ModelChoice,
    default_out,
    mlflow_option,
    model_options,
    overwrite_option,
    progress,
    tracked_command,
)


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_options
@click.option(
    "--methods",
    default=",".join(CAM_METHODS),
    show_default=True,
    help="Comma-separated CAM methods to audit.",
)
@click.option(
    "--scores",
    default="",
    help=f"Comma-separated scores each method explains ({', '.join(CAM_SCORES)}) [default: the model's own, "
    "model.json explain.score]. Both let the audit choose the score too, in twice the time.",
)
@click.option(
    "--layers",
    "n_layers",
    default=DEFAULT_LAYERS,
    show_default=True,
    type=click.IntRange(1, MAX_SHOWN_LAYERS),
    help="The multi-layer set audited: the last N of the model's conv layers.",
)
@click.option("--limit", default=AUDIT_LIMIT, show_default=True, type=click.IntRange(1), help="Audit this many images.")
@click.option(
    "--seed", default=AUDIT_SEED, show_default=True, type=int, help="Which images (a seeded sample) and the random map."
)
@click.option(
    "--subset",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Only the files this list names (one per line, relative to DATA_DIR), e.g. a model's validation.txt.",
)
@click.option("--out", type=click.Path(path_type=Path), help="Report folder [default: reports/<DATA_DIR name>/audit/].")
@click.option(
    "--record",
    is_flag=True,
    help="Make the recommendation the (local) model's default heatmaps: method and layers in its model.json, "
    "with the audit's table for the model card.",
)
@overwrite_option("--out")
@mlflow_option
def audit(
    data_dir: Path,
    model: ModelChoice,
    methods: str,
    scores: str,
    n_layers: int,
    limit: int,
    seed: int,
    subset: Path | None,
    out: Path | None,
    overwrite: bool,
    record: bool,
    mlflow_uri: str | None,
) -> None:
    """Check that the heatmaps show what the model uses, for every CAM method and layer set.

    On a seeded sample of DATA_DIR's images (labels unused), scored and
    explained as every entry point serves them (input pipeline, test-time
    views); each map explains the predicted class, through the model's score:

    \b
    - sanity (Adebayo et al. 2018): the head is randomised; a candidate and
      layer pass when the median |Spearman rho| with the trained map drops
      below 0.3. For the model's default, Conv_1, block_16 and block_15 follow;
    - faithfulness (ROAD, Rong et al. 2022): 10-90 % of the image removed in
      the map's order, most or least relevant first, and filled from its
      neighbours by noisy linear imputation; the areas under the class
      probability, against a random and a centred map;
    - blank maps: how often a set's map holds no evidence for the class;
    - shortcuts: the share of each map in the outer 10 % band of the image
      (markers, text, borders); images above half are flagged and shown.

    Layer sets: the last N explainable layers (their mean map), the deepest
    alone (7x7 at 224 px), and the deepest 14x14 layer fused with the
    deepest. Recommends the widest ROAD gap (least- minus most-relevant-first
    area) that passes sanity; --record makes it the model's default. Writes
    audit.json, sanity.png, curves.png, border_flagged.png and index.html.

    \b
    Example:
      python -m cli audit data/test --limit 100
      python -m cli audit ../shared/data/chest_xray/train --subset weights/validation.txt
      python -m cli audit data/test --methods gradcam,layercam --layers 1
      python -m cli audit data/test --scores logit,log-probability
    """
    from pneumocam.atomic import claim_output
    from pneumocam.explain.audit import AuditPlan, audit_images, audit_sample
    from pneumocam.images.data import scan_dataset
    from pneumocam.images.data import subset as data_subset
    from pneumocam.reports.audit_report import AUDIT_FILES, audit_metrics, format_audit, write_audit

    if record and model.is_hub():
        raise click.UsageError("--record needs a local model folder (--model), not a Hub download")
    plan = AuditPlan(methods=_names(methods), scores=_names(scores), n_layers=n_layers, seed=seed)
    scan = scan_dataset(data_dir)
    if subset:
        scan = data_subset(scan, subset)
    out = out or default_out(data_dir, "audit")
    write = claim_output(out, lambda name: name in AUDIT_FILES, overwrite)
    paths = audit_sample(scan.samples, limit, seed)
    predictor = model.load()
    from pneumocam.explain.sanity import stages

    with tracked_command(mlflow_uri, "audit", predictor, data_dir, out.name) as run:
        with progress(len(paths) + len(stages(predictor.model, plan.blocks)), "auditing") as bar:
            result = audit_images(predictor, paths, plan, on_step=bar.update)
        result = replace(result, data_dir=data_dir.resolve().name + (f", the files in {subset.name}" if subset else ""))
        click.echo(format_audit(result))
        title = f"Heatmap audit: {data_dir.name}, {result.n_images} images"
        with write() as staging:
            write_audit(staging, result, predictor, title=title)
        click.echo(f"report written to {out}/")
        if run:
            run.params({"plan": plan.to_dict(), "limit": limit, "subset": subset.name if subset else ""})
            run.metrics(audit_metrics(result))
            rec = result.recommendation
            run.tags({"recommended": f"{rec.method}, {rec.layer_set}"})
            run.artifacts(out)
    if record:
        _record(result, predictor)


def _record(result: AuditResult, predictor: Any) -> None:
    """``--record``: the recommendation becomes the model folder's default heatmaps (model.json ``explain``)."""
    from pneumocam.explain.audit_choice import explain_defaults
    from pneumocam.model.artifact import record_explain

    layers, defaults = explain_defaults(result, predictor)
    record_explain(predictor.directory, layers, defaults)
    click.echo(
        f"default heatmaps of {predictor.directory}: {defaults.method} explaining the {defaults.score}, on "
        f"{', '.join(defaults.layer_names or layers[-defaults.layers :])}; recorded in model.json"
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())
