"""The model zoo: keras.applications backbones and two small from-scratch CNNs, one head.

Every model takes raw uint8 RGB ``[None, S, S, 3]`` and does its backbone's own preprocessing
inside, so an exported model needs nothing but pixels. Layout of a built model::

    images (uint8) -> [colour constancy] -> preprocessing (float32) -> "backbone" -> head -> softmax

The preprocessing layers are created in float32 before the dtype policy applies, and the
softmax is float32 under every policy, so bf16/fp16 never reaches the probabilities.
Only built-in Keras layers are used, so models load with safe_mode=True as they are; the
optional colour-constancy layer (``model.colour_constancy``) is hemaflow's registered
:class:`~hemaflow.modeling.layers.ColourConstancy`, which
:func:`hemaflow.modeling.loading.load_model` registers before loading.
The backbone is a nested model named ``backbone`` so that :func:`set_trainable_layers` can
freeze or unfreeze its top layers for fine-tuning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hemaflow.config import ConfigError, HeadConfig
from hemaflow.modeling.layers import COLOUR_CONSTANCY

log = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"
OUTPUT_LAYER = "probabilities"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
# Faster-adapting BatchNorm statistics for short from-scratch runs (PyTorch's default).
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: its keras.applications constructor and input convention.

    ``preprocess``: ``caffe`` (BGR, ImageNet mean), ``torch`` (0-1, ImageNet mean/std),
    ``tf`` (-1..1), ``raw`` (the backbone rescales 0-255 itself), ``unit`` (0-1, from scratch).
    """

    constructor: str
    preprocess: str
    kwargs: tuple[tuple[str, Any], ...] = ()


_APPS: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("VGG16", "caffe"),
    "resnet50": BackboneSpec("ResNet50", "caffe"),
    "resnet101": BackboneSpec("ResNet101", "caffe"),
    "resnet152": BackboneSpec("ResNet152", "caffe"),
    "resnet50_v2": BackboneSpec("ResNet50V2", "tf"),
    "resnet101_v2": BackboneSpec("ResNet101V2", "tf"),
    "resnet152_v2": BackboneSpec("ResNet152V2", "tf"),
    "mobilenet_v2": BackboneSpec("MobileNetV2", "tf"),
    "mobilenet_v3_small": BackboneSpec(
        "MobileNetV3Small", "raw", (("include_preprocessing", True),)
    ),
    "mobilenet_v3_large": BackboneSpec(
        "MobileNetV3Large", "raw", (("include_preprocessing", True),)
    ),
    **{f"efficientnet_b{i}": BackboneSpec(f"EfficientNetB{i}", "raw") for i in range(8)},
    **{
        f"efficientnet_v2_{v.lower()}": BackboneSpec(
            f"EfficientNetV2{v}", "raw", (("include_preprocessing", True),)
        )
        for v in ("B0", "B1", "B2", "B3", "S", "M", "L")
    },
    **{
        f"convnext_{v.lower()}": BackboneSpec(
            f"ConvNeXt{v}", "raw", (("include_preprocessing", True),)
        )
        for v in ("Tiny", "Small", "Base", "Large", "XLarge")
    },
    "densenet121": BackboneSpec("DenseNet121", "torch"),
    "densenet169": BackboneSpec("DenseNet169", "torch"),
    "densenet201": BackboneSpec("DenseNet201", "torch"),
}
_CUSTOM: dict[str, BackboneSpec] = {
    "small_cnn": BackboneSpec("small_cnn", "standardize"),
    "resnet_mini": BackboneSpec("resnet_mini", "standardize"),
}


