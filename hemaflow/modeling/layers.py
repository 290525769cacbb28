"""hemaflow's serializable Keras layers: what an exported ensemble is built from.

:func:`register_layers` defines and registers them on first call (keeping keras out of
import time); :mod:`hemaflow.modeling.loading` calls it before every safe load, so each
model hemaflow exports loads by name. :func:`dihedral_view` is the pure view maths shared
by the :class:`DihedralView` layer and numpy callers, so both see exactly the same pixels;
:func:`colour_constancy` likewise is the maths of the :class:`ColourConstancy` layer.
"""

from __future__ import annotations

import sys

import numpy as np

EPS = 1e-7

COLOUR_CONSTANCY = ("none", "grey_world", "optical_density")
"""``model.colour_constancy`` methods; "none" adds no layer (models as before the option)."""
# Per-channel statistics of pbc128 (320 images, 40 per class), the look both methods render
# every image back to, so the backbone's own preprocessing still sees a typical smear.
REFERENCE_RGB_MEAN = (202.0, 169.3, 181.4)
"""Mean R, G, B (0-255) of a pbc128 image."""
REFERENCE_OD_MEAN = (0.291, 0.547, 0.351)
"""Mean optical density -ln((I + 1) / 256) of a pbc128 image, per channel."""
MIN_CHANNEL_MEAN = 1.0
"""Floor of a channel mean (0-255) in grey-world: a black channel stays black, not inf."""
MIN_OD_MEAN = 0.02
"""Floor of a channel's mean optical density: a blank (white) image is not amplified wildly."""


_REGISTERED: dict[str, type] = {}


def register_layers() -> dict[str, type]:
    """Define and register the ensemble's layers (idempotent; keeps keras out of import time)."""
    if _REGISTERED:
        return _REGISTERED
    import keras

    @keras.saving.register_keras_serializable(package="hemaflow")
    class ResizeImages(keras.layers.Layer):
        """Resize uint8 images of any size to ``size`` x ``size`` and return uint8 again.

        Images already at the working size pass through untouched (members see the pixels
        they were trained on) and skip the resize kernel, a seventh of inference time.
        """

        def __init__(self, size: int, **kwargs):
            super().__init__(**kwargs)
            self.size = int(size)

        def _resize(self, images):
            ops = keras.ops
            resized = ops.image.resize(
                ops.cast(images, "float32"), (self.size, self.size), antialias=True
            )
            return ops.cast(ops.clip(ops.round(resized), 0, 255), "uint8")

        def call(self, images):
            ops = keras.ops
            height, width = ops.shape(images)[1:3]
            if isinstance(height, int) and isinstance(width, int):
                at_size = (height, width) == (self.size, self.size)
                return images if at_size else self._resize(images)
            at_size = ops.logical_and(ops.equal(height, self.size), ops.equal(width, self.size))
            out = ops.cond(at_size, lambda: images, lambda: self._resize(images))
            return ops.reshape(out, (-1, self.size, self.size, images.shape[-1]))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.size, self.size, input_shape[-1])

        def compute_output_spec(self, images):
            shape = (images.shape[0], self.size, self.size, images.shape[-1])
            return keras.KerasTensor(shape, dtype="uint8")

        def get_config(self):
            return {**super().get_config(), "size": self.size}

    @keras.saving.register_keras_serializable(package="hemaflow")
    class DihedralView(keras.layers.Layer):
        """One of the 8 symmetries of the square, applied to a batch (see :func:`dihedral_view`)."""

        def __init__(self, index: int, **kwargs):
            super().__init__(**kwargs)
            if not 0 <= int(index) < 8:
                raise ValueError(f"{self.name}: view index must be in 0-7, got {index}")
            self.index = int(index)

        def call(self, images):
            return dihedral_view(images, self.index, keras.ops)

        def get_config(self):
            return {**super().get_config(), "index": self.index}

    @keras.saving.register_keras_serializable(package="hemaflow")
    class WeightedAverage(keras.layers.Layer):
        """A fixed weighted average of member probability tensors (weights fitted offline)."""

        def __init__(self, weights: list[float], **kwargs):
            super().__init__(**kwargs)
            self.member_weights = [float(w) for w in weights]

        def call(self, inputs):
            ops = keras.ops
            if len(inputs) != len(self.member_weights):
                raise ValueError(
                    f"{self.name}: {len(inputs)} inputs but {len(self.member_weights)} weights"
                )
            total = None
            for weight, probs in zip(self.member_weights, inputs, strict=True):
                term = ops.cast(probs, "float32") * weight
                total = term if total is None else total + term
            return total

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self):
            return {**super().get_config(), "weights": self.member_weights}

    @keras.saving.register_keras_serializable(package="hemaflow")
    class TemperatureScaling(keras.layers.Layer):
        """Probabilities -> softmax(log(p) / T): T > 1 softens over-confident outputs."""

        def __init__(self, temperature: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            if temperature <= 0:
                raise ValueError(f"{self.name}: temperature must be positive, got {temperature}")
            self.temperature = float(temperature)

        def call(self, probs):
            ops = keras.ops
            logits = ops.log(ops.clip(ops.cast(probs, "float32"), EPS, 1.0))
            return ops.softmax(logits / self.temperature, axis=-1)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "temperature": self.temperature}

    @keras.saving.register_keras_serializable(package="hemaflow")
    class ColourConstancy(keras.layers.Layer):
        """Per-image colour normalisation inside the model (see :func:`colour_constancy`).

        Always float32 (also under a mixed policy): logs and ratios of 0-255 values lose
        too much in bf16. Output is float32 0-255-like pixels, so any backbone
        preprocessing can follow it.
        """

        def __init__(self, method: str, **kwargs):
            kwargs["dtype"] = "float32"
            super().__init__(**kwargs)
            check_colour_constancy(method)
            if method == "none":
                raise ValueError(f"{self.name}: method 'none' needs no layer")
            self.method = method

        def call(self, images):
            return colour_constancy(keras.ops.cast(images, "float32"), self.method, keras.ops)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "method": self.method}

    _REGISTERED.update(
        ColourConstancy=ColourConstancy,
        DihedralView=DihedralView,
        ResizeImages=ResizeImages,
        WeightedAverage=WeightedAverage,
        TemperatureScaling=TemperatureScaling,
    )
    return _REGISTERED


