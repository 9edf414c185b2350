"""PneumoCAM core: everything the CLI and the Space share; ``cli`` and ``space`` only parse and present.

The package is grouped by concept, one level deep. The groups stack: each imports only its own
modules, the root's and the groups listed before it (``tests/test_layout.py`` checks it).

* root -- ``options`` (every user-facing default and choice), ``config`` (input, architecture and
  training settings stored with a model), ``paths``, ``errors`` (what the user can fix), ``runtime``
  (quiet TensorFlow import), ``atomic`` (files written whole), ``plots`` (figures from data).
* ``images`` -- ``readers`` (one reader per file format), ``preprocess`` (to the model's input),
  ``data`` (labelled folders, patients, labels).
* ``model`` -- ``network`` (the architecture and its layer names), ``views`` (test-time views),
  ``validity`` (is the input a chest X-ray like the training ones), ``artifact`` (model.keras +
  model.json on disk), ``hub`` (Hugging Face downloads), ``resolve`` (which model to serve).
* ``scoring`` -- ``forward`` (the one forward pass and the batches of decoded files every consumer
  uses), ``engine`` (this process or ``ray_engine``, a Ray Data actor pool), ``metrics``.
* ``explain`` -- ``gradcam`` (CAM methods), ``overlay``, ``pages``, ``explainer`` (one image:
  probabilities, overlays, validity); the audit: ``sanity``, ``road``, ``faithfulness``, ``audit``.
* ``site`` -- ``adaptation`` (unlabelled: AdaBN, LAME), ``calibration``, ``tuning`` (the head
  re-fitted), ``models`` (the adapted, calibrated and tuned model folders).
* ``reports`` -- ``evaluation`` (evaluate and its site protocols), ``stress``, ``gallery``,
  ``site_curve``, ``audit_report`` and ``audit_figures`` (the audit's files), ``card`` (the model card),
  ``tracking`` (optional MLflow runs).
* ``deploy`` -- ``publish`` (Hub and Space uploads), ``space_config``.
* ``training`` -- ``recipe`` (``recipes/*.json``), ``augment``, ``consistency``, ``trainer`` (two
  stages on cached activations), ``view_choice`` (the test-time views, chosen on validation).

The public Python API is :func:`load` (a :class:`pneumocam.explain.api.Model`). This file imports
nothing at import time, so ``import pneumocam`` and ``pneumocam --help`` stay free of TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pneumocam.explain.api import Model

__version__ = "0.1.0"
#: The groups, lowest first ("" is the root's own modules).
GROUPS = ("", "images", "model", "scoring", "explain", "site", "reports", "deploy", "training")


def load(
    path: str | Path | None = None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    use_views: bool = True,
    views: bool | None = None,
) -> Model:
    """A model to predict and explain with: the bundled one, a folder, or a Hub repo pinned to a commit.

    ``use_views=False`` scores each image alone (faster; the reports' figures include the test-time views).
    ``views``: the older name of ``use_views``, still accepted with a warning.
    """
    if views is not None:
        import warnings

        warnings.warn("pneumocam.load(views=) is now use_views=", DeprecationWarning, stacklevel=2)
        use_views = views
    from pneumocam.explain.api import Model  # the front door: TensorFlow only once a model is asked for
    from pneumocam.runtime import import_tensorflow_quietly
    from pneumocam.scoring.predictor import load_predictor

    import_tensorflow_quietly()
    return Model(load_predictor(path, repo_id, revision, use_views=use_views))
