"""Readers trust only complete artifacts: a folder cut off before its ``_COMPLETE`` marker is
refused, local or gs://, by every reader of Dataset, TFRecord and Model folders."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hemaflow import storage
from hemaflow.config import CLASS_NAMES
from hemaflow.storage import gcs
from tests.helpers import SIZE, mark_complete, tiny_cnn, write_dataset, write_tfrecord_folder

COPIES_BEFORE_KILL = 2  # the manifest and one data file reach the final prefix, then SIGKILL

# Publishes a folder and SIGKILLs itself (no cleanup runs) right after the Nth server-side copy
# into the final prefix: exactly what an upload killed midway leaves behind.
PUBLISH_AND_DIE = """
import os, signal, sys
from pathlib import Path
from hemaflow.storage import gcs

real, copies = gcs._copy_object, []

def copy_then_die(*args):
    real(*args)
    copies.append(args)
    if len(copies) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)

gcs._copy_object = copy_then_die
gcs.publish_dir(Path(sys.argv[1]), sys.argv[2])
"""

INCOMPLETE = r"has no _COMPLETE marker: an interrupted write\? Re-run the stage that makes it"


def _images(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64) % len(CLASS_NAMES), [f"img{i}" for i in range(n)]


def _model_folder(folder: Path) -> Path:
    """A Model folder's files (a real .keras, a stand-in SavedModel), without an export's cost."""
    folder.mkdir()
    tiny_cnn().save(folder / "model.keras")
    (folder / "saved_model").mkdir()
    (folder / "saved_model" / "saved_model.pb").write_bytes(b"stand-in")
    manifest = {"kind": "model", "class_names": list(CLASS_NAMES), "image_size": SIZE}
    (folder / storage.MANIFEST).write_text(json.dumps(manifest))
    return mark_complete(folder)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """One complete local artifact of each kind, sorted so a cut-off copy holds some data."""
    root = tmp_path_factory.mktemp("artifacts")
    splits = {"test": _images(4), "train": _images(8), "val": _images(4)}
    records = write_tfrecord_folder(root / "tfrecords", splits)
    manifest = json.loads((records / storage.MANIFEST).read_text())
    # Counts per class, as balance-and-augment writes them (the helper writes totals).
    manifest["counts"] = {split: {"all": n} for split, n in manifest["counts"].items()}
    (records / storage.MANIFEST).write_text(json.dumps(manifest))
    return {
        "dataset": write_dataset(root / "dataset", splits),
        "tfrecords": records,
        "model": _model_folder(root / "model"),
    }


def _readers(kind: str, records: Path) -> dict[str, Callable[[str], object]]:
    """Every reader of an artifact of ``kind``, each given the folder's path or URI."""
    from hemaflow.data import dataset, labelled, tfrecords
    from hemaflow.modeling import fitting, inference, loading

    common = {"local_path": storage.local_path, "readable": storage.readable}
    if kind == "dataset":
        return {
            **common,
            "read_manifest": dataset.read_manifest,
            "load_split": lambda uri: dataset.load_split(uri, "test"),
            "labelled.read_split": lambda uri: labelled.read_split(uri, "test"),
        }
    if kind == "tfrecords":
        return {
            **common,
            "read_manifest": dataset.read_manifest,
            "read_data_info": fitting.read_data_info,
            "has_split": lambda uri: tfrecords.has_split(uri, "test"),
            "count_records": lambda uri: tfrecords.count_records(uri, "test"),
            "read_dataset": lambda uri: tfrecords.read_dataset(uri, "test", 8, SIZE, 4),
        }
    return {
        **common,
        "load_model": loading.load_model,
        "read_model_manifest": loading.read_model_manifest,
        "inference": lambda uri: inference.predict_tfrecords(uri, str(records), "test"),
    }


def _assert_all_refuse(kind: str, folder: str, records: Path) -> None:
    for name, read in _readers(kind, records).items():
        with pytest.raises(storage.IncompleteArtifactError, match=INCOMPLETE) as caught:
            read(folder)
        message = str(caught.value)
        assert "\n" not in message and folder.rstrip("/") in message, (name, message)


KINDS = ["dataset", "tfrecords", "model"]


@pytest.mark.parametrize("kind", KINDS)
def test_local_folder_without_its_marker_is_refused_by_every_reader(kind, artifacts, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(artifacts[kind], folder)
    (folder / storage.COMPLETE_MARKER).unlink()
    _assert_all_refuse(kind, str(folder), artifacts["tfrecords"])


@pytest.mark.gcs
@pytest.mark.parametrize("kind", KINDS)
def test_upload_killed_midway_is_refused_by_every_reader(kind, artifacts, gcs_bucket):
    final = f"{gcs_bucket}/runs/{kind}"
    killed = subprocess.run(
        [sys.executable, "-c", PUBLISH_AND_DIE, str(artifacts[kind]), final,
         str(COPIES_BEFORE_KILL)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert storage.exists(storage.join(final, storage.MANIFEST)), "the kill came mid-copy"
    assert not storage.is_complete(final)

    _assert_all_refuse(kind, final, artifacts["tfrecords"])

    # Published whole, the same folder reads: the marker was all that was missing.
    gcs.publish_dir(artifacts[kind], final)
    for name, read in _readers(kind, artifacts["tfrecords"]).items():
        if name != "inference":  # a full Beam run; tests/test_inference.py covers it
            read(final)
