"""The model zoo: raw uint8 in, float32 probabilities out, preprocessing inside, freezing."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.config import HeadConfig
from hemaflow.modeling import zoo


def _images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet_mini") as err:
        zoo.build_model("resnet9000", 8, 32)
    assert "efficientnet_b0" in str(err.value) and "resnet9000" in str(err.value)
    names = zoo.known_backbones()
    for name in (
        "vgg16",
        "resnet152_v2",
        "mobilenet_v3_large",
        "efficientnet_v2_s",
        "convnext_tiny",
        "densenet121",
        "small_cnn",
        "resnet_mini",
    ):
        assert name in names


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet_mini", "mobilenet_v3_small"])
def test_models_map_uint8_images_to_probabilities(backbone):
    model = zoo.build_model(backbone, 8, 32, head=HeadConfig(dense=[32, 16], dropout=0.2))
    assert model.input.dtype == "uint8"
    probs = np.asarray(model.predict_on_batch(_images(3, 32)))
    assert probs.shape == (3, 8) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert [layer.name for layer in model.layers if layer.name.startswith("head_dense")] == [
        "head_dense1",
        "head_dense2",
    ]


def test_softmax_stays_float32_under_bf16():
    model = zoo.build_model("resnet_mini", 8, 32, policy="mixed_bfloat16")
    assert zoo.backbone_of(model).layers[1].compute_dtype == "bfloat16"
    assert model.get_layer(zoo.OUTPUT_LAYER).compute_dtype == "float32"
    assert model.get_layer("to_unit").compute_dtype == "float32"
    assert np.asarray(model.predict_on_batch(_images(2, 32))).dtype == np.float32


@pytest.mark.parametrize(
    ("mode", "app"), [("caffe", "resnet50"), ("torch", "densenet"), ("tf", "mobilenet_v2")]
)
def test_preprocessing_matches_keras_applications(mode, app):
    import keras

    x = _images(2, 8)
    out = x
    for layer in zoo.preprocessing_layers(mode):
        out = layer(out)
    expected = getattr(keras.applications, app).preprocess_input(x.astype("float32"))
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-3)


def test_caffe_preprocessing_survives_a_safe_mode_round_trip(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = inputs
    for layer in zoo.preprocessing_layers("caffe"):
        x = layer(x)
    model = keras.Model(inputs, keras.layers.Flatten()(x))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict_on_batch(_images(1, 8)), model.predict_on_batch(_images(1, 8))
    )


def test_set_trainable_layers_freezes_and_unfreezes_the_top():
    model = zoo.build_model("resnet_mini", 8, 32)
    base = zoo.backbone_of(model)

    def is_bn(layer) -> bool:
        return type(layer).__name__.startswith("BatchNorm")

    convs = [layer for layer in base.layers if layer.weights and not is_bn(layer)]
    norms = [layer for layer in base.layers if is_bn(layer)]
    assert zoo.set_trainable_layers(model, 0) == 0
    assert not base.trainable_weights and model.trainable_weights  # the head still trains
    # The count is of weighted layers other than BatchNorm, which stays frozen.
    assert zoo.set_trainable_layers(model, 3) == 3
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert trainable == convs[-3:]
    assert not any(layer.trainable for layer in norms)
    # Fine-tuning a pretrained backbone whole keeps its BatchNorm statistics as loaded...
    assert zoo.set_trainable_layers(model, -1, freeze_batchnorm=True) == len(convs)
    assert all(layer.trainable for layer in convs) and not any(n.trainable for n in norms)
    # ...while from scratch (-1 on its own) everything learns, BatchNorm included.
    assert zoo.set_trainable_layers(model, -1) == len(convs) + len(norms)
    assert all(layer.trainable for layer in base.layers)


def test_weights_file_loads_into_the_backbone(tmp_path):
    first = zoo.build_model("small_cnn", 8, 32)
    path = tmp_path / "backbone.weights.h5"
    zoo.backbone_of(first).save_weights(path)
    second = zoo.build_model("small_cnn", 8, 32, weights=str(path))
    for a, b in zip(zoo.backbone_of(first).weights, zoo.backbone_of(second).weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(OSError, match="no such file"):
        zoo.build_model("small_cnn", 8, 32, weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="from scratch"):
        zoo.build_model("small_cnn", 8, 32, weights="imagenet")


def test_standardize_preprocessing_removes_brightness_and_contrast():
    x = _images(3, 32).astype("float32")
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    shifted = np.clip(mean + 0.4 * (x - mean) + 20.0, 0, 255)  # lower contrast, brighter

    def run(images):
        for layer in zoo.preprocessing_layers("standardize"):
            images = layer(images)
        return np.asarray(images)

    out, out_shifted = run(x), run(shifted)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-2)
    np.testing.assert_allclose(out, out_shifted, atol=2e-2)
    assert zoo.backbone_spec("resnet_mini").preprocess == "standardize"


@pytest.mark.parametrize(("size", "stride"), [(32, 2), (64, 2), (96, 3), (128, 4)])
def test_resnet_mini_stem_brings_every_size_to_the_same_grid(size, stride):
    backbone = zoo.resnet_mini(size)
    stem = backbone.get_layer("stem_conv")
    assert stem.strides == (stride, stride) and stem.kernel_size == (2 * stride - 1,) * 2
    assert backbone.get_layer("stem_relu").output.shape[1] == -(-size // stride)
    if size >= 64:  # everything after the stem is the same network at any size
        assert backbone.output.shape[1:] == (4, 4, 192)
        assert backbone.count_params() - stem.count_params() == (
            zoo.resnet_mini(64).count_params() - 3 * 3 * 3 * 24
        )


@pytest.mark.parametrize(
    "policy, scaled",
    [("float32", False), ("mixed_bfloat16", False), ("mixed_float16", True)],
)
def test_the_model_carries_its_policy_and_float16_scales_the_loss(policy, scaled):
    import keras

    from hemaflow.modeling import fitting

    model = zoo.build_model("small_cnn", 8, 32, policy=policy)
    fitting.compile_model(model, fitting.make_optimizer("adamw", 1e-3, "constant", 10))
    assert model.dtype_policy.name == policy
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) is scaled
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_float16_training_on_cpu_has_finite_falling_loss_and_live_gradients():
    import keras
    import tensorflow as tf

    from hemaflow.modeling import fitting

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    # Two classes a network tells apart at once: dark and bright images.
    images = np.where(labels[:, None, None, None] == 1, 200, 40) + rng.integers(
        0, 30, (64, 32, 32, 3)
    )
    images = images.astype(np.uint8)
    targets = np.eye(2, dtype=np.float32)[labels]
    model = zoo.build_model("small_cnn", 2, 32, policy="mixed_float16")
    fitting.compile_model(model, fitting.make_optimizer("adam", 1e-3, "constant", 10))
    history = model.fit(images, targets, batch_size=16, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    first = next(w for w in model.trainable_weights if "kernel" in w.path)
    with tf.GradientTape() as tape:
        loss = keras.losses.categorical_crossentropy(targets[:16], model(images[:16]))
        scaled = model.optimizer.scale_loss(tf.reduce_mean(loss))
    grad = tape.gradient(scaled, first)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0.0
