"""Model folders: export with two endpoints, safe loading, clear errors for the wrong kind."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from hemaflow.config import CLASS_NAMES
from tests.helpers import SIZE, load_pbc_arrays, mark_complete, tiny_cnn, train_tiny


@pytest.fixture(scope="module")
def exported(pbc128_root, tmp_path_factory):
    from hemaflow.modeling.export import export_model

    images, labels, _ = load_pbc_arrays(pbc128_root, 12)
    model, history = train_tiny(images, labels, epochs=1)
    folder = tmp_path_factory.mktemp("model")
    export_model(model, folder, list(CLASS_NAMES), SIZE, {"backbone": "tiny", "history": history})
    return mark_complete(folder), model, images


def test_export_writes_model_folder(exported):
    folder, _, _ = exported
    assert (folder / "model.keras").is_file()
    assert (folder / "saved_model" / "saved_model.pb").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "model"
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert manifest["image_size"] == SIZE
    assert manifest["backbone"] == "tiny"
    assert "history" not in manifest
    assert "loss" in json.loads((folder / "history.json").read_text())


def test_loaded_model_and_endpoints_agree(exported):
    import tensorflow as tf

    from hemaflow.data.tfrecords import encode_example
    from hemaflow.modeling.loading import load_model, read_model_manifest

    folder, model, images = exported
    batch = images[:6]
    expected = model.predict(batch, verbose=0)
    loaded = load_model(str(folder))
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), expected, atol=1e-5)
    assert read_model_manifest(folder / "model.keras")["image_size"] == SIZE

    saved = tf.saved_model.load(str(folder / "saved_model"))
    served = saved.serve(tf.constant(batch)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    examples = [encode_example(img, np.eye(8)[0], f"id{i}") for i, img in enumerate(batch)]
    from_examples = saved.serve_examples(tf.constant(examples)).numpy()
    np.testing.assert_allclose(from_examples, expected, atol=1e-5)
    assert from_examples.shape == (6, 8)


def test_safe_mode_refuses_lambda_layer(tmp_path):
    import keras

    from hemaflow.modeling.loading import ModelError, load_model

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32") / 255.0)(inputs)
    outputs = keras.layers.Dense(8, activation="softmax")(keras.layers.Flatten()(x))
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelError, match="Lambda"):
        load_model(path)


def test_wrong_kinds_of_model_file_are_named(tmp_path):
    from hemaflow.modeling.loading import ModelError, load_model, read_model_manifest

    text = tmp_path / "text" / "model.keras"
    text.parent.mkdir()
    text.write_text("not a model")
    with pytest.raises(ModelError, match=r"text.*not a Keras 3 \.keras archive"):
        load_model(text.parent)

    h5 = tmp_path / "old.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ModelError, match=r"old\.h5.*HDF5"):
        load_model(h5)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"empty.*no model\.keras"):
        load_model(empty)
    with pytest.raises(ModelError, match="no manifest.json"):
        read_model_manifest(empty)

    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(other_zip)

    with pytest.raises(ModelError, match="no such model"):
        load_model(tmp_path / "missing")

    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"kind": "dataset", "class_names": []}))
    with pytest.raises(ModelError, match="not 'model'"):
        read_model_manifest(data)


def test_export_rejects_class_mismatch(tmp_path):
    from hemaflow.modeling.export import export_model

    with pytest.raises(ValueError, match="outputs 8 classes but class_names has 3"):
        export_model(tiny_cnn(), tmp_path / "m", ["a", "b", "c"], SIZE, {})
