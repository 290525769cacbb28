"""Write a Model folder: the Keras model, a SavedModel with two serving endpoints, a manifest.

Layout (written into a folder the caller stages with :func:`hemaflow.storage.artifact_dir`)::

    model.keras      Keras 3 archive; loads with safe_mode=True (custom layers are registered)
    saved_model/     keras.export.ExportArchive with two endpoints:
                       serve           uint8 images [None, S, S, 3] -> float32 probabilities
                       serve_examples  serialized tf.Example strings (hemaflow.data.tfrecords
                                       format) -> float32 probabilities; the form tfx-bsl's
                                       RunInference loads
    manifest.json    kind "model", class_names, image_size and whatever ``info`` adds
                     (backbone or members, precision, metrics)
    history.json     training curves, when ``info`` carries a ``history``

An ExportArchive (not a bare ``tf.Module``) is used because tfx-bsl cannot restore the
variables of a Keras 3 model saved through a bare module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hemaflow.storage import MANIFEST

MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
HISTORY = "history.json"
SERVE = "serve"
SERVE_EXAMPLES = "serve_examples"


def model_manifest(class_names: list[str], image_size: int, info: dict[str, Any]) -> dict:
    """The manifest body: what a reader needs to use the model without loading it."""
    body = {k: v for k, v in info.items() if k != "history"}
    body.update(
        {
            "kind": "model",
            "class_names": list(class_names),
            "num_classes": len(class_names),
            "image_size": int(image_size),
            "input": f"uint8 RGB [None, {int(image_size)}, {int(image_size)}, 3]",
            "output": "float32 class probabilities",
            "endpoints": [SERVE, SERVE_EXAMPLES],
        }
    )
    return body


def _check_model(model, class_names: list[str]) -> None:
    outputs = model.outputs if getattr(model, "outputs", None) else []
    if len(outputs) != 1:
        raise ValueError(f"model {model.name!r}: expected one output, got {len(outputs)}")
    width = outputs[0].shape[-1]
    if width != len(class_names):
        raise ValueError(
            f"model {model.name!r}: outputs {width} classes but class_names has "
            f"{len(class_names)} ({', '.join(class_names)})"
        )


def export_model(
    model, folder: Path, class_names: list[str], image_size: int, info: dict[str, Any]
) -> None:
    """Export ``model`` (raw uint8 in, probabilities out) into the local folder ``folder``."""
    import keras
    import tensorflow as tf

    from hemaflow import storage
    from hemaflow.data import tfrecords

    if not class_names:
        raise ValueError("export_model: class_names is empty")
    _check_model(model, class_names)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)

    size = int(image_size)
    num_classes = len(class_names)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    def serve(images):
        return tf.cast(model(images, training=False), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        spec = tfrecords.feature_spec(num_classes)
        parsed = tf.io.parse_example(examples, {"image": spec["image"]})

        def decode(png):
            image = tf.io.decode_image(png, channels=3, expand_animations=False)
            resized = tf.image.resize(image, [size, size], antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

        images = tf.map_fn(
            decode, parsed["image"], fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8)
        )
        return tf.cast(model(images, training=False), tf.float32)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SERVE, fn=serve)
    archive.add_endpoint(name=SERVE_EXAMPLES, fn=serve_examples)
    archive.write_out(str(folder / SAVED_MODEL_DIR), verbose=False)

    manifest = model_manifest(class_names, size, info)
    storage.write_text_atomic(
        folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=_jsonable)
    )
    if info.get("history"):
        storage.write_text_atomic(
            folder / HISTORY, json.dumps(info["history"], indent=2, default=_jsonable)
        )


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays into plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
