"""The public Python API behind ``pneumocam.load()``: a served model that predicts and explains files.

Three lines for a script::

    import pneumocam
    model = pneumocam.load()            # bundled; or load("models/site-b"), load(repo_id=..., revision=...)
    result = model.explain("xray.png")  # .summary, .probabilities, .validity, .heatmap (the audited default map)

It goes through the same :class:`~pneumocam.scoring.predictor.Predictor` as the command line and the
Space (input pipeline, test-time views, validity), so a script gets the figures the reports measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pneumocam.explain.explainer import Explainer, Explanation
from pneumocam.model.conformal import in_words
from pneumocam.model.validity import Validity, call_text
from pneumocam.options import DEFAULT_BATCH_SIZE
from pneumocam.scoring.predictor import Predictor


@dataclass(frozen=True)
class Call:
    """One file's call: probabilities per class, the predicted class and the validity; or why it was not read."""

    path: Path
    probabilities: dict[str, float] = field(default_factory=dict)
    validity: Validity | None = None
    error: str = ""
    prediction_set: list[str] | None = None  # most probable first; None: unread, or a model without a set rule
    set_level: float | None = None

    @property
    def predicted(self) -> str | None:
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None

    @property
    def summary(self) -> str:
        """The call in words; a flagged image leads with "Not a meaningful call" and why."""
        if self.error:
            return f"not read: {self.error}"
        text = call_text(self.probabilities, self.validity)
        if self.prediction_set is None or self.set_level is None or not self.validity.in_distribution:
            return text
        words = in_words(self.prediction_set, self.set_level, list(self.probabilities))
        return f"{text}. {words[0].upper()}{words[1:]}."


class Model:
    """A model served as every PneumoCAM entry point serves it."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._explainer = Explainer(predictor)

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def source(self) -> str:
        return self.predictor.source

    def __repr__(self) -> str:
        return f"<pneumocam.Model {self.predictor.meta.name} from {self.source}>"

    def predict(self, paths: Sequence[str | Path], batch_size: int = DEFAULT_BATCH_SIZE) -> list[Call]:
        """One :class:`Call` per file, in order, batched like ``evaluate``; unreadable files carry their reason."""
        calls = []
        for path, got in zip(map(Path, paths), self.predictor.score(paths, batch_size).in_order(paths)):
            if isinstance(got, str):
                calls.append(Call(path, error=got))
            else:
                probs = {c: float(v) for c, v in zip(self.classes, got[0])}
                rule = self.predictor.sets
                level = None if rule is None else rule.level
                calls.append(
                    Call(path, probs, got[1], prediction_set=self.predictor.prediction_set(probs), set_level=level)
                )
        return calls

    def explain(
        self, path: str | Path, target: str | None = None, n_layers: int | None = None, method: str | None = None
    ) -> Explanation:
        """Probabilities, validity and heatmaps of one file: ``.heatmap`` / ``.overlay`` the audited default map
        (``.default.title`` names it), then ``.heatmaps`` / ``.overlays`` one per layer; ``.summary`` in words.

        ``target``: the class to explain (default: the predicted one). An unreadable file raises
        :class:`pneumocam.errors.ImageLoadError`.
        """
        return self._explainer.explain_file(path, n_layers=n_layers, target=target, method=method)
