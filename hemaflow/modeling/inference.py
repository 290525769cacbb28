"""Batch inference: Beam + tfx-bsl RunInference over TFRecords, and an in-process numpy path.

The Beam path reads the shards of one split, keys every serialized ``tf.Example`` by its
source id and label, runs tfx-bsl's RunInference on the Model folder's SavedModel
(``serve_examples`` signature) and writes one JSON line per example (``id``, ``label``,
``probs``). It runs on the DirectRunner locally and on any Beam runner (Dataflow, Flink,
Spark) given pipeline options, so scoring scales the same way balance-and-augment does.

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
from hemaflow.data import tfrecords
from hemaflow.errors import HemaflowError
from hemaflow.modeling.export import SAVED_MODEL_DIR, SERVE_EXAMPLES
from hemaflow.progress import progress

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


def readable(uri: str | os.PathLike) -> str:
    """A path TensorFlow and Beam can read: gs:// folders go through the local cache, since
    TensorFlow's own GCS file system ignores STORAGE_EMULATOR_HOST."""
    return str(storage.local_path(uri)) if storage.is_gcs(uri) else str(uri)


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
    runner: str = "DirectRunner",
    runner_options: list[str] | None = None,
) -> list[str]:
    """Score every example of ``split`` with tfx-bsl RunInference; returns the JSONL files."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tfx_bsl.public import beam as tfx_beam
    from tfx_bsl.public.proto import model_spec_pb2

    data_dir, model_dir = readable(data_dir), readable(model_dir)
    pattern = tfrecords.shard_pattern(data_dir, split)
    import tensorflow as tf

    if not tf.io.gfile.glob(pattern):
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
    options = PipelineOptions([f"--runner={runner}", *(runner_options or [])])
    with beam.Pipeline(options=options) as pipeline:
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
    runner: str = "DirectRunner",
    runner_options: list[str] | None = None,
) -> Predictions:
    """Score one TFRecord split on Beam; the JSONL files stay in ``out_dir`` when given."""
    if out_dir is not None:
        files = run_inference_tfrecords(model_dir, data_dir, split, out_dir, runner, runner_options)
        return read_predictions(files)
    with tempfile.TemporaryDirectory(prefix="hemaflow-infer-") as tmp:
        files = run_inference_tfrecords(model_dir, data_dir, split, tmp, runner, runner_options)
        return read_predictions(files)


@dataclass(frozen=True)
class LabelledSplit:
    """One labelled split in memory, with the class names and size of the data it came from."""

    images: np.ndarray  # N x S x S x 3 uint8
    labels: np.ndarray  # N int64
    ids: np.ndarray  # N str
    class_names: list[str]
    image_size: int
    kind: str  # "tfrecords" or "dataset"
    manifest: dict

    def __len__(self) -> int:
        return len(self.labels)


def split_kind(data_dir: str, split: str) -> str:
    """``"tfrecords"`` when ``split`` shards exist, ``"dataset"`` when ``{split}.npz`` does."""
    import tensorflow as tf

    if tf.io.gfile.glob(tfrecords.shard_pattern(data_dir, split)):
        return "tfrecords"
    if storage.exists(storage.join(data_dir, f"{split}.npz")):
        return "dataset"
    raise InferenceError(
        f"{data_dir}: no '{split}' split (neither TFRecord shards nor {split}.npz); expected "
        "a balance-and-augment TFRecord folder or an ingest Dataset folder"
    )


def subsample(count: int, max_images: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_images`` of ``count`` items (all when 0), seeded and sorted."""
    if max_images <= 0 or max_images >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, max_images, replace=False))


def read_split(data_dir: str, split: str, max_images: int = 0, seed: int = 0) -> LabelledSplit:
    """Load one split of a TFRecord folder or Dataset folder into memory (hard labels)."""
    from hemaflow.data import dataset

    data_dir = readable(data_dir)
    manifest = dataset.read_manifest(data_dir)
    class_names = list(manifest["class_names"])
    size = int(manifest["image_size"])
    kind = split_kind(data_dir, split)
    if kind == "dataset":
        loaded = dataset.load_split(data_dir, split)
        images, labels, ids = loaded.images, loaded.labels, loaded.ids.astype(str)
    else:
        batches = tfrecords.read_dataset(
            data_dir, split, len(class_names), size, batch_size=256, with_ids=True
        )
        parts = [(x.numpy(), y.numpy().argmax(axis=1), i.numpy()) for x, y, i in batches]
        if not parts:
            raise InferenceError(f"{data_dir}: split '{split}' is empty")
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
        ids = np.array([i.decode() for p in parts for i in p[2]])
    if len(labels) == 0:
        raise InferenceError(f"{data_dir}: split '{split}' is empty")
    keep = subsample(len(labels), max_images, seed)
    return LabelledSplit(images[keep], labels[keep], ids[keep], class_names, size, kind, manifest)


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


