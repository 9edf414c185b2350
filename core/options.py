"""Every user-facing default and choice, defined once; light enough to import before TensorFlow.

The command line shows these in ``--help`` before anything heavy loads; core
functions, the Space and its config take their defaults from here too.
"""

from __future__ import annotations

#: Grad-CAM: how many of the last conv layers to explain, the heatmap opacity, the method.
DEFAULT_LAYERS = 3
DEFAULT_OPACITY = 0.4
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
#: How pages, the Space and reports name each method.
CAM_METHOD_NAMES = dict(zip(CAM_METHODS, ("Grad-CAM", "Grad-CAM++", "HiResCAM", "LayerCAM")))
DEFAULT_CAM_METHOD = "gradcam"
#: What a map explains: the class's pre-softmax logit (the textbook Grad-CAM) or its log-probability (the shown
#: percentage, so also the evidence against the other classes).
LOGIT, LOG_PROBABILITY = "logit", "log-probability"
CAM_SCORES = (LOGIT, LOG_PROBABILITY)
DEFAULT_CAM_SCORE = LOGIT
#: The most layers a page (gallery, predict, Space) shows side by side.
MAX_SHOWN_LAYERS = 8
#: Longest side of the X-ray shown beside its heatmaps: gallery pages, predict overlays.
GALLERY_MAX_SIDE = 448
PREDICT_MAX_SIDE = 1024
#: Galleries: images at most, rows per PNG page; the resolution of matplotlib figures.
GALLERY_LIMIT = 24
GALLERY_PER_PAGE = 6
FIGURE_DPI = 120
#: Images per forward pass when scoring a folder.
DEFAULT_BATCH_SIZE = 32
MAX_BATCH_SIZE = 1024

#: Site adaptation: re-standardise every batch-norm layer and the pooled features, or the pooled features only.
ADAPT_METHODS = ("bn+features", "features", "bn")
DEFAULT_ADAPT_METHOD = "bn+features"
#: ``evaluate --adapt`` then adjusts the adapted model's probabilities over the whole folder with LAME (Laplacian-
#: adjusted maximum likelihood on a k-nearest-neighbour graph of the pooled features; chosen on shifted validation
#: images by experiments/choose_adaptation.py), in blocks of images taken in content order; it needs the folder at
#: prediction time, so a model folder cannot hold it.
LAME = "lame"
DEFAULT_EVALUATE_ADAPT_METHOD = f"{DEFAULT_ADAPT_METHOD}+{LAME}"
LAME_KNN = 5
LAME_BLOCK = 1024
#: Images per batch in adaptation's measuring pass (its batch statistics standardise each layer); part of the
#: method, so ``adapt`` and ``evaluate --adapt`` use it whatever batch size scores the images.
ADAPT_BATCH_SIZE = DEFAULT_BATCH_SIZE
#: The seed of the cross-fitted site protocols' split (the benchmark uses two folds).
DEFAULT_SPLIT_SEED = 0
#: Site tuning (site.tuning): the L2 strengths tried for the re-fitted read-out of the pooled features, the folds
#: of the inner cross-validation that chooses among them (and calibration, and the model untouched), and the
#: fewest labelled images per class it accepts.
TUNE_PENALTIES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
TUNE_INNER_FOLDS = 3
TUNE_MIN_PER_CLASS = 5
#: site-curve: labelled images per fold to try (the whole labelled half is always added), and random halvings.
SITE_CURVE_SIZES = (25, 50, 100, 200)
SITE_CURVE_REPEATS = 3
#: Validity (pneumocam.model.validity): the conv layer whose per-channel spatial spread is summarised (chosen on
#: validation and on images that are not chest X-rays by experiments/choose_validity.py), the share of
#: validation images the threshold accepts, and the sure checks: the most colourfulness (mean distance of a
#: pixel from its grey, 0..255) an X-ray may have, and the DICOM modalities, body parts and views of a frontal
#: chest radiograph (an absent tag passes).
VALIDITY_LAYER = "out_relu"
#: The discriminator beside the distance (fit-validity --proxy): the layer whose channel means and spreads it reads,
#: chosen leave-one-source-out on radiographs that are not pediatric frontal chest X-rays (docs/validity.md).
VALIDITY_DISC_LAYER = "block_16_expand_relu"
VALIDITY_ACCEPT = 0.95
COLOUR_MAX = 8.0
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
FRONTAL_VIEWS = ("PA", "AP")
#: A DICOM whose patient is this old or older (PatientAge, or PatientBirthDate against StudyDate) is an adult:
#: a sure check, like the modality.
ADULT_AGE = 18
#: The input pipeline's last step (images.preprocess): the JPEG quality the data set's 224 px copies were saved at.
#: New models record it in model.json (input.jpeg_quality), so an original upload reaches them as its copy did.
COPY_JPEG_QUALITY = 75
#: Test-time views (model.views): the model input alone, what ``--no-views`` scores and a model without views uses.
NO_VIEWS = ("identity",)
#: The views the validation rule may add to ``identity`` (any subset; pneumocam.training.view_choice): a JPEG
#: re-encoding at the data set's own quality, a slight blur, a small zoom.
VIEW_CANDIDATES = ("jpeg-75", "blur-0.7", "zoom-1.1")
#: Training augmentations (pneumocam.training.augment).
AUGMENTATIONS = ("flips", "acquisition", "invariance")

# Where evaluate scores: "local" (this process, nothing extra installed) or "ray" (Ray Data, optional install).
ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"
RAY_INSTALL = "pip install -r requirements-ray.txt"

# audit: sanity and faithfulness of the CAM methods (core/explain/: sanity, faithfulness, road, audit).
AUDIT_LIMIT = 100  # images audited
AUDIT_SEED = 0  # which images, and the random baseline map
#: ROAD (pneumocam.explain.road): the shares removed, the lattice removal and imputation run on, the imputation
#: noise (grey levels).
ROAD_SHARES = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
ROAD_GRID = 56
ROAD_NOISE = 2.55
AUDIT_BLOCKS = 3  # randomisation stages after the head: Conv_1, block_16, block_15
AUDIT_CASCADE_IMAGES = 32  # the stages after the head (a plot, never a verdict) on the first images only
#: ROAD in two rounds: every candidate that passed sanity on half the images (every other one), then the model's
#: default, the best ROAD_FINALISTS of that round and the baselines on the other half too; the rest stay measured
#: on the first half. Half the audit's time went there (issue 31).
ROAD_FINALISTS = 2
SANITY_MAX_RHO = 0.3  # a method and layer passes when median |rho| is below this once the head is random
BORDER_BAND = 0.1  # the outer band, as a share of each side
BORDER_FLAG = 0.5  # an image is flagged when more than this share of its map lies in the band

# MLflow tracking (optional install): `--mlflow` without a URI logs here.
MLFLOW_DEFAULT_URI = "sqlite:///mlflow.db"
MLFLOW_INSTALL = "pip install -r requirements-mlflow.txt"

# Prediction sets (pneumocam.model.conformal): the coverage level a set is fitted for.
SET_LEVEL = 0.90
#: Answers ranked by confidence (pneumocam.scoring.selective): the shares of most confident answers reported.
RISK_COVERAGE_SHARES = (1.0, 0.9, 0.8, 0.7, 0.5)

# Metrics (pneumocam.scoring.metrics): bootstrap resamples of patients for the 95 % intervals; reliability bins (ECE).
N_BOOTSTRAP = 1000
ECE_BINS = 10
# Training (pneumocam.training.activations): images per forward pass where training scores cached activations.
CACHE_PREDICT_BATCH = 256
