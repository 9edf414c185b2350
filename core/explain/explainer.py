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
from pneumocam.explain.overlay import blend, colorize, upsample
from pneumocam.images.preprocess import fit_within
from pneumocam.images.readers import Header, read_image_and_header
from pneumocam.model.validity import Validity, input_reasons, verdict
from pneumocam.options import DEFAULT_BATCH_SIZE, DEFAULT_OPACITY
from pneumocam.scoring.predictor import Predictor


@dataclass
class Explanation:
    """One image explained: probabilities, the explained class and one overlay per layer."""

    probabilities: dict[str, float]
    predicted: str
    explained: str
    layer_names: list[str]
    image: np.ndarray  # RGB uint8 display copy
    heatmaps: list[np.ndarray]  # [0, 1] maps at display size
    overlays: list[np.ndarray]  # RGB uint8 at display size
    validity: Validity


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
        alpha: float = DEFAULT_OPACITY,
        max_side: int | None = None,
        method: str | None = None,
    ) -> Explanation:
        """Read one file (any supported format) and explain it; unreadable files raise ImageLoadError."""
        rgb, header = read_image_and_header(path)
        return self.explain([rgb], n_layers, target, alpha, max_side, method, [header])[0]

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
        alpha: float = DEFAULT_OPACITY,
        max_side: int | None = None,
        method: str | None = None,
        headers: Sequence[Header] | None = None,
        layer_names: Sequence[str] | None = None,
    ) -> list[Explanation]:
        """Explain RGB images in one batch, each call with its validity.

        ``target`` names the class to explain (one for all, or one per image);
        default: each image's predicted class. ``method``: default the explainer's.
        ``headers``: what each file said about itself (DICOM tags), for the validity checks.
        ``layer_names``: these layers instead of ``n_layers`` (an audited set).
        """
        meta = self.predictor.meta
        layers = list(layer_names) if layer_names else meta.shown_layers(n_layers)
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
        result = self.cam(layers, method)(x, targets)
        stats = self.predictor.validity
        ood = stats.scores(result.summaries) if stats is not None else [None] * len(x)
        headers = headers or [Header()] * len(x)
        out = []
        for i, img in enumerate(images):
            shown = fit_within(img, max_side) if max_side else img
            h, w = shown.shape[:2]
            heat = [upsample(m[i], h, w) for m in result.maps]
            p = result.probabilities[i]
            out.append(
                Explanation(
                    probabilities={c: float(v) for c, v in zip(meta.classes, p)},
                    predicted=meta.classes[int(np.argmax(p))],
                    explained=meta.classes[int(result.target_classes[i])],
                    layer_names=list(layers),
                    image=shown,
                    heatmaps=heat,
                    overlays=[blend(shown, colorize(m), alpha) for m in heat],
                    validity=verdict(ood[i], input_reasons(x[i], headers[i])),
                )
            )
        return out
