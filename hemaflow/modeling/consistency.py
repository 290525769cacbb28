"""AugMix with the Jensen-Shannon consistency loss (Hendrycks et al., ICLR 2020).

The paper's gain on corrupted images comes mostly from its loss, not from the mixed images
alone: every training image is seen clean and in two AugMix views, all three go through one
forward pass (so BatchNorm normalises with the statistics of all three), and

    loss = CE(p_clean, y) + weight * JS(p_clean, p_aug1, p_aug2),
    JS = mean_i KL(p_i || M),  M = (p_clean + p_aug1 + p_aug2) / 3.

:func:`augmix` makes the views inside ``tf.data`` (see ``fitting.dataset``), and
:class:`ConsistencyTrainer` wraps the classifier only for ``fit``: the model that is saved
and exported is the classifier itself, so no consistency machinery reaches the artifact.

Why not ``keras.layers.AugMix``: it picks its chains with Python's ``random`` while it is
traced, so inside a ``tf.data`` map (traced once) every batch of the whole training would get
the same chains; it also shares one chain and one set of mixing weights across the batch, and
draws ops and depths differently from the paper. :func:`augmix` follows the paper's
``augment_and_mix`` per image with stateless random ops, so it is a pure function of a seed.

The ops are the paper's minus the ones :data:`hemaflow.imaging.policy.CELL_SAFE_OPS` leaves
out (equalize, posterize and solarize turn a bright smear background dark), and they keep
clear of the evaluation corruptions, as the paper keeps clear of ImageNet-C: no contrast,
brightness, colour, sharpness, blur, noise, JPEG or pixelation.
"""

from __future__ import annotations

import math
from typing import Any

from hemaflow.config import ConsistencyConfig
from hemaflow.imaging.policy import CELL_SAFE_OPS

#: The AugMix ops, each with the Keras layer name of the :data:`CELL_SAFE_OPS` entry it is.
AUGMIX_OPS: dict[str, str] = {
    "auto_contrast": "auto_contrast",
    "rotate": "random_rotation",
    "shear_x": "random_shear",
    "shear_y": "random_shear",
    "translate_x": "random_translation",
    "translate_y": "random_translation",
}
assert set(AUGMIX_OPS.values()) <= set(CELL_SAFE_OPS), "AugMix ops must be cell-safe"
OP_NAMES: tuple[str, ...] = tuple(AUGMIX_OPS)
MAX_RANDOM_DEPTH = 3  # depth -1: 1 to 3 ops per chain, as in the paper
EPSILON = 1e-7  # the paper's clamp of the mixture before its log


def _tf():
    import tensorflow as tf

    return tf


def _affine(op, level, sign, height: int, width: int):
    """Per-image projective transforms [B, 8] (output -> input pixel) for the geometric ops.

    Magnitudes are the paper's at ``level`` in [0.1, severity]: rotation up to 3 x level
    degrees, shear up to 0.03 x level, translation up to level x side / 30 pixels (rotation
    and translation truncated to whole degrees and pixels, as there). Images whose op is not
    geometric get the identity, which bilinear sampling at pixel centres leaves unchanged.
    """
    tf = _tf()
    b = tf.shape(op)[0]
    one, zero = tf.ones([b]), tf.zeros([b])
    degrees = tf.floor(level * 30.0 / 10.0) * sign
    theta = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    shear = level * 0.3 / 10.0 * sign
    shift_x = tf.floor(level * (width / 3.0) / 10.0) * sign
    shift_y = tf.floor(level * (height / 3.0) / 10.0) * sign
    identity = tf.stack([one, zero, zero, zero, one, zero, zero, zero], -1)
    rotate = tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zero, zero], -1
    )
    by_op = {
        "rotate": rotate,
        "shear_x": tf.stack([one, shear, zero, zero, one, zero, zero, zero], -1),
        "shear_y": tf.stack([one, zero, zero, shear, one, zero, zero, zero], -1),
        "translate_x": tf.stack([one, zero, shift_x, zero, one, zero, zero, zero], -1),
        "translate_y": tf.stack([one, zero, zero, zero, one, shift_y, zero, zero], -1),
    }
    transforms = identity
    for name, matrix in by_op.items():
        transforms = tf.where((op == OP_NAMES.index(name))[:, None], matrix, transforms)
    return transforms


