"""Choices and defaults that the command line shows before TensorFlow loads (so: no heavy imports here)."""

from __future__ import annotations

#: Site adaptation: re-standardise every batch-norm layer and the pooled features, or the pooled features only.
ADAPT_METHODS = ("bn+features", "features")
DEFAULT_ADAPT_METHOD = "bn+features"
#: Folds of the cross-fitted site calibration in the benchmark, and the seed of its split.
DEFAULT_CROSS_FOLDS = 2
DEFAULT_SPLIT_SEED = 0
#: Training augmentations (core.augment).
AUGMENTATIONS = ("seed", "acquisition", "invariance")