def known_backbones() -> list[str]:
    return sorted({**_APPS, **_CUSTOM})


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``name``, or a ConfigError listing every known backbone."""
    spec = _APPS.get(name) or _CUSTOM.get(name)
    if spec is None:
        raise ConfigError(
            f"backbone {name!r} is unknown; known backbones: {', '.join(known_backbones())}"
        )
    return spec


def is_pretrainable(name: str) -> bool:
    """Whether ``name`` comes from keras.applications (ImageNet weights exist for it)."""
    backbone_spec(name)
    return name in _APPS


# --------------------------------------------------------------------------- building


def preprocessing_layers(mode: str) -> list:
    """float32 layers turning uint8 RGB into what a backbone expects (built-in layers only)."""
    import keras

    f32 = "float32"
    if mode == "caffe":
        return [keras.layers.Rescaling(1.0, dtype=f32, name="to_float"), _caffe_layer()]
    if mode == "torch":
        return [
            keras.layers.Rescaling(1.0 / 255, dtype=f32, name="to_unit"),
            keras.layers.Normalization(
                mean=list(TORCH_MEAN),
                variance=[s * s for s in TORCH_STD],
                dtype=f32,
                name="imagenet_norm",
            ),
        ]
    if mode == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, dtype=f32, name="to_signed")]
    if mode == "raw":
        return [keras.layers.Rescaling(1.0, dtype=f32, name="to_float")]
    if mode == "unit":
        return [keras.layers.Rescaling(1.0 / 255, dtype=f32, name="to_unit")]
    if mode == "standardize":
        # Per-image standardisation (zero mean, unit variance over H, W and C): a global
        # brightness offset or contrast factor, as a different lamp or camera gain gives,
        # is gone before the first convolution. LayerNormalization without weights does it
        # for any image size as a built-in layer, so safe_mode loading still works.
        return [
            keras.layers.Rescaling(1.0 / 255, dtype=f32, name="to_unit"),
            keras.layers.LayerNormalization(
                axis=(1, 2, 3),
                center=False,
                scale=False,
                epsilon=1e-5,
                dtype=f32,
                name="standardize",
            ),
        ]
    raise ValueError(f"preprocess mode {mode!r} is unknown")


def colour_constancy_layers(method: str) -> list:
    """The colour-normalisation layer for ``method`` (none for "none"), ahead of preprocessing.

    A layer of the saved model, so serving normalises exactly as training did.
    """
    if method not in COLOUR_CONSTANCY:
        raise ConfigError(
            f"model.colour_constancy: {method!r} is unknown; known: {', '.join(COLOUR_CONSTANCY)}"
        )
    if method == "none":
        return []
    from hemaflow.modeling.layers import register_layers

    return [register_layers()["ColourConstancy"](method, name="colour_constancy")]


def _caffe_layer():
    """RGB -> BGR minus the ImageNet mean as one frozen 1x1 convolution.

    A permutation kernel (exact: products with 0 and 1) and the negated mean as bias: a
    built-in layer, so a model loads with safe_mode=True without custom code.
    """
    import keras
    import numpy as np

    layer = keras.layers.Conv2D(3, 1, dtype="float32", trainable=False, name="caffe_bgr_mean")
    layer.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for bgr, rgb in enumerate((2, 1, 0)):
        kernel[0, 0, rgb, bgr] = 1.0
    layer.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
    return layer


def _conv_bn(x, filters: int, kernel: int = 3, strides: int = 1, name: str = ""):
    from keras import layers

    x = layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def small_cnn(image_size: int, widths: tuple[int, ...] = (32, 64, 128, 256)):
    """The plain baseline: conv-BN-ReLU blocks with max pooling, no shortcuts."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs
    for i, width in enumerate(widths):
        x = _conv_bn(x, width, name=f"block{i + 1}a")
        x = _conv_bn(x, width, name=f"block{i + 1}b") if i else x
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    return keras.Model(inputs, x, name=BACKBONE_LAYER)


