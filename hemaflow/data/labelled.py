"""Labelled images in memory, for evaluation and prediction.

Two kinds of input: one split of a hemaflow artifact folder (a TFRecord folder from
balance-and-augment or a Dataset folder from ingest, :func:`read_split`), or a raw source
read at a model's working size (class folders, an .npz, a folder with ``labels.csv``, or
any images for prediction), its labels mapped onto the model's classes by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemaflow import storage
from hemaflow.data import dataset, tfrecords
from hemaflow.data.dataset import DatasetError
from hemaflow.data.sources import (
    IMAGE_SUFFIXES,
    SourceError,
    decode_image,
    npz_array,
    open_npz,
    read_source,
    to_working_size,
)
from hemaflow.progress import progress

# --------------------------------------------------------------------------- artifact splits


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
    if tfrecords.has_split(data_dir, split):
        return "tfrecords"
    if storage.exists(storage.join(data_dir, f"{split}.npz")):
        return "dataset"
    raise DatasetError(
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
    data_dir = storage.readable(data_dir)
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
            raise DatasetError(f"{data_dir}: split '{split}' is empty")
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
        ids = np.array([i.decode() for p in parts for i in p[2]])
    if len(labels) == 0:
        raise DatasetError(f"{data_dir}: split '{split}' is empty")
    keep = subsample(len(labels), max_images, seed)
    return LabelledSplit(images[keep], labels[keep], ids[keep], class_names, size, kind, manifest)


# --------------------------------------------------------------------------- raw sources


LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class SourceImages:
    """Images read from a raw source at a model's working size (labels -1 where unlabelled)."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    synthetic: bool = False


def read_labels_csv(folder: Path, size: int, class_names: list[str]) -> SourceImages:
    """A folder of images with ``labels.csv`` rows ``file,label`` (label: class name or index)."""
    import csv

    path = folder / LABELS_CSV
    rows = list(csv.reader(path.read_text().splitlines()))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "label"]:
        rows = rows[1:]
    images, labels, ids = [], [], []
    for line, row in enumerate(rows, 2 if rows else 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise SourceError(f"{path}:{line}: expected 'file,label', got {row!r}")
        name, label = row[0].strip(), row[1].strip()
        if label in class_names:
            index = class_names.index(label)
        elif label.isdigit() and int(label) < len(class_names):
            index = int(label)
        else:
            raise SourceError(
                f"{path}:{line}: label {label!r} is not one of the model's classes "
                f"{class_names} nor an index below {len(class_names)}"
            )
        file = folder / name
        if not file.is_file():
            raise SourceError(f"{path}:{line}: image file {name!r} not found in {folder}")
        images.append(decode_image(file, size)[0])
        labels.append(index)
        ids.append(name)
    if not images:
        raise SourceError(f"{path}: no rows; nothing to evaluate")
    return SourceImages(np.stack(images), np.array(labels, np.int64), np.array(ids))


def read_labelled_source(source: str, size: int, class_names: list[str], config) -> SourceImages:
    """A labelled raw source (class folders, .npz, labels.csv folder), labels mapped by name.

    A source with a subset of the model's classes is fine; a class the model does not know is
    an error naming it.
    """
    local = storage.local_path(source)
    if local.is_dir() and (local / LABELS_CSV).is_file():
        return read_labels_csv(local, size, class_names)
    loaded = read_source(source, config.replace({"data.image_size": int(size)}))
    unknown = [n for n in loaded.class_names if n not in class_names]
    if unknown:
        raise SourceError(
            f"{source}: classes {unknown} are not among the model's classes {class_names}"
        )
    mapping = np.array([class_names.index(n) for n in loaded.class_names], np.int64)
    return SourceImages(loaded.images, mapping[loaded.labels], loaded.ids, loaded.synthetic)


def read_images_for_prediction(source: str, size: int) -> SourceImages:
    """Every image of a folder (recursively), an .npz or a single image file, at ``size``."""
    local = storage.local_path(source)
    suffixes = IMAGE_SUFFIXES
    if local.is_dir():
        files = sorted(
            p
            for p in local.rglob("*")
            if p.is_file()
            and p.suffix.lower() in suffixes
            and not any(part.startswith(".") for part in p.relative_to(local).parts)
        )
        if not files:
            raise SourceError(f"{source}: no image files ({', '.join(sorted(suffixes))})")
        images = np.stack([decode_image(p, size)[0] for p in progress(files, len(files), "decode")])
        ids = np.array([p.relative_to(local).as_posix() for p in files])
    elif local.suffix.lower() == ".npz":
        with open_npz(local) as archive:
            keys = [
                k
                for k in ("images", "test_images", "val_images", "train_images")
                if k in archive.files
            ]
            if not keys:
                raise SourceError(
                    f"{source}: no 'images' (or '*_images') array; keys: {', '.join(archive.files)}"
                )
            parts = {k: npz_array(local, archive, k) for k in keys}
        for key, array in parts.items():
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise SourceError(
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
        images = decode_image(local, size)[0][None]
        ids = np.array([local.name])
    else:
        raise SourceError(
            f"{source}: not an image folder, .npz or image file ({', '.join(sorted(suffixes))})"
        )
    if len(images) == 0:
        raise SourceError(f"{source}: no images")
    return SourceImages(images, np.full(len(images), -1, np.int64), ids)
