"""Beam + tfx-bsl RunInference over TFRecords agrees with in-process Keras predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hemaflow.config import CLASS_NAMES
from tests.helpers import SIZE, load_pbc_arrays, mark_complete, train_tiny, write_shards


@pytest.fixture(scope="module")
def model_and_records(pbc128_root, tmp_path_factory):
    from hemaflow.data.tfrecords import encode_example
    from hemaflow.modeling.export import export_model

    images, labels, names = load_pbc_arrays(pbc128_root, 10)
    model, _ = train_tiny(images, labels, epochs=1)
    model_dir = tmp_path_factory.mktemp("model")
    export_model(model, model_dir, list(CLASS_NAMES), SIZE, {"backbone": "tiny"})
    mark_complete(model_dir)
    data_dir = tmp_path_factory.mktemp("records")
    test_images, test_labels, test_names = load_pbc_arrays(pbc128_root, 3, offset=10)
    records = [
        encode_example(img, np.eye(8)[y], name)
        for img, y, name in zip(test_images, test_labels, test_names, strict=True)
    ]
    write_shards(records, data_dir, "test", 2)
    return model, model_dir, data_dir, test_images, test_labels, test_names


def test_run_inference_matches_keras(model_and_records, tmp_path):
    from hemaflow.modeling.inference import predict_arrays, predict_tfrecords

    model, model_dir, data_dir, images, labels, names = model_and_records
    preds = predict_tfrecords(str(model_dir), str(data_dir), "test", out_dir=tmp_path / "out")
    order = np.argsort(names)
    assert preds.ids.tolist() == sorted(names)
    assert preds.labels.tolist() == labels[order].tolist()
    expected = predict_arrays(model, images)[order]
    np.testing.assert_allclose(preds.probs, expected, atol=1e-4)
    files = sorted((tmp_path / "out").glob("predictions-test*.jsonl"))
    assert files
    first = json.loads(files[0].read_text().splitlines()[0])
    assert set(first) == {"id", "label", "probs"} and len(first["probs"]) == 8


def test_inference_errors(model_and_records, tmp_path):
    from hemaflow.modeling.inference import InferenceError, predict_arrays, predict_tfrecords

    model, model_dir, data_dir, *_ = model_and_records
    with pytest.raises(InferenceError, match="no 'bmk' TFRecord shards"):
        predict_tfrecords(str(model_dir), str(data_dir), "bmk")
    with pytest.raises(InferenceError, match="no saved_model"):
        predict_tfrecords(str(tmp_path), str(data_dir), "test")
    with pytest.raises(InferenceError, match="uint8"):
        predict_arrays(model, np.zeros((2, SIZE, SIZE, 3), np.float32))
    with pytest.raises(InferenceError, match="0 images"):
        predict_arrays(model, np.zeros((0, SIZE, SIZE, 3), np.uint8))
