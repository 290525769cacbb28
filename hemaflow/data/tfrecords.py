"""The TFRecord format shared by balance-and-augment (writer) and the model stages (reader).

One ``tf.train.Example`` per image:

- ``image``: PNG-encoded uint8 RGB (lossless, so what was augmented is what is trained on),
- ``label``: int64 class index (the arg-max of ``soft_label`` for mixed images),
- ``soft_label``: float32 list of ``num_classes`` probabilities (one-hot unless CutMix/MixUp),
- ``source_id``: bytes naming the source image (and augmentation copy) for traceability.

Shards are GZIP-compressed and named ``{split}-{index:05d}-of-{count:05d}.tfrecord.gz``.
"""

from __future__ import annotations

import os

import numpy as np

from hemaflow import storage
from hemaflow.data.dataset import DATA_SPLITS

SPLITS = (*DATA_SPLITS, "bmk")
SHARD_SUFFIX = ".tfrecord.gz"
COMPRESSION = "GZIP"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def shard_pattern(data_dir: str | os.PathLike, split: str) -> str:
    return storage.join(data_dir, f"{split}-*{SHARD_SUFFIX}")


def encode_example(
    image: np.ndarray, soft_label: np.ndarray, source_id: str, png: bytes | None = None
) -> bytes:
    """Serialize one image (H x W x 3 uint8) and its label distribution."""
    import tensorflow as tf

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"{source_id}: expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}"
        )
    soft = np.asarray(soft_label, dtype=np.float32)
    if png is None:
        png = tf.io.encode_png(image).numpy()
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(np.argmax(soft))])),
        "soft_label": tf.train.Feature(float_list=tf.train.FloatList(value=soft.tolist())),
        "source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec(num_classes: int) -> dict:
    import tensorflow as tf

    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "soft_label": tf.io.FixedLenFeature([num_classes], tf.float32),
        "source_id": tf.io.FixedLenFeature([], tf.string),
    }


def parse_batch(serialized, num_classes: int, image_size: int):
    """Parse a batch of serialized examples into (uint8 images, float32 soft labels, ids)."""
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, feature_spec(num_classes))
    images = tf.map_fn(
        lambda png: tf.io.decode_png(png, channels=3),
        parsed["image"],
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    images = tf.ensure_shape(images, [None, image_size, image_size, 3])
    return images, parsed["soft_label"], parsed["source_id"]


def shard_files(data_dir: str | os.PathLike, split: str) -> list[str]:
    """The sorted shard files of ``split`` (none when the folder has no such split)."""
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(shard_pattern(storage.readable(data_dir), split)))


def has_split(data_dir: str | os.PathLike, split: str) -> bool:
    return bool(shard_files(data_dir, split))


def read_dataset(
    data_dir: str | os.PathLike,
    split: str,
    num_classes: int,
    image_size: int,
    batch_size: int,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int = 0,
    with_ids: bool = False,
):
    """A batched ``tf.data.Dataset`` of (uint8 images, float32 soft labels) from one split.

    Reads shards in parallel and decodes in parallel, so the model, not the input, is the
    bottleneck. ``data_dir`` may be local or gs://.
    """
    import tensorflow as tf

    files = shard_files(data_dir, split)
    if not files:
        pattern = shard_pattern(data_dir, split)
        raise FileNotFoundError(f"{data_dir}: no '{split}' TFRecord shards ({pattern})")
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        files_ds = files_ds.shuffle(len(files), seed=seed)
    records = files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=COMPRESSION),
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    if shuffle:
        records = records.shuffle(8192, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    batched = records.batch(batch_size).map(
        lambda s: parse_batch(s, num_classes, image_size), num_parallel_calls=tf.data.AUTOTUNE
    )
    if not with_ids:
        batched = batched.map(lambda x, y, _ids: (x, y))
    return batched.prefetch(tf.data.AUTOTUNE)


def count_records(data_dir: str | os.PathLike, split: str) -> int:
    import tensorflow as tf

    files = shard_files(data_dir, split)
    return sum(1 for f in files for _ in tf.data.TFRecordDataset(f, compression_type=COMPRESSION))