def auto_contrast(x):
    """Stretch each channel of each image to the full 0-255 range (PIL's autocontrast)."""
    tf = _tf()
    lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    span = hi - lo
    stretched = (x - lo) * (255.0 / tf.maximum(span, 1e-6))
    return tf.where(span > 0, stretched, x)


def _compose(a, b):
    """Projective transforms [B, 8] of ``a`` then ``b`` (output -> input maps: a . b)."""
    tf = _tf()

    def full(t):
        return tf.reshape(tf.concat([t, tf.ones_like(t[:, :1])], -1), [-1, 3, 3])

    m = tf.matmul(full(a), full(b))
    return tf.reshape(m, [-1, 9])[:, :8] / m[:, 2:3, 2]


def augmix(
    images,
    seed,
    severity: int = 3,
    width: int = 3,
    depth: int = -1,
    alpha: float = 1.0,
):
    """One AugMix view of each image of a batch, as the paper's ``augment_and_mix``.

    Per image: ``width`` chains of ``depth`` ops (-1: 1-3 at random), each op drawn uniformly
    from :data:`OP_NAMES` at a level uniform in [0.1, severity]; chains mixed with Dirichlet
    (``alpha``) weights, then the mix blended with the image by a Beta(``alpha``, ``alpha``)
    weight. ``images``: [B, H, W, 3] in 0-255; ``seed``: a stateless seed pair. Returns
    float32 in 0-255. Geometric ops reflect at the border (cells on a uniform background).

    A chain is resampled once: its geometric ops compose into one transform (exact), and
    autocontrast, a per-channel linear stretch that is idempotent and commutes with bilinear
    resampling, is applied to the image before it; the only difference from op-by-op is that
    the stretch's min and max are those of the image before resampling (which a reflected
    shift or turn of a few degrees barely moves). One resampling per chain instead of one per
    op keeps this cheap enough for ``tf.data`` on a few CPU cores, and blurs less.
    """
    tf = _tf()
    x = tf.cast(images, tf.float32)
    height, width_px = int(x.shape[1]), int(x.shape[2])
    b = tf.shape(x)[0]
    steps = MAX_RANDOM_DEPTH if depth <= 0 else depth
    seeds = tf.random.experimental.stateless_split(
        tf.cast(seed, tf.int64), num=2 + width * (1 + steps)
    )
    gammas = tf.random.stateless_gamma([b, width], seeds[0], alpha=alpha)
    chain_weights = gammas / tf.reduce_sum(gammas, -1, keepdims=True)
    pair = tf.random.stateless_gamma([b, 2], seeds[1], alpha=alpha)
    blend = (pair[:, 0] / tf.reduce_sum(pair, -1))[:, None, None, None]
    stretched = auto_contrast(x)
    identity = tf.tile(tf.constant([[1.0, 0, 0, 0, 1, 0, 0, 0]]), [b, 1])
    mix = tf.zeros_like(x)
    k = 2
    for chain in range(width):
        if depth > 0:
            chain_depth = tf.fill([b], depth)
        else:
            chain_depth = tf.random.stateless_uniform(
                [b], seeds[k], 1, MAX_RANDOM_DEPTH + 1, tf.int32
            )
        k += 1
        transform, contrast = identity, tf.zeros([b], tf.bool)
        for step in range(steps):
            draws = tf.random.stateless_uniform([b, 3], seeds[k])
            k += 1
            op = tf.minimum(tf.cast(draws[:, 0] * len(OP_NAMES), tf.int32), len(OP_NAMES) - 1)
            op = tf.where(step < chain_depth, op, -1)  # -1: this image's chain has ended
            level = 0.1 + draws[:, 1] * (severity - 0.1)
            sign = tf.where(draws[:, 2] < 0.5, -1.0, 1.0)
            transform = _compose(transform, _affine(op, level, sign, height, width_px))
            contrast |= op == OP_NAMES.index("auto_contrast")
        view = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.where(contrast[:, None, None, None], stretched, x),
            transforms=transform,
            output_shape=[height, width_px],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )
        mix += chain_weights[:, chain, None, None, None] * view
    return tf.clip_by_value((1.0 - blend) * x + blend * mix, 0.0, 255.0)


def augmix_views(images, seed, config: ConsistencyConfig):
    """[clean; AugMix view 1; AugMix view 2] of a uint8 batch, as one uint8 [3B, H, W, 3]."""
    tf = _tf()
    first, second = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    views = [
        augmix(images, s, config.severity, config.width, config.depth, config.alpha)
        for s in (first, second)
    ]
    uint8 = [tf.cast(tf.round(v), images.dtype) for v in views]
    return tf.concat([images, *uint8], axis=0)


