"""PneumoCAM core: everything the CLI and the Space share; ``cli`` and ``space`` only parse and present.

Module map, by concept (flat on purpose; this file imports nothing, so ``--help`` stays fast):

* Settings -- ``options`` (every user-facing default and choice), ``config`` (the input,
  architecture and training recipes stored with a model), ``paths`` (folders, environment
  variables), ``errors`` (what the user can fix), ``runtime`` (quiet TensorFlow import).
* Images -- ``images`` (one reader per file format), ``preprocess`` (to the model's input),
  ``data`` (labelled folders, patients, labels), ``validity`` (is the input a chest X-ray like the
  training ones: the score every call carries and the sure checks).
* The model -- ``model`` (architecture), ``artifact`` (model.keras + model.json on disk),
  ``hub`` (Hugging Face downloads), ``resolve`` (which model to serve), ``card`` (model card),
  ``publish`` (uploads), ``space_config`` (the Space's settings).
* Scoring -- ``inference`` (the one batch walk over files, scoring, the Explainer), ``engine``
  (where scoring runs: this process or ``ray_engine``, a Ray Data actor pool), ``metrics``
  (figures, bootstrap intervals), ``evaluation`` (evaluate and its protocols), ``stress``
  (perturbations and the stress test), ``views`` (test-time views, averaged by every forward pass),
  ``view_choice`` (which views, chosen on validation), ``plots``, ``atomic`` (files written whole).
* Explaining -- ``gradcam`` (CAM methods), ``overlay`` (heatmaps on images), ``gallery``;
  auditing them: ``sanity`` (cascading randomisation), ``road`` (removal with noisy linear
  imputation), ``faithfulness`` (deletion, insertion, baselines, border mass), ``audit`` (the
  report and the recommended defaults).
* Training -- ``augment`` (augmented views), ``training`` (two stages on cached activations),
  ``consistency`` (the Jensen-Shannon term between an image's views), ``weight_space`` (WiSE-FT).
* A new site -- ``adaptation`` (unlabelled, AdaBN and LAME), ``calibration`` (temperature and
  class biases, cross-fitting), ``tuning`` (the head re-fitted on labelled site images),
  ``site`` (adapted, calibrated and tuned model folders), ``site_curve`` (how many labels pay).
* Tracking -- ``tracking`` (optional MLflow runs for the commands).
"""

__version__ = "0.1.0"
