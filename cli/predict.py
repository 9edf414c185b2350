"""``predict``: probabilities and Grad-CAM overlays for single images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from pneumocam.options import PREDICT_MAX_SIDE

from .common import (
    EXIT_ERROR,
    ModelChoice,
    batch_size_option,
    cam_method_option,
    explain_option,
    layers_option,
    model_options,
    opacity_option,
    progress,
    views_option,
)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@layers_option
@click.option(
    "--cam-out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write <name>_gradcam.png overlays here, in the inputs' subfolders (Grad-CAM runs only then).",
)
@explain_option("'predicted' or a class name")
@cam_method_option
@opacity_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@batch_size_option()
@model_options
@views_option
def predict(
    images: tuple[Path, ...],
    n_layers: int | None,
    cam_out: Path | None,
    target: str | None,
    method: str | None,
    opacity: float,
    as_json: bool,
    batch_size: int,
    model: ModelChoice,
) -> None:
    """Class probabilities for each image (or each image in a folder), with Grad-CAM overlays when asked.

    Any image file works: JPEG, PNG (8/16 bit), BMP or DICOM, any size; a
    folder is searched recursively. A file that cannot be read is listed with
    its reason (in the JSON too) and the exit code is 1; the others are still
    reported.

    Every call carries its prediction set (prediction_set, set_level in the
    JSON): the classes the X-ray may belong to at the stated level (90 %: the
    set holds the true class for 90 % of images like the validation ones; a
    site's labelled sample makes it hold there, see calibrate).

    Every call says whether the image looks like the training X-rays:
    in_distribution, ood_score (above 1: less like them than 95 % of the
    validation X-rays) and, in the JSON, the reasons (a colour image, a DICOM
    of another modality, body part or view, an unusual score). A flagged image
    is still scored, with a warning on stderr: its call is not meaningful.

    Each overlay page shows the X-ray, the model's default map (the audited
    method and layer set, framed and named), then one map per layer.

    \b
    Examples:
      python -m cli predict xray.jpeg
      python -m cli predict a.png b.dcm --cam-out cams/ --json
      python -m cli predict scans/ --json > calls.json
    """
    from pneumocam.images.data import distinct_names, list_images

    files = [f for p in images for f in (list_images(p) if p.is_dir() else [p])]
    if not files:
        raise click.BadParameter("no image files found", param_hint="IMAGES")
    predictor = model.load()
    classes = predictor.meta.classes
    if target not in ("predicted", *classes):
        raise click.BadParameter(f"'predicted' or one of {', '.join(classes)}", param_hint="--explain")
    options = {"n_layers": n_layers, "target": None if target == "predicted" else target, "opacity": opacity}
    calls = _Calls(predictor, as_json)
    with progress(len(files), "predicting", quiet=len(files) <= batch_size) as bar:
        if cam_out:
            names = dict(zip(files, distinct_names(files)))  # a/x.png and b/x.png get two overlays, not one
            _with_overlays(predictor, files, names, cam_out, method, options, batch_size, bar.update, calls)
        else:
            for path, got in zip(files, predictor.score(files, batch_size, bar.update).in_order(files)):
                if isinstance(got, str):
                    calls.failed(path, got)
                else:
                    calls.add(path, {c: float(v) for c, v in zip(classes, got[0])}, got[1])
    calls.finish()


def _with_overlays(
    predictor: Any,
    files: list[Path],
    names: dict[Path, Path],
    cam_out: Path,
    method: str | None,
    options: dict[str, Any],
    batch_size: int,
    on_batch: Any,
    calls: _Calls,
) -> None:
    """Explain each file and write its overlay page under ``cam_out`` (by its distinct name), then report the call."""
    from pneumocam.atomic import write_bytes
    from pneumocam.explain.explainer import Explainer
    from pneumocam.explain.overlay import encode_png
    from pneumocam.explain.pages import compose_page, explanation_row
    from pneumocam.explain.shown import method_warning
    from pneumocam.model.validity import FLAG_MARK

    explainer = Explainer(predictor, method=method)
    warning = method_warning(predictor.meta, explainer.method, explainer.score)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    for path, e, reason in explainer.explain_files(files, batch_size, on_batch, max_side=PREDICT_MAX_SIDE, **options):
        if e is None:
            calls.failed(path, reason)
            continue
        mark = "" if e.validity.in_distribution else f"\n{FLAG_MARK}"
        caption = f"{path.name}\n{e.predicted} ({e.probabilities[e.predicted]:.0%}), explaining {e.explained}"
        png = cam_out / names[path].with_name(f"{names[path].stem}_gradcam.png")
        page = compose_page([explanation_row(e, caption + mark)])
        calls.add(path, e.probabilities, e.validity, str(write_bytes(png, encode_png(page))), e.default.caption)


class _Calls:
    """One predict run's calls: printed as table rows as they come, or gathered into one JSON document."""

    def __init__(self, predictor: Any, as_json: bool) -> None:
        self.predictor, self.as_json, self.results = predictor, as_json, []
        self.classes = predictor.meta.classes
        if not as_json:
            head = ["file", "predicted", *[f"p_{c}" for c in self.classes], "in_distribution", "ood_score"]
            level = predictor.sets.level if predictor.sets else None
            click.echo("\t".join(head + ([f"set_{level:.0%}"] if level else [])))

    def add(
        self, path: Path, probs: dict[str, float], validity: Any, gradcam: str | None = None, first_map: str = ""
    ) -> None:
        from pneumocam.model.conformal import SET_SEP
        from pneumocam.model.validity import NOT_MEANINGFUL, NOTE_SEP, WARNING

        predicted = max(probs, key=probs.get)
        record: dict[str, Any] = {"file": str(path), "predicted": predicted, "probabilities": probs}
        named = self.predictor.prediction_set(probs)
        if named is not None:
            record |= {"prediction_set": named, "set_level": self.predictor.sets.level}
        record |= validity.to_dict()
        if gradcam:
            record |= {"gradcam": gradcam, "gradcam_first_map": first_map}
        self.results.append(record)
        if not self.as_json:
            score = "" if validity.ood_score is None else f"{validity.ood_score:.2f}"
            cells = [str(path), predicted, *[f"{probs[c]:.4f}" for c in self.classes]]
            cells += [str(validity.in_distribution), score] + ([SET_SEP.join(named)] if named is not None else [])
            click.echo("\t".join(cells))
            if not validity.in_distribution:
                why = f"{NOT_MEANINGFUL.lower()}: {WARNING} ({NOTE_SEP.join(validity.reasons)})"
                click.echo(f"warning: {path}: {why}", err=True)

    def failed(self, path: Path, reason: str) -> None:
        self.results.append({"file": str(path), "error": reason})
        click.echo(f"error: {path}: {reason}", err=True)

    def finish(self) -> None:
        """The JSON document, if asked for; exit code 1 if any file could not be read."""
        if self.as_json:
            click.echo(json.dumps(self.results, indent=2))
        if any("error" in r for r in self.results):
            sys.exit(EXIT_ERROR)
