"""``predict``: probabilities and Grad-CAM overlays for single images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import (
    EXIT_ERROR,
    ModelChoice,
    cam_method_option,
    command,
    layers_option,
    model_options,
    opacity_option,
)
from core.options import PREDICT_MAX_SIDE


@command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@layers_option
@click.option(
    "--cam-out", type=click.Path(path_type=Path, file_okay=False), help="Write <name>_gradcam.png overlays here."
)
@click.option("--explain", "target", help="Class to explain [default: the predicted one].")
@cam_method_option
@opacity_option
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
    from core.atomic import save_figure
    from core.errors import ImageLoadError
    from core.images import read_image
    from core.inference import Explainer
    from core.plots import gallery_figure

    explainer = Explainer(model.load(), method=method)
    results, failures = [], 0
    for path in images:
        try:
            rgb = read_image(path)
        except ImageLoadError as exc:
            click.echo(f"error: {exc}", err=True)
            failures += 1
            continue
        e = explainer.explain([rgb], n_layers=n_layers, target=target, alpha=alpha, max_side=PREDICT_MAX_SIDE)[0]
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
