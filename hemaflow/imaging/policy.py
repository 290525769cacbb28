"""The augmentation policy as a batched, deterministic function on uint8 image batches.

:func:`build_augmenter` turns an :class:`~hemaflow.config.AugmentPolicy` into an
:class:`Augmenter`: ``augmenter(images, seed)`` maps uint8 [B, H, W, 3] to uint8 of the same
shape. Each family is applied to each image independently with the family's probability ``p``
and at a random magnitude up to its ``strength`` (a common 0-1 scale, mapped below to each
layer's parameters). Work is vectorised over the batch: a family runs once on the sub-batch of
images it was drawn for, never in a Python loop per image.

Where the families come from:

- geometric: Keras 3 ``RandomFlip``, ``RandomRotation``, ``RandomZoom``, ``RandomTranslation``,
  ``RandomShear`` (reflect fill, which suits cells on a uniform background) plus a random
  transpose, which with the flips gives exact 90-degree rotations;
- chromatic: an exposure change (the HSV value shift of :func:`hemaflow.imaging.ops.brightness`),
  an illuminant / white-balance change (:func:`hemaflow.imaging.ops.white_balance`), then
  Keras 3 ``RandomContrast``, ``RandomSaturation`` and ``RandomHue``, all with
  ``value_range=(0, 255)``;
- stain: how much of each stain (:func:`~hemaflow.imaging.ops.stain_shift`), then what
  colour each stain is (:func:`~hemaflow.imaging.ops.stain_vectors`), both on every image
  the family draws;
- blur: Gaussian, defocus or motion blur from :mod:`hemaflow.imaging.ops` (one kind per
  image; they reflect at the border, where Keras' ``RandomGaussianBlur`` pads with zeros);
- noise, jpeg, pixelate, artifacts: :mod:`hemaflow.imaging.ops` (artifacts: one of six
  occluders per image, see :data:`ARTIFACT_KINDS`);
- erasing: Keras 3 ``RandomErasing``;
- randaugment, augmix: Keras 3 ``RandAugment`` and ``AugMix``, restricted to operations that
  keep a bright-background smear plausible (see :data:`CELL_SAFE_OPS`);
- mixing (:class:`Mixer`): Keras 3 ``CutMix`` / ``MixUp`` with soft labels.

Determinism: every random draw is derived from the ``seed`` given per call (the stage derives
it from its seed, the split and the batch index with :func:`batch_seed`). Keras layers keep
their randomness in ``SeedGenerator`` variables, so before each call every generator of the
family's layers is reset to a state derived from that seed; imageops and the per-image masks
use stateless TF random ops. AugMix also draws its chains with Python's ``random``, which is
seeded for the call and restored afterwards.

Layers are created with ``dtype="float32"``, so a global mixed-precision policy set later by a
training stage never makes them emit bf16/fp16.
"""

from __future__ import annotations

import contextlib
import logging
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from hemaflow.config import AugFamily, AugmentPolicy, ConfigError, MixConfig

FAMILIES: tuple[str, ...] = tuple(f.name for f in fields(AugmentPolicy))
"""Family names, in the order they appear in the config."""

ORDER: tuple[str, ...] = (
    "geometric",
    "randaugment",
    "augmix",
    "stain",
    "chromatic",
    "artifacts",
    "blur",
    "noise",
    "pixelate",
    "jpeg",
    "erasing",
)
"""Order of application: scene and slide first, then optics, sensor and compression."""

CELL_SAFE_OPS: tuple[str, ...] = (
    "random_shear",
    "random_translation",
    "random_rotation",
    "random_color_degeneration",
    "random_contrast",
    "random_sharpness",
    "auto_contrast",
)
"""RandAugment/AugMix operations kept. Solarization, posterization and equalization are left
out: on pbc128 (mean pixel 184, a bright background) Keras's versions moved the batch mean to
41, 110 and 130 respectively, turning the background dark, which no microscope produces.
Brightness is left out too: RandAugment hands its (0, factor) range to RandomBrightness, which
then only ever brightens (mean 186 -> 228 at factor 0.5); the chromatic family covers
brightness symmetrically."""

IMAGEOPS_SCALE: dict[str, float] = {
    "stain": 1.0,
    "blur": 1.0,
    "noise": 0.6,
    "jpeg": 1.0,
    "pixelate": 0.5,
    "artifacts": 1.0,
}
"""Family strength 1 maps to this imageops strength (imageops' 1 is a severe corruption)."""