def jensen_shannon(p_clean, p_aug1, p_aug2):
    """Batch mean of the Jensen-Shannon divergence of three predicted distributions.

    Each KL(p_i || M) follows the paper's code: the mixture is clamped to [1e-7, 1] before
    its log, and p log p is 0 where p is 0. Bounded by log 3; 0 iff the three agree.
    """
    from keras import ops

    ps = [ops.cast(p, "float32") for p in (p_clean, p_aug1, p_aug2)]
    log_mixture = ops.log(ops.clip((ps[0] + ps[1] + ps[2]) / 3.0, EPSILON, 1.0))
    kls = [ops.sum(p * (ops.log(ops.clip(p, EPSILON, 1.0)) - log_mixture), axis=-1) for p in ps]
    return ops.mean((kls[0] + kls[1] + kls[2]) / 3.0)


def _trainer_class() -> type:
    """The Keras model class, defined on first use so importing this module needs no Keras."""
    global _TRAINER
    if _TRAINER is not None:
        return _TRAINER
    import keras
    import tensorflow as tf
    from keras.src.losses import loss as loss_module

    class ConsistencyTrainer(keras.Model):
        """``fit`` for a classifier on [clean; aug1; aug2] batches with CE + weight x JSD.

        Batches are (images [3B, ...], labels [B, classes]). One forward pass sees all
        three views; the compiled loss (cross-entropy with the configured label smoothing,
        on soft labels) scores the clean view only. Validation is the classifier's own,
        on single clean views. ``loss`` in the history is the total, ``ce`` and ``jsd``
        its parts (``jsd`` unweighted). The TensorFlow backend's train step, with the
        optimizer's loss scaling, so a LossScaleOptimizer under mixed_float16 works.
        """

        def __init__(self, classifier: Any, weight: float, **kwargs: Any) -> None:
            super().__init__(
                name=f"{classifier.name}_consistency", dtype=classifier.dtype_policy, **kwargs
            )
            self.classifier = classifier
            self.weight = float(weight)
            self.jsd_tracker = keras.metrics.Mean(name="jsd")
            self.ce_tracker = keras.metrics.Mean(name="ce")
            self.built = True  # the classifier is built: load_weights works before fit

        def call(self, inputs: Any, training: bool = False) -> Any:
            return self.classifier(inputs, training=training)

        def train_step(self, data: Any) -> dict[str, Any]:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            batch = tf.shape(y)[0]
            with tf.GradientTape() as tape:
                probs = self(x, training=True)
                p_clean = probs[:batch]
                ce = self._compute_loss(
                    x=x, y=y, y_pred=p_clean, sample_weight=sample_weight, training=True
                )
                jsd = jensen_shannon(p_clean, probs[batch : 2 * batch], probs[2 * batch :])
                loss = ce + self.weight * loss_module.scale_loss_for_distribution(jsd)
                self._loss_tracker.update_state(
                    loss_module.unscale_loss_for_distribution(loss), sample_weight=batch
                )
                scaled = self.optimizer.scale_loss(loss)
            weights = self.trainable_weights
            grads = tape.gradient(scaled, weights)
            self.optimizer.apply_gradients(zip(grads, weights, strict=True))
            self.ce_tracker.update_state(loss_module.unscale_loss_for_distribution(ce))
            self.jsd_tracker.update_state(jsd)
            return self.compute_metrics(x, y, p_clean, sample_weight=sample_weight)

        def test_step(self, data: Any) -> dict[str, Any]:
            logs = super().test_step(data)
            # Validation has one view: no consistency term to report.
            return {k: v for k, v in logs.items() if k not in ("jsd", "ce")}

    _TRAINER = ConsistencyTrainer
    return _TRAINER


_TRAINER: type | None = None


def wrap(classifier: Any, config: ConsistencyConfig) -> Any:
    """The model to ``fit``: ``classifier`` itself, or a trainer around it for augmix_jsd.

    The trainer shares the classifier's variables, so training it trains the classifier;
    save and export the classifier.
    """
    if config.kind == "none":
        return classifier
    if config.kind != "augmix_jsd":
        raise ValueError(f"consistency.kind: unknown {config.kind!r}")
    return _trainer_class()(classifier, config.weight)


def enabled(config: ConsistencyConfig | None) -> bool:
    return config is not None and config.kind != "none"