def resnet_mini(
    image_size: int,
    widths: tuple[int, ...] = (24, 48, 96, 192),
    blocks: tuple[int, ...] = (1, 1, 2, 1),
):
    """A small ResNet (basic blocks, BN, projection shortcuts) for from-scratch CPU training.

    The stem brings any input to a grid of about 32 x 32 at once (stride 2 at 64 px, 4 at
    128 px, never less than 2) with a kernel of ``2 * stride - 1``, so every later block costs
    the same at any image size: on pbc128 a 128 px epoch took 141-155 s against 124-161 s at
    64 px, where a stride-2 stem would cost 4x. Each stage after the first halves the
    resolution. The widths are where a fixed CPU budget is best spent on pbc128: 24-192
    channels train 1.46x faster than 32-256 and reach the same test accuracy in the same time
    (4 epochs against 3), and evaluation, which is inference-bound, runs faster too.
    Full-resolution stages (a stride-1 stem and a fifth stage) cost 1.7x per image for no gain
    after one epoch.
    """
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    stride = max(2, image_size // 32)
    x = _conv_bn(inputs, widths[0], kernel=2 * stride - 1, strides=stride, name="stem")
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for block in range(count):
            name = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if stage and block == 0 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != width:
                shortcut = layers.Conv2D(
                    width, 1, strides=strides, use_bias=False, name=f"{name}_proj"
                )(x)
                shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(
                    shortcut
                )
            y = _conv_bn(x, width, strides=strides, name=f"{name}_1")
            y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
            y = layers.BatchNormalization(
                momentum=BN_MOMENTUM, gamma_initializer="zeros", name=f"{name}_2_bn"
            )(y)
            x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))
    return keras.Model(inputs, x, name=BACKBONE_LAYER)


def _backbone(name: str, image_size: int, weights: str | None, fallback: str = "error"):
    """The nested backbone, its weights loaded: ``weights`` is None, ``"imagenet"``, a local
    weights file or a mirror (local or gs://; the backbone's Keras file is taken from it).

    Returns ``(model, fallback note)``. With ``fallback="random"`` (``model.weights_fallback``,
    set by a preflight only) a keras.applications backbone whose weights cannot be loaded
    stays randomly initialised and the note says why; otherwise the error propagates.
    """
    import keras

    from hemaflow.modeling import weights as pretrained

    spec = backbone_spec(name)
    kind = pretrained.kind_of(weights)
    if name in _CUSTOM:
        if kind in ("imagenet", "mirror"):
            raise pretrained.no_keras_file(name, True, _APPS)
        model = {"small_cnn": small_cnn, "resnet_mini": resnet_mini}[name](image_size)
        if weights:
            pretrained.load_into(model, weights, name, image_size)
        return model, ""
    if image_size < 32:
        raise ConfigError(f"backbone {name!r}: needs images of at least 32 px, got {image_size}")
    constructor = getattr(keras.applications, spec.constructor)
    # Weights are loaded here rather than by the constructor: with name= set, EfficientNet and
    # ConvNeXt would ask Keras's origin for a file named after the model ("backbone_notop.h5").
    model = constructor(
        include_top=False,
        weights=None,
        input_shape=(image_size, image_size, 3),
        name=BACKBONE_LAYER,
        **dict(spec.kwargs),
    )
    try:
        path = weights
        if kind != "file":
            path = pretrained.local_file(weights or "none", name, image_size, spec)
        if path:
            pretrained.load_into(model, path, name, image_size)
    except Exception as exc:  # offline download, missing mirror file, unreadable file
        if fallback != "random":
            raise
        reason = " ".join(str(exc).split())[:300]
        log.warning(
            "backbone %r: weights %s could not be loaded (%s); initialised RANDOMLY "
            "(model.weights_fallback: random, a preflight only)",
            name,
            weights,
            reason,
        )
        return model, f"weights {weights} could not be loaded ({reason}): random initialisation"
    return model, ""


def resolve_weights(weights: str) -> str | None:
    """``None`` for ``"none"``, ``"imagenet"`` and a mirror as they are (resolved per
    backbone by :func:`_backbone`), or a local copy of a single weights file (local/gs://)."""
    if weights in ("none", "", None):
        return None
    if weights == "imagenet":
        return "imagenet"
    from hemaflow import storage
    from hemaflow.modeling import weights as pretrained

    if pretrained.kind_of(weights) == "mirror":
        return weights
    return str(storage.local_path(weights))