BLUR_KINDS = ("gaussian_blur", "defocus_blur", "motion_blur")
NOISE_KINDS = ("gaussian_noise", "shot_noise", "impulse_noise")
ARTIFACT_KINDS = (
    "stain_deposits",
    "bubbles",
    "dust",
    "precipitate",
    "fibres",
    "defocused_dust",
)
"""One per image, equally likely. The last three (soft translucent dye smears, curved fibres,
out-of-focus dust discs) are training-only: the evaluation suite, a fixed spec, keeps the
first three, so this family no longer trains only on what the own suite measures."""
STAIN_OPS = ("stain_shift", "stain_vectors")
"""Run in turn on each image of the stain family, each at its own random magnitude."""
VALUE_RANGE = (0, 255)
EXPOSURE_SHIFT = 0.6
"""Chromatic strength 1 shifts HSV value by up to +-0.3 (imageops brightness strength 0.6).

Not Keras ``RandomBrightness``: it adds one constant to every pixel, which the per-image
standardisation of the from-scratch backbones removes, so it taught them nothing. A lamp or
exposure change moves each pixel's value and saturates the bright background at white,
which is what the evaluation suite's brightness corruption does (up to +0.28)."""
_STRENGTH_FLOOR = 0.2
"""Per-image magnitude is drawn uniformly from [floor, 1] x the family's strength."""


def batch_seed(seed: int, split: str, batch_index: int) -> int:
    """A 31-bit seed for one batch, derived from the stage seed, split name and batch index."""
    split_code = zlib.crc32(split.encode())
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, split_code, batch_index]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def _sub_seeds(seed: int, tag: str, count: int) -> np.ndarray:
    """``count`` 31-bit integers derived from ``seed`` and a tag (a family or layer name)."""
    sequence = np.random.SeedSequence([seed & 0xFFFFFFFF, zlib.crc32(tag.encode())])
    return (sequence.generate_state(count) & 0x7FFFFFFF).astype(np.int64)


def _tf():
    import tensorflow as tf

    return tf


@contextlib.contextmanager
def _python_random(seed: int) -> Iterator[None]:
    """Seed Python's ``random`` for a block and restore its previous state afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def reseed_layer(layer: Any, seed: int) -> None:
    """Reset every ``SeedGenerator`` in ``layer`` and its sub-layers to states derived from seed.

    This makes a Keras preprocessing layer's next call a pure function of ``seed``.
    """
    import keras

    generators: list[Any] = []
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        candidates = [getattr(sub, "generator", None)]
        candidates += list(getattr(sub, "_backend_generators", {}).values())
        for gen in candidates:
            if isinstance(gen, keras.random.SeedGenerator) and all(
                gen is not g for g in generators
            ):
                generators.append(gen)
    # Tagged by class, not by name: Keras numbers auto-names per process (random_flip_3), and a
    # freshly built augmenter (another Beam worker) must draw exactly the same.
    states = _sub_seeds(seed, f"layer:{type(layer).__name__}", max(1, len(generators)))
    for gen, value in zip(generators, states, strict=False):
        gen.state.assign(np.array([value, 0], dtype=gen.state.dtype))


def _select_apply(x, mask, fn: Callable):
    """Apply ``fn`` to the images where ``mask`` is true, leaving the others untouched."""
    tf = _tf()
    index = tf.where(mask)[:, 0]
    if int(tf.size(index)) == 0:
        return x
    changed = fn(tf.gather(x, index))
    return tf.tensor_scatter_nd_update(x, index[:, None], tf.cast(changed, x.dtype))


@dataclass
class _Family:
    """One family ready to run: its config, its Keras layers and how to apply it."""

    name: str
    spec: AugFamily
    layers: list[Any]
    run: Callable[[Any, int], Any]  # (float32 sub-batch, seed) -> float32 sub-batch


class Augmenter:
    """A policy compiled into layers; call it on uint8 batches with a per-batch seed."""

    def __init__(self, policy: AugmentPolicy) -> None:
        self.policy = policy
        self.families: dict[str, _Family] = {}
        for name in ORDER:
            spec: AugFamily = getattr(policy, name)
            if spec.p > 0:
                self.families[name] = _build_family(name, spec)

    def __call__(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Augment a batch (uint8 [B, H, W, 3]) deterministically for ``seed``."""
        return self.apply(images, seed, only=None)

    def apply(
        self, images: np.ndarray, seed: int, only: str | None = None, force: bool = False
    ) -> np.ndarray:
        """Run the whole policy, or only family ``only``; ``force`` sets p to 1 (for reports)."""
        tf = _tf()
        images = _check_batch(images)
        if only is not None and only not in FAMILIES:
            raise ConfigError(f"unknown augmentation family {only!r}; known: {', '.join(FAMILIES)}")
        x = tf.cast(tf.convert_to_tensor(images), tf.float32)
        batch = int(x.shape[0])
        for name, family in self.families.items():
            if only is not None and name != only:
                continue
            mask_seed, run_seed = _sub_seeds(seed, f"family:{name}", 2)
            p = 1.0 if force else family.spec.p
            draw = tf.random.stateless_uniform([batch], seed=[int(mask_seed), 0])
            x = _select_apply(x, draw < p, lambda sub, f=family, s=int(run_seed): f.run(sub, s))
            x = tf.clip_by_value(x, 0.0, 255.0)
        if only is not None and force and only not in self.families:
            # A family with p = 0 in the policy, shown anyway at its strength.
            family = _build_family(only, getattr(self.policy, only))
            x = tf.clip_by_value(
                family.run(x, int(_sub_seeds(seed, f"family:{only}", 2)[1])), 0, 255
            )
        return tf.cast(tf.round(x), tf.uint8).numpy()


