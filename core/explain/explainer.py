"""Explaining a few images: probabilities, Grad-CAM overlays and validity, one compiled CAM per choice of layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumocam.config import check_cam_method, check_cam_score
from pneumocam.errors import ImageLoadError, InputError
from pneumocam.explain.gradcam import METHODS, BaseCAM
from pneumocam.explain.overlay import blend, colorize, mean_map
from pneumocam.explain.shown import layer_titles, map_title, method_warning
from pneumocam.images.preprocess import fit_within
from pneumocam.images.readers import Header, read_image_and_header
from pneumocam.model.conformal import in_words
from pneumocam.model.validity import Validity, call_text, input_reasons, verdict
from pneumocam.options import DEFAULT_BATCH_SIZE, DEFAULT_OPACITY
from pneumocam.scoring.predictor import Predictor


@dataclass(frozen=True)
class Panel:
    """One heatmap as a page shows it: its title, the [0, 1] map and overlay at display size, and whether it is blank.

    A blank map (no positive evidence for the explained class) is drawn as the plain X-ray with a caption
    saying so, never as an empty blue panel.
    """

    title: str
    layers: tuple[str, ...]
    heatmap: np.ndarray
    overlay: np.ndarray
    empty: bool
    explained: str

    @property
    def caption(self) -> str:
        if not self.empty:
            return self.title
        where = "at this layer" if len(self.layers) == 1 else "in these layers"
        return f"{self.title}: no evidence for {self.explained} {where}"


@dataclass
class Explanation:
    """One image explained: probabilities, validity, the default map first, then one map per shown layer."""

    probabilities: dict[str, float]
    predicted: str
    explained: str
    image: np.ndarray  # RGB uint8 display copy
    default: Panel  # the model's default map (the audited method and layer set, averaged)
    layers: list[Panel]  # one panel per shown layer, deepest last
    validity: Validity
    method_warning: str = ""  # the chosen method failed sanity on this model
    prediction_set: list[str] | None = None  # most probable first (pneumocam.model.conformal); None: no set rule
    set_level: float | None = None

    @property
    def set_text(self) -> str:
        """The prediction set in words ("bacterial or viral pneumonia: the model cannot tell which ..."), or ""."""
        if self.prediction_set is None or self.set_level is None:
            return ""
        return in_words(self.prediction_set, self.set_level, list(self.probabilities))

    @property
    def panels(self) -> list[Panel]:
        """What a page shows, in order: the default map, then each layer's."""
        return [self.default, *self.layers]

    @property
    def heatmap(self) -> np.ndarray:
        return self.default.heatmap

    @property
    def overlay(self) -> np.ndarray:
        return self.default.overlay

    @property
    def layer_names(self) -> list[str]:
        return [p.layers[0] for p in self.layers]

    @property
    def heatmaps(self) -> list[np.ndarray]:
        return [p.heatmap for p in self.layers]

    @property
    def overlays(self) -> list[np.ndarray]:
        return [p.overlay for p in self.layers]

    @property
    def meaningful(self) -> bool:
        """Whether the call means anything: the image looks like the X-rays the model was trained on."""
        return self.validity.in_distribution

    @property
    def summary(self) -> str:
        """One paragraph a reader sees first; a flagged image leads with the warning, not a class."""
        call = f"{call_text(self.probabilities, self.validity)}; the heatmaps explain {self.explained}."
        sets = f" {self.set_text[0].upper()}{self.set_text[1:]}." if self.set_text and self.meaningful else ""
        return f"{call}{sets} {self.method_warning}".strip()


def draw_panel(
    title: str,
    image: np.ndarray,
    maps: dict[str, tuple[np.ndarray, bool]],
    explained: str,
    opacity: float,
) -> Panel:
    """A panel from a layer set's ``{layer: (map, empty)}``: their mean map over ``image``, blank only if all are."""
    heat = mean_map([m for m, _ in maps.values()], *image.shape[:2])
    empty = all(e for _, e in maps.values())
    overlay = image.copy() if empty else blend(image, colorize(heat), opacity)
    return Panel(title, tuple(maps), heat, overlay, empty, explained)


