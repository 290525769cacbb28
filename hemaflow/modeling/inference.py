"""Batch inference: Beam + tfx-bsl RunInference over TFRecords, and an in-process numpy path.

The Beam path reads the shards of one split, keys every serialized ``tf.Example`` by its
source id and label, runs tfx-bsl's RunInference on the Model folder's SavedModel
(``serve_examples`` signature) and writes one JSON line per example (``id``, ``label``,
``probs``). It runs on the DirectRunner locally (in process, see :mod:`hemaflow.beam`) and on
any Beam runner (Dataflow, Flink, Spark) given pipeline options, so scoring scales the same
way balance-and-augment does.

The numpy path (:func:`predict_arrays`) calls a loaded Keras model in batches. Evaluate uses it
for the corrupted copies, which are generated on the fly in memory and never exist as records.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemaflow import storage
from hemaflow.beam import DIRECT_RUNNER, pipeline_options
from hemaflow.data import tfrecords
from hemaflow.errors import HemaflowError
from hemaflow.modeling.export import SAVED_MODEL_DIR, SERVE_EXAMPLES

PREDICTIONS_PREFIX = "predictions"


class InferenceError(HemaflowError, ValueError):
    """Inputs to inference are missing, empty or inconsistent with the model."""


@dataclass(frozen=True)
class Predictions:
    """Per-example probabilities in a stable order (sorted by source id)."""

    ids: np.ndarray  # N str
    labels: np.ndarray  # N int64
    probs: np.ndarray  # N x C float32

    def __len__(self) -> int:
        return len(self.ids)


def _key_example(serialized: bytes) -> tuple[str, bytes]:
    """Key a serialized example by ``"label\\tsource_id"`` (protobuf parse, no TF graph)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    feature = example.features.feature
    source_id = feature["source_id"].bytes_list.value[0].decode()
    label = int(feature["label"].int64_list.value[0])
    return f"{label}\t{source_id}", serialized


def _to_json_line(keyed) -> str:
    """One JSON line from a keyed PredictionLog (the single output tensor of the signature)."""
    import tensorflow as tf

    key, log = keyed
    label, source_id = key.split("\t", 1)
    outputs = log.predict_log.response.outputs
    if len(outputs) != 1:
        raise InferenceError(f"{source_id}: expected one output tensor, got {sorted(outputs)}")
    probs = tf.make_ndarray(next(iter(outputs.values()))).reshape(-1)
    return json.dumps({"id": source_id, "label": int(label), "probs": probs.tolist()})


def run_inference_tfrecords(
    model_dir: str,
    data_dir: str,
    split: str,
    out_dir: str | os.PathLike,
    runner: str = DIRECT_RUNNER,
    runner_options: list[str] | None = None,
) -> list[str]:
    """Score every example of ``split`` with tfx-bsl RunInference; returns the JSONL files."""
    import apache_beam as beam
    import tensorflow as tf
    from tfx_bsl.public import beam as tfx_beam
    from tfx_bsl.public.proto import model_spec_pb2

    data_dir, model_dir = storage.readable(data_dir), storage.readable(model_dir)
    pattern = tfrecords.shard_pattern(data_dir, split)
    if not tfrecords.has_split(data_dir, split):
        raise InferenceError(f"{data_dir}: no '{split}' TFRecord shards ({pattern})")
    saved_model = storage.join(model_dir, SAVED_MODEL_DIR)
    if not storage.is_gcs(saved_model) and not Path(saved_model, "saved_model.pb").is_file():
        raise InferenceError(f"{model_dir}: no {SAVED_MODEL_DIR}/saved_model.pb to run inference")
    spec = model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=saved_model, signature_name=[SERVE_EXAMPLES], tag=["serve"]
        )
    )
    prefix = storage.join(str(out_dir), f"{PREDICTIONS_PREFIX}-{split}")
    with beam.Pipeline(options=pipeline_options(runner, runner_options or ())) as pipeline:
        _ = (
            pipeline
            | "Read" >> beam.io.ReadFromTFRecord(pattern, compression_type="gzip")
            | "Key" >> beam.Map(_key_example).with_output_types(tuple[str, bytes])
            | "RunInference" >> tfx_beam.RunInference(spec)
            | "ToJson" >> beam.Map(_to_json_line)
            | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
        )
    return sorted(tf.io.gfile.glob(f"{prefix}*.jsonl"))


def read_predictions(files: list[str]) -> Predictions:
    """Load JSON-line predictions, sorted by id so runs compare example for example."""
    rows = []
    for path in files:
        for n, line in enumerate(storage.read_text(path).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InferenceError(f"{path}:{n}: not a JSON line: {exc}") from exc
    if not rows:
        raise InferenceError(f"{', '.join(files) or 'predictions'}: no predictions (empty split?)")
    rows.sort(key=lambda r: r["id"])
    return Predictions(
        ids=np.array([r["id"] for r in rows]),
        labels=np.array([r["label"] for r in rows], dtype=np.int64),
        probs=np.array([r["probs"] for r in rows], dtype=np.float32),
    )


def predict_tfrecords(
    model_dir: str,
    data_dir: str,
    split: str,
    out_dir: str | os.PathLike | None = None,
    runner: str = DIRECT_RUNNER,
    runner_options: list[str] | None = None,
) -> Predictions:
    """Score one TFRecord split on Beam; the JSONL files stay in ``out_dir`` when given."""
    if out_dir is not None:
        files = run_inference_tfrecords(model_dir, data_dir, split, out_dir, runner, runner_options)
        return read_predictions(files)
    with tempfile.TemporaryDirectory(prefix="hemaflow-infer-") as tmp:
        files = run_inference_tfrecords(model_dir, data_dir, split, tmp, runner, runner_options)
        return read_predictions(files)


def predict_arrays(model, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Probabilities for in-memory uint8 images (N x H x W x 3), batch by batch."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InferenceError(
            f"images: expected N x H x W x 3 uint8, got {images.dtype} {list(images.shape)}"
        )
    if len(images) == 0:
        raise InferenceError("images: nothing to predict (0 images)")
    out = [
        np.asarray(model.predict_on_batch(images[i : i + batch_size]), dtype=np.float32)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)
