"""Test helpers shared by several test modules (and the train-speed benchmark).

Real pbc128 arrays, a tiny CNN taking raw uint8 (so model-side tests do not depend on the zoo),
and writers of Dataset and TFRecord folders in the formats the stages exchange.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from hemaflow.config import CLASS_NAMES

SIZE = 32


def load_pbc_arrays(
    root: Path, per_class: int, size: int = SIZE, offset: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``per_class`` real images of every class (sorted files from ``offset``), resized."""
    images, labels, names = [], [], []
    for label, name in enumerate(CLASS_NAMES):
        files = sorted((root / name).iterdir())[offset : offset + per_class]
        for f in files:
            with Image.open(f) as img:
                images.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)))
            labels.append(label)
            names.append(f"{name}/{f.name}")
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int64), names


def pbc_cells(root: Path, classes: list[str], index: int) -> np.ndarray:
    """The ``index``-th file (sorted) of each of ``classes`` at full size, uint8 [N, 128, 128, 3]."""
    files = [sorted((root / c).iterdir())[index] for c in classes]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def tiny_cnn(size: int = SIZE, num_classes: int = 8, seed: int = 0, width: int = 8):
    """A small uint8-in, softmax-out CNN (Rescaling inside, BatchNorm so BN adaptation applies)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), dtype="uint8", name="images")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization(momentum=0.8)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(width * 2, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"tiny_cnn_{seed}")


def train_tiny(images, labels, epochs: int = 4, seed: int = 0, width: int = 8):
    """Train a tiny CNN briefly; enough to beat chance on held-out pbc128 images."""
    import keras

    model = tiny_cnn(images.shape[1], 8, seed, width)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(images, labels, epochs=epochs, batch_size=16, verbose=0)
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def write_shards(examples: Iterable[bytes], out_dir: Path, split: str, shards: int) -> list[str]:
    """Write serialized examples round-robin into ``shards`` files (a small, non-Beam writer)."""
    import tensorflow as tf

    from hemaflow.data.tfrecords import COMPRESSION, shard_name

    options = tf.io.TFRecordOptions(compression_type=COMPRESSION)
    paths = [os.path.join(out_dir, shard_name(split, i, shards)) for i in range(shards)]
    writers = [tf.io.TFRecordWriter(p, options) for p in paths]
    try:
        for i, record in enumerate(examples):
            writers[i % shards].write(record)
    finally:
        for writer in writers:
            writer.close()
    return paths


def mark_complete(folder: Path) -> Path:
    """Give a hand-built artifact folder the marker ``storage.artifact_dir`` writes."""
    from hemaflow.storage import COMPLETE_MARKER

    (Path(folder) / COMPLETE_MARKER).write_text("")
    return Path(folder)


def write_dataset(folder: Path, splits: dict[str, tuple], size: int = SIZE) -> Path:
    """An ingest-style Dataset folder from ``{split: (images, labels, names)}``."""
    from hemaflow.data import dataset

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (images, labels, ids) in splits.items():
        split = dataset.Split(images, labels, np.asarray(ids))
        files[f"{name}.npz"] = dataset.save_split(folder, name, split)
    dataset.write_manifest(
        folder,
        {
            "kind": "dataset",
            "class_names": list(CLASS_NAMES),
            "image_size": size,
            "files": files,
            "synthetic": False,
        },
    )
    return mark_complete(folder)


def write_tfrecord_folder(folder: Path, splits: dict[str, tuple], size: int = SIZE) -> Path:
    """A balance-and-augment-style TFRecord folder from ``{split: (images, labels, names)}``."""
    from hemaflow.data import dataset
    from hemaflow.data.tfrecords import encode_example

    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, (images, labels, ids) in splits.items():
        records = [
            encode_example(img, np.eye(len(CLASS_NAMES))[y], f"{name}/{i}")
            for img, y, i in zip(images, labels, ids, strict=True)
        ]
        write_shards(records, folder, name, 2)
        counts[name] = len(records)
    dataset.write_manifest(
        folder,
        {
            "kind": "tfrecords",
            "class_names": list(CLASS_NAMES),
            "image_size": size,
            "counts": counts,
            "synthetic": False,
        },
    )
    return mark_complete(folder)


def write_pbc_tfrecords(root: Path, dest: Path, size: int, per_class: dict[str, int]) -> Path:
    """A TFRecord folder (hemaflow.data.tfrecords format + manifest) of real pbc128 images.

    Each class's files (sorted) are dealt out in order to the splits of ``per_class``
    (e.g. ``{"train": 30, "val": 10, "bmk": 10}``), so no image is in two splits.
    """

    import numpy as np
    from PIL import Image

    from hemaflow.data import tfrecords

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    dest.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    examples: dict[str, list[bytes]] = {split: [] for split in per_class}
    for c, name in enumerate(classes):
        files = iter(sorted((root / name).iterdir()))
        for split, n in per_class.items():
            for _ in range(n):
                path = next(files)
                image = np.asarray(
                    Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
                )
                examples[split].append(
                    tfrecords.encode_example(image, np.eye(len(classes))[c], path.name)
                )
            counts.setdefault(split, {})[name] = n
    for split, records in examples.items():
        write_shards(records, dest, split, 2)
    manifest = {"kind": "tfrecords", "class_names": classes, "image_size": size, "counts": counts}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return mark_complete(dest)