def build_augmenter(policy: AugmentPolicy) -> Augmenter:
    """Compile ``policy``; create it before any mixed-precision policy is set."""
    return Augmenter(policy)


def _check_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"augmentation expects a uint8 batch [B, H, W, 3], got {images.dtype} {images.shape}"
        )
    return images


def _magnitudes(batch: int, strength: float, seed: int):
    """Per-image imageops strengths in [floor, 1] x ``strength`` (a float32 tensor [B])."""
    tf = _tf()
    u = tf.random.stateless_uniform([batch], seed=[seed, 1], minval=_STRENGTH_FLOOR, maxval=1.0)
    return u * strength


def _choice(batch: int, kinds: int, seed: int):
    tf = _tf()
    return tf.random.stateless_uniform(
        [batch], seed=[seed, 2], minval=0, maxval=kinds, dtype=tf.int32
    )


class _FirstTraceFilter(logging.Filter):
    """Drop TensorFlow's retracing warning: each family has its own graphs, each traced once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_RETRACE_FILTER = _FirstTraceFilter()


def _compiled(fn: Callable, *extra_specs: tuple) -> Callable:
    """``fn`` as a ``tf.function`` over float32 batches of any size, one graph per image size.

    Eager dispatch of a dozen layers per batch costs more than the arithmetic on 2 cores, so
    each family runs as one graph; the sub-batch size varies per call, hence the None batch
    (some Keras layers need static height and width, hence a graph per size).
    """
    tf = _tf()
    logging.getLogger("tensorflow").addFilter(_RETRACE_FILTER)
    graphs: dict[tuple[int, int], Callable] = {}

    def call(x, *args):
        size = (int(x.shape[1]), int(x.shape[2]))
        if size not in graphs:
            specs = [tf.TensorSpec((None, *size, 3), tf.float32)]
            specs += [tf.TensorSpec(shape, dtype) for shape, dtype in extra_specs]
            graphs[size] = tf.function(fn, input_signature=specs)
        return graphs[size](x, *args)

    return call


def _keras_chain(layers: list[Any], compile: bool = True) -> Callable[[Any, int], Any]:
    """Run Keras layers in sequence, each reseeded from the call's seed first.

    The reseed (a variable assignment) happens eagerly; the compiled graph reads the state.
    """

    def forward(x):
        for layer in layers:
            x = layer(x, training=True)
        return x

    graph = _compiled(forward) if compile else forward

    def run(x, seed: int):
        for i, layer in enumerate(layers):
            reseed_layer(layer, int(_sub_seeds(seed, f"chain:{i}", 1)[0]))
        return graph(x)

    return run


def _imageops_runner(kind: str) -> Callable:
    """imageops op ``kind`` compiled over (images, per-image strengths, seed pair)."""
    from hemaflow.imaging import ops as imageops

    return _compiled(
        lambda x, strength, seed: imageops.apply(kind, x, strength, seed),
        ((None,), "float32"),
        ((2,), "int64"),
    )


def _build_family(name: str, spec: AugFamily) -> _Family:
    """Map a family's 0-1 strength onto its layers and ops."""
    import keras

    s = spec.strength
    L = keras.layers
    f32 = {"dtype": "float32"}
    scaled = s * IMAGEOPS_SCALE.get(name, 1.0)

    if name == "geometric":
        layers = [
            L.RandomFlip("horizontal_and_vertical", **f32),
            L.RandomRotation(0.125 * s, fill_mode="reflect", **f32),  # up to +-45 deg at s=1
            L.RandomZoom((-0.2 * s, 0.2 * s), fill_mode="reflect", **f32),
            L.RandomTranslation(0.1 * s, 0.1 * s, fill_mode="reflect", **f32),
            L.RandomShear(0.2 * s, 0.2 * s, fill_mode="reflect", **f32),
        ]
        chain = _keras_chain(layers)

        def geometric(x, seed: int):
            return chain(_random_transpose(x, seed), seed)

        return _Family(name, spec, layers, geometric)

    if name == "chromatic":
        layers = [
            L.RandomContrast(
                0.75 * s, value_range=VALUE_RANGE, **f32
            ),  # factor down to 0.25 at s=1
            # 0.5 is identity for RandomSaturation; keep the draw symmetric around it.
            L.RandomSaturation((0.5 - 0.25 * s, 0.5 + 0.25 * s), value_range=VALUE_RANGE, **f32),
            L.RandomHue(0.1 * s, value_range=VALUE_RANGE, **f32),
        ]
        chain = _keras_chain(layers)
        exposure = _imageops_runner("brightness")
        illuminant = _imageops_runner("white_balance")

        def chromatic(x, seed: int):
            tf = _tf()
            batch = int(x.shape[0])
            shift = tf.random.stateless_uniform(
                [batch], seed=[seed, 5], minval=-EXPOSURE_SHIFT, maxval=EXPOSURE_SHIFT
            )
            x = exposure(x, shift * s, _pair(seed))
            # The gains' direction and size are random per image; strength s scales them.
            x = illuminant(x, tf.fill([batch], float(s)), _pair(seed, 7))
            return chain(x, seed)

        return _Family(name, spec, layers, chromatic)

    if name == "erasing":
        layers = [
            L.RandomErasing(
                factor=(1.0, 1.0), scale=(0.02, 0.02 + 0.3 * s), value_range=VALUE_RANGE, **f32
            )
        ]
        return _Family(name, spec, layers, _keras_chain(layers))

    if name == "randaugment":
        layer = L.RandAugment(value_range=VALUE_RANGE, num_ops=2, factor=0.5 * s, **f32)
        layer._AUGMENT_LAYERS = list(CELL_SAFE_OPS)
        return _Family(name, spec, [layer], _keras_chain([layer]))

    if name == "augmix":
        layer = L.AugMix(value_range=VALUE_RANGE, factor=0.5 * s, all_ops=True, **f32)
        layer._augment_layers = [op for op in layer._augment_layers if op in CELL_SAFE_OPS]
        # AugMix picks its chains with Python's random while tracing: keep it eager, so every
        # batch gets fresh chains (from the seeded Python random) instead of one frozen set.
        chain = _keras_chain([layer], compile=False)

        def augmix(x, seed: int):
            with _python_random(seed):
                return chain(x, seed)

        return _Family(name, spec, [layer], augmix)

    if name == "stain":
        return _Family(name, spec, [], _stain_family(scaled))

    kinds = {
        "blur": BLUR_KINDS,
        "noise": NOISE_KINDS,
        "jpeg": ("jpeg",),
        "pixelate": ("pixelate",),
        "artifacts": ARTIFACT_KINDS,
    }
    if name not in kinds:
        raise ConfigError(f"unknown augmentation family {name!r}")
    ops = kinds[name]
    runners = {kind: _imageops_runner(kind) for kind in ops}

    def imageops_family(x, seed: int):
        batch = int(x.shape[0])
        strengths = _magnitudes(batch, scaled, seed)

        def one(kind: str, sub, index):
            return runners[kind](sub, tf_gather(strengths, index), _pair(seed))

        return _choose_indexed(x, _choice(batch, len(ops), seed), ops, one)

    return _Family(name, spec, [], imageops_family)


