"""model.colour_constancy: a per-image colour normalisation layer inside the model.

grey_world cancels a global per-channel gain (white balance), optical_density a scaled stain
intensity, on real pbc128 cells; the layer survives .keras save/load and SavedModel export,
and stays float32 under mixed precision.
"""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest

from hemaflow.config import CLASS_NAMES, ModelConfig
from hemaflow.modeling import zoo
from hemaflow.modeling.layers import COLOUR_CONSTANCY, colour_constancy, register_layers
from tests.helpers import load_pbc_arrays, pbc_cells

METHODS = [m for m in COLOUR_CONSTANCY if m != "none"]


@pytest.fixture(scope="module")
def cells(pbc128_root: Path) -> np.ndarray:
    """Four real 128 px cells of different classes, uint8 [4, 128, 128, 3]."""
    return pbc_cells(pbc128_root, ["basophil", "eosinophil", "lymphocyte", "neutrophil"], 0)


def normalise(images: np.ndarray, method: str) -> np.ndarray:
    """The layer's output for a uint8 batch."""
    layer = register_layers()["ColourConstancy"](method)
    return np.asarray(layer(images))


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_config_choices_are_the_layer_methods():
    hint = typing.get_type_hints(ModelConfig)["colour_constancy"]
    assert typing.get_args(hint) == COLOUR_CONSTANCY
    assert ModelConfig().colour_constancy == "none"


@pytest.mark.parametrize("gains", [(1.0, 0.85, 0.75), (0.8, 1.0, 0.9), (0.7, 0.7, 0.7)])
def test_grey_world_cancels_a_global_channel_gain(cells, gains):
    # Gains of at most 1: a gain above 1 clips the bright background, which no per-image
    # normalisation can undo (over-exposure is not a gain).
    cast = to_uint8(cells * np.asarray(gains, np.float32))
    out, out_cast = normalise(cells, "grey_world"), normalise(cast, "grey_world")
    assert mean_abs(cast, cells) > 10  # the cast is a real change of the input
    assert mean_abs(out_cast, out) < 1.0  # and all but uint8 rounding of it is gone
    np.testing.assert_allclose(out.mean(axis=(1, 2)), [[202.0, 169.3, 181.4]] * 4, rtol=1e-4)
    assert mean_abs(out[0], out[1]) > 10, "different cells must stay different"


@pytest.mark.parametrize("factor", [0.7, 1.4])
def test_optical_density_cancels_a_stain_intensity_change(cells, factor):
    # Beer-Lambert: k times the stain scales the optical density by k.
    od = -np.log((cells.astype(np.float64) + 1) / 256)
    restained = to_uint8(256 * np.exp(-factor * od) - 1)
    out, out_restained = (
        normalise(cells, "optical_density"),
        normalise(restained, "optical_density"),
    )
    assert mean_abs(restained, cells) > 10
    assert mean_abs(out_restained, out) < 1.5
    assert mean_abs(normalise(restained, "grey_world"), normalise(cells, "grey_world")) > 3
    assert out.min() >= 0 and out.max() <= 255
    assert mean_abs(out[0], out[1]) > 10


@pytest.mark.parametrize("method", METHODS)
def test_numpy_and_keras_paths_agree(cells, method):
    expected = colour_constancy(cells.astype(np.float32), method)
    np.testing.assert_allclose(normalise(cells, method), expected, rtol=1e-4, atol=1e-2)


def test_unknown_method_is_refused():
    from hemaflow.config import ConfigError

    with pytest.raises(ConfigError, match="grey_world"):
        zoo.build_model("small_cnn", 8, 32, colour_constancy="white_patch")
    with pytest.raises(ValueError, match="optical_density"):
        colour_constancy(np.zeros((1, 4, 4, 3), np.float32), "retinex")


@pytest.mark.parametrize("method", COLOUR_CONSTANCY)
def test_build_model_with_each_method_predicts(pbc128_root, method):
    images, _, _ = load_pbc_arrays(pbc128_root, 1)
    model = zoo.build_model("small_cnn", 8, 32, colour_constancy=method)
    names = [layer.name for layer in model.layers]
    assert ("colour_constancy" in names) is (method != "none")
    probs = np.asarray(model.predict_on_batch(images))
    assert probs.shape == (8, 8) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_layer_stays_float32_under_mixed_precision(pbc128_root, method):
    images, _, _ = load_pbc_arrays(pbc128_root, 1)
    model = zoo.build_model("resnet_mini", 8, 32, policy="mixed_bfloat16", colour_constancy=method)
    layer = model.get_layer("colour_constancy")
    assert layer.compute_dtype == "float32" and layer.output.dtype == "float32"
    assert zoo.backbone_of(model).layers[1].compute_dtype == "bfloat16"
    assert np.all(np.isfinite(model.predict_on_batch(images)))


@pytest.mark.parametrize("method", METHODS)
def test_layer_survives_save_load_and_saved_model_export(pbc128_root, tmp_path, method):
    import tensorflow as tf

    from hemaflow.modeling.export import export_model
    from hemaflow.modeling.loading import load_model

    images, _, _ = load_pbc_arrays(pbc128_root, 1)
    model = zoo.build_model("small_cnn", 8, 32, colour_constancy=method)
    expected = np.asarray(model.predict_on_batch(images))
    export_model(model, tmp_path, list(CLASS_NAMES), 32, {"backbone": "small_cnn"})

    loaded = load_model(tmp_path / "model.keras")  # safe_mode=True
    assert loaded.get_layer("colour_constancy").method == method
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(images)), expected)
    saved = tf.saved_model.load(str(tmp_path / "saved_model"))  # held: it owns the variables
    np.testing.assert_allclose(saved.serve(tf.constant(images)).numpy(), expected, atol=1e-6)
