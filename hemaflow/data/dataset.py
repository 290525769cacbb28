"""The Dataset artifact that ingest writes and every later stage reads.

Layout of a Dataset folder::

    manifest.json      class names, image size, counts per split and class, source, seed,
                       synthetic flag, and the sha256 of every data file
    train.npz          images (N x S x S x 3 uint8), labels (N int64), ids (N str)
    val.npz, test.npz

The augmented-TFRecord folder written by balance-and-augment carries a manifest.json of the
same shape (``kind: "tfrecords"``) so the model stages read class names and size from one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.errors import HemaflowError
from hemaflow.storage import MANIFEST

SCHEMA_VERSION = 1
DATA_SPLITS = ("train", "val", "test")


class DatasetError(HemaflowError, ValueError):
    """A Dataset folder is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # N x S x S x 3 uint8
    labels: np.ndarray  # N int64
    ids: np.ndarray  # N str

    def __len__(self) -> int:
        return len(self.labels)


def save_split(folder: str | os.PathLike, name: str, split: Split) -> str:
    """Write one split into a local staging folder; returns the file's sha256."""
    path = Path(folder, f"{name}.npz")
    np.savez(path, images=split.images, labels=split.labels, ids=split.ids.astype(str))
    return storage.sha256_file(path)


def load_split(dataset_dir: str | os.PathLike, name: str, verify: bool = True) -> Split:
    """Load one split, checking it against the manifest's hash when ``verify`` is set."""
    manifest = read_manifest(dataset_dir)
    local = storage.local_path(storage.join(dataset_dir, f"{name}.npz"))
    if verify:
        expected = manifest.get("files", {}).get(f"{name}.npz")
        if expected and storage.sha256_file(local) != expected:
            raise DatasetError(f"{local}: content does not match the sha256 in {MANIFEST}")
    with np.load(local, allow_pickle=False) as data:
        split = Split(data["images"], data["labels"].astype(np.int64), data["ids"])
    if len(split) == 0:
        raise DatasetError(f"{dataset_dir}: split '{name}' is empty")
    return split


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    body = {"schema_version": SCHEMA_VERSION, **manifest}
    storage.write_text_atomic(Path(folder, MANIFEST), json.dumps(body, indent=2, sort_keys=True))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a Dataset or TFRecord folder, with the fields every stage reads."""
    return storage.read_json(
        folder,
        MANIFEST,
        "hemaflow artifact folder",
        error=DatasetError,
        required=("class_names", "image_size"),
    )