def _stain_family(scaled: float) -> Callable[[Any, int], Any]:
    """Every op of :data:`STAIN_OPS` in turn, each at its own per-image magnitude.

    The first op draws exactly what the family drew when it was stain_shift alone.
    """
    runners = [_imageops_runner(kind) for kind in STAIN_OPS]

    def stain(x, seed: int):
        batch = int(x.shape[0])
        for i, run in enumerate(runners):
            sub = seed if i == 0 else int(_sub_seeds(seed, f"stain:{STAIN_OPS[i]}", 1)[0])
            x = run(x, _magnitudes(batch, scaled, sub), _pair(sub))
        return x

    return stain


def _pair(seed: int, stream: int = 3):
    """An imageops seed pair derived from an integer seed (``stream`` separates uses)."""
    return _tf().constant([seed, stream], dtype="int64")


def tf_gather(values, index):
    return _tf().gather(values, index)


def _choose_indexed(x, choice, kinds: tuple[str, ...], fn: Callable):
    """Apply ``fn(kind, sub_batch, index)`` per image, ``choice`` [B] indexing into ``kinds``.

    Each kind runs once, on the sub-batch that drew it; ``index`` gives their batch positions.
    """
    tf = _tf()
    for k, kind in enumerate(kinds):
        index = tf.where(tf.equal(choice, k))[:, 0]
        if int(tf.size(index)) == 0:
            continue
        changed = fn(kind, tf.gather(x, index), index)
        x = tf.tensor_scatter_nd_update(x, index[:, None], tf.cast(changed, x.dtype))
    return x