def build_model(
    backbone: str,
    num_classes: int,
    image_size: int,
    weights: str = "none",
    head: HeadConfig | None = None,
    policy: str = "float32",
    dense: list[int] | None = None,
    dropout: float | None = None,
    weights_fallback: str = "error",
    colour_constancy: str = "none",
):
    """Raw uint8 images in, float32 class probabilities out.

    ``weights``: ``"imagenet"`` (Keras downloads when online), a local or gs:// weights file
    for the backbone, or ``"none"``. ``dense``/``dropout`` override ``head`` (for tuning).
    ``weights_fallback="random"``: weights that cannot be loaded leave the backbone random;
    the model's ``weights_fallback_note`` (empty when the weights loaded) says so.
    ``colour_constancy`` (``model.colour_constancy``): "none", "grey_world" or
    "optical_density", a per-image colour normalisation layer before the preprocessing.
    """
    spec = backbone_spec(backbone)  # an unknown name fails before keras loads
    normalise = colour_constancy_layers(colour_constancy)
    import keras
    from keras import layers

    from hemaflow.modeling import precision

    if num_classes < 2:
        raise ConfigError(f"num_classes: need at least 2 classes, got {num_classes}")
    if weights == "imagenet" and backbone in _CUSTOM:
        raise ConfigError(f"backbone {backbone!r} is trained from scratch; no imagenet weights")
    head = head or HeadConfig()
    dense = list(head.dense if dense is None else dense)
    dropout = head.dropout if dropout is None else dropout
    weights_path = resolve_weights(weights)

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="images")
    x = inputs
    for layer in [*normalise, *preprocessing_layers(spec.preprocess)]:
        x = layer(x)
    with precision.policy_scope(policy):
        base, note = _backbone(backbone, image_size, weights_path, weights_fallback)
        x = base(x)
        pool = layers.GlobalAveragePooling2D if head.pooling == "avg" else layers.GlobalMaxPooling2D
        x = pool(name="pool")(x)
        for i, units in enumerate(dense):
            if dropout:
                x = layers.Dropout(dropout, name=f"head_dropout{i + 1}")(x)
            x = layers.Dense(units, activation="relu", name=f"head_dense{i + 1}")(x)
        if dropout:
            x = layers.Dropout(dropout, name="head_dropout_out")(x)
        outputs = layers.Dense(
            num_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER
        )(x)
        # Built inside the scope, the model itself carries the policy: compile() wraps the
        # optimizer in a LossScaleOptimizer only when the *model's* policy is mixed_float16.
        model = keras.Model(inputs, outputs, name=f"hemaflow_{backbone}")
    model.weights_fallback_note = note
    return model


def backbone_of(model):
    """The nested backbone model inside a model from :func:`build_model`."""
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError as exc:
        raise ValueError(f"model {model.name!r} has no nested {BACKBONE_LAYER!r} model") from exc


def set_trainable_layers(model, n_top: int, freeze_batchnorm: bool | None = None) -> int:
    """Freeze the backbone except its top ``n_top`` weighted layers; -1 unfreezes all of them.

    BatchNormalization layers are not counted and, with ``freeze_batchnorm``, stay frozen
    (inference mode, their statistics as loaded): the usual rule for fine-tuning pretrained
    nets on small data, where a few batches' statistics would overwrite ImageNet's. By
    default they are frozen unless ``n_top`` is -1 (from scratch, where they must learn);
    a pretrained backbone fine-tuned with -1 passes ``freeze_batchnorm=True``.
    Returns the number of trainable backbone layers. Recompile the model afterwards.
    """
    from keras import layers

    if freeze_batchnorm is None:
        freeze_batchnorm = n_top >= 0
    base = backbone_of(model)
    weighted = [
        layer
        for layer in base.layers
        if layer.weights and not isinstance(layer, layers.BatchNormalization)
    ]
    base.trainable = n_top != 0
    if not n_top:
        return 0
    top = {id(layer) for layer in (weighted if n_top < 0 else weighted[-n_top:])}
    count = 0
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = not freeze_batchnorm
        else:
            layer.trainable = id(layer) in top or (n_top < 0 and not layer.weights)
        count += layer.trainable and bool(layer.weights)
    return count