class Explainer:
    """A predictor model plus its CAM methods, compiled once per choice of layers.

    Method, explained score and layers default to the model's own (``model.json`` ``explain``).
    """

    def __init__(self, predictor: Predictor, method: str | None = None, score: str | None = None) -> None:
        self.predictor = predictor
        self.method = check_cam_method(method or predictor.meta.explain.method)
        self.score = check_cam_score(score or predictor.meta.explain.score)
        self._cams: dict[tuple[str, tuple[str, ...]], BaseCAM] = {}

    @property
    def classes(self) -> list[str]:
        return self.predictor.meta.classes

    def cam(self, layer_names: Sequence[str], method: str | None = None) -> BaseCAM:
        """The compiled CAM for these layers and method (default: the explainer's), built on first use."""
        key = (check_cam_method(method or self.method), tuple(layer_names))
        if key not in self._cams:
            self._cams[key] = METHODS[key[0]].serving(self.predictor, list(key[1]), self.score)
        return self._cams[key]

    def warm_up(self, n_layers: int | None = None) -> None:
        """Trace the forward pass and the CAM once on a grey image, so the first real call waits no longer."""
        blank = np.full((*self.predictor.meta.input.shape[:2], 3), 128, np.uint8)
        self.explain([blank], n_layers=n_layers)

    def explain_file(
        self,
        path: str | Path,
        n_layers: int | None = None,
        target: str | None = None,
        opacity: float = DEFAULT_OPACITY,
        max_side: int | None = None,
        method: str | None = None,
    ) -> Explanation:
        """Read one file (any supported format) and explain it; unreadable files raise ImageLoadError."""
        rgb, header = read_image_and_header(path)
        return self.explain([rgb], n_layers, target, opacity, max_side, method, [header])[0]

    def explain_files(
        self,
        paths: Sequence[str | Path],
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_batch: Callable[[int], None] | None = None,
        **options: Any,
    ) -> Iterator[tuple[Path, Explanation | None, str]]:
        """Explain many files a batch at a time, in order: ``(path, explanation, "")``, or ``(path, None, reason)``
        for a file that could not be read. ``options`` go to :meth:`explain`; ``on_batch(n)`` follows progress.
        """
        for start in range(0, len(paths), batch_size):
            chunk = [Path(p) for p in paths[start : start + batch_size]]
            decoded: list[tuple[np.ndarray, Header] | str] = []
            for path in chunk:
                try:
                    decoded.append(read_image_and_header(path))
                except ImageLoadError as exc:
                    decoded.append(exc.reason)
            read = [d for d in decoded if not isinstance(d, str)]
            done = iter(self.explain([d[0] for d in read], headers=[d[1] for d in read], **options))
            for path, d in zip(chunk, decoded):
                yield (path, None, d) if isinstance(d, str) else (path, next(done), "")
            if on_batch:
                on_batch(len(chunk))

    def explain(
        self,
        images: Sequence[np.ndarray],
        n_layers: int | None = None,
        target: str | Sequence[str] | None = None,
        opacity: float = DEFAULT_OPACITY,
        max_side: int | None = None,
        method: str | None = None,
        headers: Sequence[Header] | None = None,
        layer_names: Sequence[str] | None = None,
    ) -> list[Explanation]:
        """Explain RGB images in one batch, each call with its validity.

        Each explanation leads with the default map (the model's layer set, averaged as the audit measured
        it), then one map per shown layer: the last ``n_layers`` (default: the model's set), or ``layer_names``.
        ``target`` names the class to explain (one for all, or one per image); default: each image's
        predicted class. ``method``: default the explainer's.
        ``headers``: what each file said about itself (DICOM tags), for the validity checks.
        """
        meta = self.predictor.meta
        method = check_cam_method(method or self.method)
        shown = list(layer_names) if layer_names else meta.shown_layers(n_layers)
        default = meta.shown_layers()
        if not images:
            return []
        targets = None
        if target is not None:
            names = [target] * len(images) if isinstance(target, str) else list(target)
            bad = [t for t in names if t not in meta.classes]
            if bad:
                raise InputError(f"unknown class {bad[0]!r}; the model knows {', '.join(meta.classes)}")
            targets = np.array([meta.classes.index(t) for t in names], dtype=np.int32)
        x = np.stack([self.predictor.model_input(img) for img in images])
        layers = list(dict.fromkeys([*default, *shown]))
        result = self.cam(layers, method)(x, targets)
        stats = self.predictor.validity_stats
        ood = stats.scores(result.summaries) if stats is not None else [None] * len(x)
        headers = headers or [Header()] * len(x)
        title = map_title(meta, method, self.score)
        warning = method_warning(meta, method, self.score)
        out = []
        for i, img in enumerate(images):
            image = fit_within(img, max_side) if max_side else img
            p = result.probabilities[i]
            explained = meta.classes[int(result.target_classes[i])]
            by_layer = {n: (m[i], bool(e[i])) for n, m, e in zip(layers, result.maps, result.empty)}
            per_layer = [
                draw_panel(t, image, {n: by_layer[n]}, explained, opacity) for t, n in zip(layer_titles(shown), shown)
            ]
            out.append(
                Explanation(
                    probabilities={c: float(v) for c, v in zip(meta.classes, p)},
                    predicted=meta.classes[int(np.argmax(p))],
                    explained=explained,
                    image=image,
                    default=draw_panel(title, image, {n: by_layer[n] for n in default}, explained, opacity),
                    layers=per_layer,
                    validity=verdict(ood[i], input_reasons(x[i], headers[i])),
                    method_warning=warning,
                    prediction_set=self.predictor.prediction_set(dict(zip(meta.classes, map(float, p)))),
                    set_level=None if self.predictor.sets is None else self.predictor.sets.level,
                )
            )
        return out
