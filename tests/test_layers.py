"""hemaflow's Keras layers: a model built from them loads safely in a process that knows
nothing but the library (no stage module imported)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def test_model_of_hemaflow_layers_loads_safely_in_a_fresh_process(tmp_path):
    import keras

    from hemaflow.modeling.layers import register_layers

    layers = register_layers()
    inputs = keras.Input((None, None, 3), dtype="uint8")
    resized = layers["ResizeImages"](8, dtype="float32")(inputs)
    viewed = layers["DihedralView"](3, dtype="float32")(resized)
    flat = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(viewed))
    probs = keras.layers.Dense(4, activation="softmax")(flat)
    mixed = layers["WeightedAverage"]([0.25, 0.75], dtype="float32")([probs, probs])
    out = layers["TemperatureScaling"](2.0, dtype="float32")(mixed)
    model = keras.Model(inputs, out)
    images = np.random.default_rng(0).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    expected = np.asarray(model(images))
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "images.npy", images)

    script = (
        "import sys, numpy as np\n"
        "from hemaflow.modeling.loading import load_model\n"
        f"model = load_model({str(path)!r})\n"
        f"np.save({str(tmp_path / 'got.npy')!r}, np.asarray(model(np.load({str(tmp_path / 'images.npy')!r}))))\n"
        "assert not any(m.startswith('hemaflow.components') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "got.npy"), expected, atol=1e-6)
