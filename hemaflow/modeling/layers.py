"""hemaflow's serializable Keras layers: what an exported ensemble is built from.

:func:`register_layers` defines and registers them on first call (keeping keras out of
import time); :mod:`hemaflow.modeling.loading` calls it before every safe load, so each
model hemaflow exports loads by name. :func:`dihedral_view` is the pure view maths shared
by the :class:`DihedralView` layer and numpy callers, so both see exactly the same pixels.
"""

from __future__ import annotations

import sys

import numpy as np

EPS = 1e-7


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

    _REGISTERED.update(
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