# A model loaded with keras directly after this import finds the layers too.
if "keras" in sys.modules:
    register_layers()


def dihedral_view(images, index: int, ops=np):
    """View ``index`` (0-7) of an image batch [N, H, W, C]: bit 1 transposes, bit 2 flips
    rows, bit 4 flips columns, so views 0-1, 0-3 and 0-7 are 2, 4 and 8 distinct symmetries.

    ``ops`` is numpy or ``keras.ops`` (same signatures), so the fitted and exported
    ensembles see exactly the same pixels.
    """
    if index & 1:
        images = ops.transpose(images, (0, 2, 1, 3))
    if index & 2:
        images = ops.flip(images, axis=1)
    if index & 4:
        images = ops.flip(images, axis=2)
    return images


def check_colour_constancy(method: str) -> None:
    """A clear error for an unknown ``model.colour_constancy`` method."""
    if method not in COLOUR_CONSTANCY:
        raise ValueError(
            f"colour constancy {method!r} is unknown; known: {', '.join(COLOUR_CONSTANCY)}"
        )


def colour_constancy(images, method: str, ops=np):
    """Float 0-255 images [N, H, W, 3] with the colour cast (``grey_world``) or the stain
    intensity (``optical_density``) of each image replaced by pbc128's typical one.

    ``ops`` is numpy or ``keras.ops``. Both methods render back into 0-255 pixels at
    pbc128's reference statistics, so a backbone's own preprocessing (and its ImageNet
    weights) still sees an ordinary-looking smear.
    """
    if method == "grey_world":
        return grey_world(images, ops)
    if method == "optical_density":
        return optical_density_normalise(images, ops)
    check_colour_constancy(method)
    return images


def grey_world(images, ops=np):
    """Divide each channel by its mean over the image, times pbc128's mean of that channel.

    A global per-channel gain (a lamp's colour temperature, a camera's white balance) then
    cancels exactly. The mean runs over the whole image, background included, on purpose:
    a smear is mostly bright, unstained background, which shows the illuminant itself, so
    the mean is dominated by an estimate of the white point, which is the quantity to
    correct. Averaging over the cell only would instead normalise away its stain colour,
    which carries the class (eosinophil orange, basophil purple). Saturated (clipped)
    pixels are not recovered: over-exposure is not a gain.
    """
    mean = ops.maximum(ops.mean(images, axis=(1, 2), keepdims=True), MIN_CHANNEL_MEAN)
    return images * (_per_channel(REFERENCE_RGB_MEAN, ops) / mean)


def optical_density_normalise(images, ops=np):
    """Optical density OD = -ln((I + 1) / 256) per channel, divided by its mean over the
    image, re-rendered at pbc128's mean OD of that channel.

    Staining longer or with a stronger batch scales every stain concentration, so the OD
    (Beer-Lambert: OD is proportional to concentration) by a factor, which this division
    cancels; dividing per channel also cancels the nearest diagonal version of a change in
    the haematoxylin-eosin balance. Unlike grey-world, the mean OD is dominated by stained
    pixels (background OD is near 0), which is what measures stain intensity. A plain
    mean, not a percentile: it is exactly scale-equivariant, cheap and has no ties.
    """
    od = -ops.log((images + 1.0) / 256.0)
    mean = ops.maximum(ops.mean(od, axis=(1, 2), keepdims=True), MIN_OD_MEAN)
    reference = _per_channel(REFERENCE_OD_MEAN, ops)
    return ops.clip(256.0 * ops.exp(-od / mean * reference) - 1.0, 0.0, 255.0)


def _per_channel(values: tuple[float, float, float], ops=np):
    """Three channel constants shaped [1, 1, 1, 3] to broadcast over an image batch."""
    array = np.reshape(np.asarray(values, np.float32), (1, 1, 1, 3))
    return array if ops is np else ops.convert_to_tensor(array, "float32")
