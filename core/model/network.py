"""The classifier: the seed's MobileNetV2 transfer-learning architecture.

input -> RandomFlip + RandomRotation (training only) -> [per-image
standardisation, a Gaussian low-pass: when the architecture asks for them] -> Rescaling to [-1, 1]
-> MobileNetV2 (ImageNet, frozen) -> global pooling -> Dropout
-> Dense ReLU layer(s) -> Dense "logits" -> softmax "probabilities".

The backbone is built *on* our input tensor rather than nested as one layer,
so every conv layer of MobileNetV2 is a top-level layer of the model and
Grad-CAM can reach it, also after saving and reloading (Keras 3 hides the
inner layers of a nested model).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pneumocam.config import FEATURES_LAYER, LOGITS_LAYER, POOLINGS, ArchConfig, InputSpec
from pneumocam.errors import InputError

PROBS_LAYER = "probabilities"
LAST_CONV, ACTIVATED_LAST = "Conv_1", "out_relu"
_PREPROCESS_LAYERS = ("augment_flip", "augment_rotation", "rescale")


def build_model(
    arch: ArchConfig = ArchConfig(),
    spec: InputSpec = InputSpec(),
    backbone_weights: str | None = "imagenet",
) -> keras.Model:
    """Build the classifier with the backbone frozen (a fresh, untrained head).

    ``backbone_weights`` is ``"imagenet"`` (Keras download), a local ``.h5``
    path, or ``None`` (random, for tests).
    """
    if arch.pooling not in POOLINGS:
        raise InputError("pooling must be 'max' or 'avg'")
    inputs = keras.Input(shape=spec.shape, name="image")
    x = inputs
    if arch.flip:
        x = layers.RandomFlip(arch.flip, name="augment_flip")(x)
    if arch.rotation:
        x = layers.RandomRotation(arch.rotation, fill_mode="constant", name="augment_rotation")(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    backbone = keras.applications.MobileNetV2(
        input_tensor=x,
        include_top=False,
        weights=backbone_weights,
        alpha=arch.alpha,
    )
    for layer in backbone.layers:
        layer.trainable = False
    pool = layers.GlobalMaxPooling2D if arch.pooling == "max" else layers.GlobalAveragePooling2D
    h = pool(name=FEATURES_LAYER)(backbone.output)
    h = layers.Dropout(arch.dropout, name="head_dropout")(h)
    for i, units in enumerate(arch.dense_units):
        h = layers.Dense(units, activation="relu", name=f"head_dense_{i}")(h)
    logits = layers.Dense(arch.n_classes, name=LOGITS_LAYER)(h)
    probs = layers.Activation("softmax", name=PROBS_LAYER)(logits)
    return keras.Model(inputs, probs, name="pneumocam")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in order, indexed as in a standalone MobileNetV2.

    Index 0 is the input, so ``fine_tune_from=145`` means what it meant in the
    seed (``base_model.layers[145:]``).
    """
    names = [layer.name for layer in model.layers]
    start = max(names.index(n) for n in _PREPROCESS_LAYERS if n in names) + 1
    end = names.index(FEATURES_LAYER)
    return [model.layers[0], *model.layers[start:end]]


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the backbone's convolution layers, shallow to deep."""
    conv_types = (layers.Conv2D, layers.DepthwiseConv2D)
    return [layer.name for layer in backbone_layers(model) if isinstance(layer, conv_types)]


def explainable_layer_names(model: keras.Model) -> list[str]:
    """The layers Grad-CAM may explain, shallow to deep: the conv layers, the deepest after its activation.

    The last conv layer (``Conv_1``) is explained at ``out_relu``, its
    batch-normed and activated output, as most Grad-CAM implementations do;
    ``python -m cli audit`` found it the most faithful layer of the published
    model (see the model card).
    """
    names = conv_layer_names(model)
    present = {layer.name for layer in model.layers}
    if names and names[-1] == LAST_CONV and ACTIVATED_LAST in present:
        names[-1] = ACTIVATED_LAST
    return names


def set_fine_tuning(model: keras.Model, fine_tune_from: int | None) -> None:
    """Unfreeze the backbone from ``fine_tune_from`` on (None: keep it frozen).

    Batch norm layers stay frozen: with ``trainable=False`` Keras 3 runs them in
    inference mode, so their statistics never drift on small batches.
    """
    for i, layer in enumerate(backbone_layers(model)):
        unfreeze = fine_tune_from is not None and i >= fine_tune_from
        layer.trainable = unfreeze and not isinstance(layer, layers.BatchNormalization)


def summary_layers(spec: str) -> list[str]:
    """The layers a validity summary reads: ``"out_relu"``, or ``"out_relu+block_16_expand_relu"`` with a
    discriminator's layer after the ``+``.
    """
    return spec.split("+")


def summary_width(model: keras.Model, spec: str) -> int:
    """How many numbers :func:`validity_summary` gives per image."""
    first, *more = (int(model.get_layer(n).output.shape[-1]) for n in summary_layers(spec))
    return first + 2 * sum(more)


def validity_summary(model: keras.Model, spec: str) -> keras.KerasTensor:
    """The validity summary (pneumocam.model.validity), per image: each channel's spatial std of the first layer,
    then each channel's spatial mean and std of every further layer (the discriminator's), concatenated.
    """
    first, *more = (model.get_layer(n).output for n in summary_layers(spec))
    parts = [ops.std(first, axis=(1, 2))]
    for act in more:
        parts += [ops.mean(act, axis=(1, 2)), ops.std(act, axis=(1, 2))]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
