"""AugMix + Jensen-Shannon consistency (train.consistency): the loss, the views, the trainer."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hemaflow.config import ConfigError, ConsistencyConfig, load_config
from hemaflow.modeling import consistency
from tests.helpers import load_pbc_arrays, tiny_cnn

REPO = Path(__file__).resolve().parents[1]
ON = ConsistencyConfig(kind="augmix_jsd")


def _numpy_jsd(p1, p2, p3):
    """Reference: mean over rows of (1/3) sum_i KL(p_i || M), M the mean of the three."""
    ps = [np.asarray(p, np.float64) for p in (p1, p2, p3)]
    m = sum(ps) / 3
    kl = [np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / m), 0.0), -1) for p in ps]
    return float(np.mean(sum(kl) / 3))


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_jensen_shannon_matches_numpy_and_its_bounds():
    rng = np.random.default_rng(0)
    p1, p2, p3 = (_softmax(rng.normal(0, 2, (16, 8))) for _ in range(3))
    value = float(consistency.jensen_shannon(p1, p2, p3))
    assert value == pytest.approx(_numpy_jsd(p1, p2, p3), rel=1e-4)
    assert value > 0.01
    assert float(consistency.jensen_shannon(p1, p1, p1)) == pytest.approx(0.0, abs=1e-6)
    for order in [(p2, p1, p3), (p3, p2, p1), (p2, p3, p1)]:
        assert float(consistency.jensen_shannon(*order)) == pytest.approx(value, rel=1e-5)
    # Three disjoint certainties are as far apart as three distributions get: log 3.
    eye = np.eye(8, dtype=np.float32)
    far = float(consistency.jensen_shannon(eye[[0]], eye[[1]], eye[[2]]))
    assert far == pytest.approx(math.log(3), rel=1e-4)
    assert all(
        float(consistency.jensen_shannon(*(_softmax(rng.normal(0, 9, (4, 8))) for _ in range(3))))
        <= math.log(3) + 1e-6
        for _ in range(20)
    )


def test_config_is_validated_and_off_by_default():
    assert load_config("quickstart").train.consistency == ConsistencyConfig(kind="none")
    on = load_config("quickstart", overrides={"train.consistency.kind": "augmix_jsd"})
    assert on.train.consistency.weight == 12.0 and on.train.consistency.depth == -1
    for key, value in [("kind", "augmix"), ("weight", -1), ("depth", 0), ("width", 0)]:
        with pytest.raises(ConfigError, match=f"consistency.{key}"):
            load_config("quickstart", overrides={f"train.consistency.{key}": value})


def test_augmix_ops_are_cell_safe_and_leave_the_corruptions_out():
    from hemaflow.imaging import corruptions
    from hemaflow.imaging.policy import CELL_SAFE_OPS

    assert set(consistency.AUGMIX_OPS.values()) <= set(CELL_SAFE_OPS)
    # What the paper leaves out because it overlaps the test corruptions (ImageNet-C there,
    # the evaluation suite's brightness, contrast, saturation and blur here).
    overlapping = {"random_contrast", "random_brightness", "random_color_degeneration"}
    assert not (overlapping | {"random_sharpness"}) & set(consistency.AUGMIX_OPS.values())
    assert not set(consistency.OP_NAMES) & set(corruptions.CORRUPTIONS)
    # Training code never reaches the evaluation corruptions.
    forbidden = re.compile(
        r"import .*(corruptions|independent|albumentations)|from hemaflow.imaging import .*corruptions"
    )
    for path in [
        "hemaflow/modeling/consistency.py",
        "hemaflow/modeling/fitting.py",
        "components/train.py",
    ]:
        assert not forbidden.search((REPO / path).read_text()), path


@pytest.fixture(scope="module")
def cells(pbc128_root):
    images, labels, _ = load_pbc_arrays(pbc128_root, 4, 48)
    return images, np.eye(8, dtype=np.float32)[labels]


def test_augmix_views_are_per_image_seeded_and_keep_the_background(cells):
    import tensorflow as tf

    images = tf.constant(cells[0])
    n = len(cells[0])
    out = consistency.augmix_views(images, tf.constant([3, 4], tf.int64), ON).numpy()
    assert out.shape == (3 * n, 48, 48, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:n], cells[0])  # the clean view comes first, unchanged
    again = consistency.augmix_views(images, tf.constant([3, 4], tf.int64), ON).numpy()
    np.testing.assert_array_equal(out, again)
    other = consistency.augmix_views(images, tf.constant([5, 4], tf.int64), ON).numpy()
    assert np.any(other[n:] != out[n:])
    clean = cells[0].astype(np.float32)
    for view in (out[n : 2 * n], out[2 * n :]):
        change = np.abs(view.astype(np.float32) - clean).mean(axis=(1, 2, 3))
        assert np.all(change > 0.0), change
        # Per-image chains: not one transformation shared by the batch.
        assert change.std() > 0.1 * change.mean(), change
        # A bright smear stays bright (no solarize/posterize/equalize darkening).
        assert abs(view.mean() - clean.mean()) < 0.05 * clean.mean()
    assert np.any(out[n : 2 * n] != out[2 * n :])  # two different views
    # Two identical images get different views (random per image, not per position only).
    twin = tf.constant(np.repeat(cells[0][:1], 8, axis=0))
    views = consistency.augmix(twin, tf.constant([1, 2], tf.int64)).numpy()
    assert len({v.tobytes() for v in views}) == 8


def _pair_of_models(label_smoothing: float, weight: float):
    """The same tiny CNN twice (same initial weights): plain, and wrapped by the trainer."""
    import keras

    from hemaflow.modeling import fitting

    plain, other = tiny_cnn(48, seed=3), tiny_cnn(48, seed=3)
    trainer = consistency.wrap(other, ConsistencyConfig(kind="augmix_jsd", weight=weight))
    for model in (plain, trainer):
        fitting.compile_model(model, keras.optimizers.SGD(0.1), label_smoothing, False)
    return plain, other, trainer


def test_trainer_on_identical_views_is_plain_training(cells):
    """Three copies of a batch: BatchNorm sees the same statistics and JSD is 0, so one step
    must give plain training's loss and weights exactly, whatever the weight."""
    images, labels = cells
    stacked = np.concatenate([images] * 3)
    for weight in (0.0, 12.0):
        plain, classifier, trainer = _pair_of_models(0.1, weight)
        expected = plain.train_on_batch(images, labels, return_dict=True)
        logs = trainer.train_on_batch(stacked, labels, return_dict=True)
        assert logs["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert logs["ce"] == pytest.approx(expected["loss"], rel=1e-5)
        assert logs["jsd"] == pytest.approx(0.0, abs=1e-6)
        for a, b in zip(plain.get_weights(), classifier.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_trainer_loss_is_clean_ce_plus_weighted_jsd(cells):
    import keras
    import tensorflow as tf

    images, labels = cells
    stacked = consistency.augmix_views(tf.constant(images), tf.constant([7, 7], tf.int64), ON)
    _, classifier, trainer = _pair_of_models(0.1, 12.0)
    # The loss the step will take, from the same weights in training mode (BatchNorm on 3B).
    probs = classifier(stacked, training=True).numpy()
    n = len(images)
    ce = float(keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(labels, probs[:n]))
    jsd = _numpy_jsd(probs[:n], probs[n : 2 * n], probs[2 * n :])
    assert jsd > 1e-4
    logs = trainer.train_on_batch(stacked, labels, return_dict=True)
    assert logs["ce"] == pytest.approx(ce, rel=1e-4)
    assert logs["jsd"] == pytest.approx(jsd, rel=1e-3)
    assert logs["loss"] == pytest.approx(ce + 12.0 * jsd, rel=1e-4)
    # Not CE over all three views: the augmented views carry no CE term.
    everything = float(
        keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
            np.concatenate([labels] * 3), probs
        )
    )
    assert abs(everything - ce) > 1e-4


def test_mixed_float16_uses_a_loss_scale_optimizer(cells):
    import keras
    import tensorflow as tf

    from hemaflow.modeling import fitting, precision

    images, labels = cells
    with precision.policy_scope("mixed_float16"):
        classifier = tiny_cnn(48, seed=1)
    trainer = consistency.wrap(classifier, ON)
    fitting.compile_model(trainer, keras.optimizers.Adam(1e-3), 0.1, False)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    stacked = consistency.augmix_views(tf.constant(images), tf.constant([1, 1], tf.int64), ON)
    before = [w.copy() for w in classifier.get_weights()]
    for _ in range(2):
        logs = trainer.train_on_batch(stacked, labels, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()) and logs["jsd"] > 0
    assert any(np.any(a != b) for a, b in zip(before, classifier.get_weights(), strict=True))


def test_train_with_consistency_exports_the_plain_classifier(pbc_tfrecords, tmp_path):
    import keras
    from hemaflow.components import train

    from hemaflow.data import tfrecords
    from hemaflow.modeling import fitting, loading

    overrides = {
        "model.batch_size": 32,
        "model.head.dense": [64],
        "train.epochs": 2,
        "train.learning_rate": 0.003,
        "train.consistency.kind": "augmix_jsd",
    }
    config = load_config("quickstart", overrides=overrides)
    out = tmp_path / "model"
    metrics = train.run(str(pbc_tfrecords), "small_cnn", "", str(out), config)
    assert metrics["consistency"] == "augmix_jsd" and metrics["consistency_weight"] == 12.0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "augmix_jsd" in (out / "report.html").read_text()
    history = json.loads((out / "history.json").read_text())
    assert len(history["jsd"]) == metrics["epochs_run"] >= 1
    assert all(0 < v < math.log(3) for v in history["jsd"])
    assert all(np.isfinite(history["loss"])) and "val_jsd" not in history
    # loss = ce + 12 x jsd per epoch (epoch means of per-batch values: linear, so exact).
    np.testing.assert_allclose(
        history["loss"], np.add(history["ce"], np.multiply(12.0, history["jsd"])), rtol=1e-4
    )

    # The artifact is the classifier alone: the same layers and output as plain training's.
    loaded = loading.load_model(str(out))
    s = fitting.setup(str(pbc_tfrecords), "small_cnn", config)
    plain = fitting.build(s, config, fitting.default_hparams(config))
    assert type(loaded).__name__ == type(plain).__name__ == "Functional"
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in plain.layers
    ]
    assert [w.shape for w in loaded.weights] == [w.shape for w in plain.weights]
    assert tuple(loaded.output.shape) == tuple(plain.output.shape) == (None, 8)
    assert not any("consistency" in layer.name for layer in loaded.layers)
    val = tfrecords.read_dataset(pbc_tfrecords, "val", 8, 32, batch_size=64)
    assert metrics["val_accuracy"] == pytest.approx(fitting.evaluate_accuracy(loaded, val))
    assert isinstance(keras.saving.load_model(out / "model.keras"), keras.Model)
