"""What the entry points show and what the audit vouches for: the default map's name, the methods that fail sanity.

The default map is the model's ``explain`` choice (method, explained score, layer set), averaged over its
layers as the audit measured it. Every page, the Space and the Python API name it with :func:`map_title`,
so a reader can tell the audited map from the per-layer maps shown after it. A method whose every audited
row fails the randomisation check is not offered by default (:func:`offered_methods`), and wherever it is
still chosen the title says so (:data:`FAILS_SANITY`). Plain functions of the metadata: no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

from pneumocam.model.artifact import ModelMeta
from pneumocam.options import CAM_METHOD_NAMES, CAM_METHODS

FAILS_SANITY = "fails the sanity check on this model"
NOT_AUDITED = "not audited"


def method_label(method: str) -> str:
    return CAM_METHOD_NAMES.get(method, method)


def sanity_status(meta: ModelMeta, method: str, score: str | None = None) -> bool | None:
    """Whether the model's recorded audit saw ``method`` (explaining ``score``, default the model's) pass sanity.

    True: at least one audited layer set passed; False: it was audited and failed on every set;
    None: the audit did not look at it (or the model has no audit).
    """
    score = score or meta.explain.score
    rows = [r for r in meta.explain.audit.get("table", []) if r.get("method") == method and r.get("score") == score]
    if not rows:
        return None
    return any(r.get("sanity_pass") for r in rows)


def offered_methods(meta: ModelMeta) -> list[str]:
    """The CAM methods offered by default: every method but those the audit saw fail sanity on every layer set."""
    return [m for m in CAM_METHODS if sanity_status(meta, m) is not False]


def set_label(layers: Sequence[str], meta: ModelMeta) -> str:
    """A layer set in words: "last 3 layers" when it is the last N explainable layers, else its names."""
    layers = list(layers)
    if len(layers) == 1:
        return layers[0]
    if meta.gradcam_layers[-len(layers) :] == layers:
        return f"last {len(layers)} layers"
    return " + ".join(layers)


def layer_titles(layers: Sequence[str]) -> list[str]:
    """Plain words for each per-layer map: which layer, and whether it is the deepest (closest to the decision)."""
    n = len(layers)
    return [f"deepest: {name}" if i == n - 1 else f"{n - 1 - i} up: {name}" for i, name in enumerate(layers)]


def map_title(meta: ModelMeta, method: str, score: str) -> str:
    """The name of the default-set map drawn with ``method``: "audited default: Grad-CAM, last 3 layers".

    Another method than the model's own is named for what it is, with its sanity verdict when it failed.
    """
    what = f"{method_label(method)}, {set_label(meta.shown_layers(), meta)}"
    if (method, score) == (meta.explain.method, meta.explain.score):
        return f"audited default: {what}" if meta.explain.audit else f"default ({NOT_AUDITED}): {what}"
    if sanity_status(meta, method, score) is False:
        return f"{what} ({FAILS_SANITY})"
    return what


def method_warning(meta: ModelMeta, method: str, score: str | None = None) -> str:
    """A sentence for a report or a page when the chosen method failed sanity on this model; else empty."""
    if sanity_status(meta, method, score) is False:
        return f"{method_label(method)} {FAILS_SANITY}: its maps barely change when the model's head is randomised."
    return ""