def _random_transpose(x, seed: int):
    """Transpose each square image with probability 1/2 (swap rows and columns, lossless).

    With RandomFlip's independent horizontal and vertical flips this reaches all eight
    symmetries of the square, so every multiple of 90 degrees, at the cost of one transpose
    instead of four rotations.
    """
    tf = _tf()
    if x.shape[1] != x.shape[2]:
        return x
    batch = int(x.shape[0])
    flip = tf.random.stateless_uniform([batch], seed=[seed, 4]) < 0.5
    return tf.where(flip[:, None, None, None], tf.transpose(x, [0, 2, 1, 3]), x)


# --------------------------------------------------------------------------- mixing


class Mixer:
    """CutMix or MixUp within a batch, returning soft labels (Keras 3 layers)."""

    def __init__(self, mix: MixConfig) -> None:
        import keras

        self.kind = mix.kind
        if mix.kind == "cutmix":
            self.layer = keras.layers.CutMix(factor=(mix.alpha, mix.alpha), dtype="float32")
        elif mix.kind == "mixup":
            self.layer = keras.layers.MixUp(alpha=mix.alpha, dtype="float32")
        else:
            raise ValueError("mix.kind is 'none': there is nothing to mix")

    def __call__(
        self, images: np.ndarray, soft_labels: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mix each image with a partner from the batch.

        Returns (uint8 images, float32 soft labels summing to 1, partner index per image).
        """
        tf = _tf()
        images = _check_batch(images)
        soft = np.asarray(soft_labels, dtype=np.float32)
        if soft.ndim != 2 or len(soft) != len(images):
            raise ValueError(
                f"soft labels must be [B, classes] for {len(images)} images, got {soft.shape}"
            )
        x = tf.cast(tf.convert_to_tensor(images), tf.float32)
        reseed_layer(self.layer, seed)
        transform = self.layer.get_random_transformation(
            {"images": x, "labels": soft}, training=True
        )
        mixed = self.layer.transform_images(x, transform, training=True)
        labels = self.layer.transform_labels(tf.constant(soft), transform, training=True)
        labels = labels.numpy().astype(np.float32)
        labels /= labels.sum(axis=1, keepdims=True)
        partner = np.asarray(transform["permutation_order"]).astype(np.int64)
        out = tf.cast(tf.round(tf.clip_by_value(mixed, 0.0, 255.0)), tf.uint8).numpy()
        return out, labels, partner


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels [B] as float32 one-hot rows [B, num_classes]."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out
