"""PneumoCAM web demo (Gradio): upload a chest X-ray, see the call and where the model looked.

Run locally with ``python space/app.py`` (honours GRADIO_SERVER_PORT / GRADIO_SERVER_NAME).
The model comes from the Hugging Face Hub repo and pinned revision in
``space/config.json`` (PNEUMOCAM_REPO_ID / PNEUMOCAM_REVISION override), falling
back to the bundled ``weights/``. All image and model work is in ``core/``
(imported as ``pneumocam``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _import_checkout() -> None:
    """Serve this checkout's ``core/`` under its import name: a Space uploads the folder and installs no package."""
    core = ROOT / "core" / "__init__.py"
    if "pneumocam" in sys.modules or not core.is_file():
        return
    spec = importlib.util.spec_from_file_location("pneumocam", core, submodule_search_locations=[str(core.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pneumocam"] = module
    spec.loader.exec_module(module)


_import_checkout()

from pneumocam.runtime import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import gradio as gr  # noqa: E402

from pneumocam.atomic import write_bytes  # noqa: E402
from pneumocam.deploy.space_config import SpaceConfig, example_files, load_space_config, model_line  # noqa: E402
from pneumocam.errors import ImageLoadError, PneumoCAMError  # noqa: E402
from pneumocam.explain.explainer import Explainer, Explanation  # noqa: E402
from pneumocam.explain.overlay import colour_scale, encode_png  # noqa: E402
from pneumocam.explain.shown import (  # noqa: E402
    FAILS_SANITY,
    map_title,
    method_label,
    offered_methods,
    sanity_status,
)
from pneumocam.model.validity import NOT_MEANINGFUL, WARNING  # noqa: E402
from pneumocam.options import CAM_METHODS, MAX_SHOWN_LAYERS  # noqa: E402
from pneumocam.scoring.predictor import load_predictor  # noqa: E402

UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom"]
PREDICTED = "predicted class"
DETAILS = "Probabilities and heatmaps"
SHOW_ANYWAY = "Show anyway: the probabilities and heatmaps of a call that is not meaningful"

ABOUT = """
**How to read the heatmaps.** The slider and the first panel show the map our heatmap audit
checked (named "audited default"): red regions raised the score of the explained class the
most, blue ones barely mattered. The panels after it are the Grad-CAM of each of the model's
last convolutional layers (deepest last), as the seed project showed them; deeper layers are
coarser but closer to the decision, and a layer with no evidence for the class says so.
A heatmap on the lungs is what you hope for; one on text markers, tubes or the image border
means the call rests on something other than the lungs.

**The prediction set** lists the classes this X-ray may belong to: for X-rays like the ones the
model was checked on, the set holds the true class 9 times in 10. Two classes in the set mean the
model cannot tell them apart for this X-ray. At a new hospital that figure is not guaranteed until
the hospital refits the set on its own labelled X-rays.

**Research demo, not a medical device.** Trained on pediatric (1-5 years) chest X-rays of one
hospital (Kermany et al. 2018, CC BY 4.0); it must not be used for diagnosis or treatment.
"""


class OverlayFiles:
    """Overlays as PNG files in per-request folders, removed after ``keep_s`` seconds.

    Handing Gradio finished files (rather than arrays it encodes into one shared,
    content-addressed path) means two identical concurrent requests never read a
    half-rewritten image.
    """

    def __init__(self, keep_s: float = 600.0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pneumocam-overlays-"))
        self.keep_s = keep_s

    def write(self, images: list, names: list[str]) -> list[str]:
        self.prune()
        folder = Path(tempfile.mkdtemp(dir=self.root))
        return [
            str(write_bytes(folder / f"{i}_{n}.png", encode_png(img))) for i, (img, n) in enumerate(zip(images, names))
        ]

    def prune(self) -> None:
        cutoff = time.time() - self.keep_s
        for d in self.root.iterdir():
            if d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)


def shown_layers(explainer: Explainer, config: SpaceConfig) -> int:
    """Layers explained by default: the Space's setting if it has one, else the model's own."""
    return config.default_layers or explainer.predictor.meta.explain.layers


def method_choices(explainer: Explainer, everything: bool) -> list[tuple[str, str]]:
    """The CAM method menu: the methods that pass the model's sanity check, or (advanced) all, marked."""
    meta = explainer.predictor.meta
    shown = CAM_METHODS if everything else offered_methods(meta)
    return [
        (f"{method_label(m)} ({FAILS_SANITY})" if sanity_status(meta, m) is False else method_label(m), m)
        for m in shown
    ]


def headline(e: Explanation) -> str:
    """What the page leads with: the call, or for a flagged upload the warning and its reasons, never a class."""
    if not e.meaningful:
        return f"## ⚠️ {NOT_MEANINGFUL}\n\n**{WARNING}** ({'; '.join(e.validity.reasons)})."
    text = f"## {e.predicted} ({e.probabilities[e.predicted]:.0%})\n\n"
    if e.set_text:
        text += f"**{e.set_text[0].upper()}{e.set_text[1:]}.**\n\n"
    text += (
        f"The heatmaps explain **{e.explained}**. "
        f"Drag the slider over the X-ray to compare it with the {e.default.title}."
    )
    return f"{text}\n\n⚠️ {e.method_warning}" if e.method_warning else text


def build_app(explainer: Explainer, config: SpaceConfig, model_line: str) -> gr.Blocks:
    """The page: upload and options; the call (or the warning) first, then probabilities and maps, default first."""
    classes = explainer.classes
    max_layers = min(MAX_SHOWN_LAYERS, len(explainer.predictor.meta.gradcam_layers))
    default_layers = shown_layers(explainer, config)
    overlay_files = OverlayFiles()
    failing = len(method_choices(explainer, True)) > len(method_choices(explainer, False))

    def predict(
        image: str | None,
        layers: float = default_layers,
        explain: str = PREDICTED,
        opacity: float = config.default_opacity,
        method: str = explainer.method,
    ) -> tuple[dict[str, float], list[tuple[object, str]], str, tuple[str, str], gr.Accordion]:
        if not image:
            raise gr.Error("Upload a chest X-ray (PNG, JPEG, BMP or DICOM) first.")
        target = None if explain in (None, "", PREDICTED) else explain
        try:
            e = explainer.explain_file(
                image, n_layers=int(layers), target=target, opacity=float(opacity), method=method or None
            )
        except ImageLoadError as exc:
            raise gr.Error(f"Cannot use this file: {exc.reason}.") from exc
        except PneumoCAMError as exc:
            raise gr.Error(str(exc)) from exc
        names = ["default", *e.layer_names, "xray"]
        files = overlay_files.write([p.overlay for p in e.panels] + [e.image], names)
        gallery = list(zip(files, [p.caption for p in e.panels]))
        details = gr.Accordion(label=DETAILS if e.meaningful else SHOW_ANYWAY, open=e.meaningful)
        return e.probabilities, gallery, headline(e), (files[-1], files[0]), details

    def slider_label(method: str | None) -> str:
        """The slider names the map it compares with the X-ray (the default one, or the chosen method's)."""
        meta = explainer.predictor.meta
        return f"The X-ray | {map_title(meta, method or explainer.method, explainer.score)}"

    with gr.Blocks(title="PneumoCAM", delete_cache=(900, 1800)) as demo:
        gr.Markdown("# PneumoCAM: explainable pediatric chest X-ray triage")
        gr.Markdown(f"Serving: {model_line}", elem_id="model-line")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="Chest X-ray (PNG, JPEG, BMP or DICOM)", file_types=UPLOAD_TYPES)
                per_layer = "Per-layer maps after the default (last N layers)"
                layers = gr.Slider(1, max_layers, value=default_layers, step=1, label=per_layer)
                explain = gr.Dropdown([PREDICTED, *classes], value=PREDICTED, label="Class to explain")
                opacity = gr.Slider(0.0, 1.0, value=config.default_opacity, step=0.05, label="Heatmap opacity")
                method = gr.Dropdown(
                    method_choices(explainer, False), value=explainer.method, label="CAM method", elem_id="method"
                )
                advanced = gr.Checkbox(
                    False,
                    label="Advanced: also offer the CAM methods that fail the sanity check on this model",
                    visible=failing,
                )
                run = gr.Button("Classify and explain", variant="primary", elem_id="run")
                examples = example_files(config)
                if examples:
                    gr.Examples(examples, inputs=[image], label="Example X-rays (click one)", cache_examples=False)
            with gr.Column(scale=2):
                summary = gr.Markdown(label="summary", elem_id="summary")  # first: the call, or the warning
                with gr.Accordion(DETAILS, open=True, elem_id="details") as details:
                    label = gr.Label(num_top_classes=len(classes), label="Probabilities", elem_id="label")
                    slider = gr.ImageSlider(label=slider_label(None), type="filepath", elem_id="slider", height=520)
                    gr.Image(
                        colour_scale(),
                        label="Heatmap colour scale: blue, little influence on the explained class; red, the most",
                        interactive=False,
                        height=60,
                        buttons=[],
                    )
                    gallery = gr.Gallery(
                        label="The default map, then one map per layer",
                        columns=4,
                        height=420,
                        object_fit="contain",
                        format="png",
                        elem_id="cams",
                    )
        gr.Markdown(ABOUT)
        advanced.change(
            lambda everything: gr.Dropdown(choices=method_choices(explainer, everything), value=explainer.method),
            advanced,
            method,
            api_name=False,
        )
        inputs = [image, layers, explain, opacity, method]
        run.click(predict, inputs, [label, gallery, summary, slider, details], api_name="predict").then(
            lambda m: gr.ImageSlider(label=slider_label(m)), method, slider, api_name=False
        )
    return demo


def warm_up(explainer: Explainer, config: SpaceConfig) -> None:
    """Trace the model and Grad-CAM once at start-up, so the first visitor waits no longer than the others."""
    explainer.warm_up(n_layers=shown_layers(explainer, config))


def create(config: SpaceConfig | None = None) -> tuple[gr.Blocks, SpaceConfig]:
    """Load the model once (Hub at the pinned revision, else the bundled weights) and build the page."""
    config = config or load_space_config()
    predictor = load_predictor(repo_id=config.repo_id, revision=config.revision, fallback=True)
    print(f"PneumoCAM serving: {predictor.source}", flush=True)  # developer details stay in the server log
    explainer = Explainer(predictor)
    warm_up(explainer, config)
    demo = build_app(explainer, config, model_line(predictor))
    demo.queue(default_concurrency_limit=config.concurrency_limit, max_size=64)
    return demo, config


def launch_options(config: SpaceConfig) -> dict[str, object]:
    """Upload size limit, and error messages (never tracebacks) shown to the user."""
    return {"max_file_size": config.max_file_size, "show_error": True}


def main() -> None:
    demo, config = create()
    demo.launch(**launch_options(config))


if __name__ == "__main__":
    main()