# --------------------------------------------------------------------------- raw sources

LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class SourceImages:
    """Images read from a raw source at a model's working size (labels -1 where unlabelled)."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    synthetic: bool = False


def _image_suffixes() -> frozenset[str]:
    from hemaflow.data.sources import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def read_labels_csv(folder: Path, size: int, class_names: list[str]) -> SourceImages:
    """A folder of images with ``labels.csv`` rows ``file,label`` (label: class name or index)."""
    import csv

    from hemaflow.data.sources import decode_image

    path = folder / LABELS_CSV
    rows = list(csv.reader(path.read_text().splitlines()))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "label"]:
        rows = rows[1:]
    images, labels, ids = [], [], []
    for line, row in enumerate(rows, 2 if rows else 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise InferenceError(f"{path}:{line}: expected 'file,label', got {row!r}")
        name, label = row[0].strip(), row[1].strip()
        if label in class_names:
            index = class_names.index(label)
        elif label.isdigit() and int(label) < len(class_names):
            index = int(label)
        else:
            raise InferenceError(
                f"{path}:{line}: label {label!r} is not one of the model's classes "
                f"{class_names} nor an index below {len(class_names)}"
            )
        file = folder / name
        if not file.is_file():
            raise InferenceError(f"{path}:{line}: image file {name!r} not found in {folder}")
        images.append(decode_image(file, size)[0])
        labels.append(index)
        ids.append(name)
    if not images:
        raise InferenceError(f"{path}: no rows; nothing to evaluate")
    return SourceImages(np.stack(images), np.array(labels, np.int64), np.array(ids))


def read_labelled_source(source: str, size: int, class_names: list[str], config) -> SourceImages:
    """A labelled raw source (class folders, .npz, labels.csv folder), labels mapped by name.

    A source with a subset of the model's classes is fine; a class the model does not know is
    an error naming it.
    """
    from hemaflow.data import sources

    local = storage.local_path(source)
    if local.is_dir() and (local / LABELS_CSV).is_file():
        return read_labels_csv(local, size, class_names)
    loaded = sources.read_source(source, config.replace({"data.image_size": int(size)}))
    unknown = [n for n in loaded.class_names if n not in class_names]
    if unknown:
        raise InferenceError(
            f"{source}: classes {unknown} are not among the model's classes {class_names}"
        )
    mapping = np.array([class_names.index(n) for n in loaded.class_names], np.int64)
    return SourceImages(loaded.images, mapping[loaded.labels], loaded.ids, loaded.synthetic)


def read_images_for_prediction(source: str, size: int) -> SourceImages:
    """Every image of a folder (recursively), an .npz or a single image file, at ``size``."""
    from hemaflow.data.sources import SourceError, decode_image, to_working_size

    local = storage.local_path(source)
    suffixes = _image_suffixes()
    if local.is_dir():
        files = sorted(
            p
            for p in local.rglob("*")
            if p.is_file()
            and p.suffix.lower() in suffixes
            and not any(part.startswith(".") for part in p.relative_to(local).parts)
        )
        if not files:
            raise InferenceError(f"{source}: no image files ({', '.join(sorted(suffixes))})")
        images = np.stack([decode_image(p, size)[0] for p in progress(files, len(files), "decode")])
        ids = np.array([p.relative_to(local).as_posix() for p in files])
    elif local.suffix.lower() == ".npz":
        with np.load(local, allow_pickle=False) as archive:
            keys = [
                k
                for k in ("images", "test_images", "val_images", "train_images")
                if k in archive.files
            ]
            if not keys:
                raise InferenceError(
                    f"{source}: no 'images' (or '*_images') array; keys: {', '.join(archive.files)}"
                )
            parts = {k: archive[k] for k in keys}
        for key, array in parts.items():
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise InferenceError(
                    f"{source}: key '{key}': expected N x H x W x 3 uint8, got {array.dtype} {array.shape}"
                )
        images = np.concatenate(
            [
                a
                if a.shape[1:3] == (size, size)
                else np.stack([to_working_size(x, size) for x in a])
                for a in parts.values()
            ]
        )
        ids = np.array([f"{k}[{i}]" for k, a in parts.items() for i in range(len(a))])
    elif local.suffix.lower() in suffixes:
        try:
            images = decode_image(local, size)[0][None]
        except SourceError as exc:
            raise InferenceError(str(exc)) from exc
        ids = np.array([local.name])
    else:
        raise InferenceError(
            f"{source}: not an image folder, .npz or image file ({', '.join(sorted(suffixes))})"
        )
    if len(images) == 0:
        raise InferenceError(f"{source}: no images")
    return SourceImages(images, np.full(len(images), -1, np.int64), ids)
