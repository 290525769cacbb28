"""gs:// reads, caching and atomic publication against a real fake-gcs-server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemaflow import storage
from hemaflow.storage import gcs
from tests.helpers import write_shards

pytestmark = pytest.mark.gcs


def _names(bucket_uri: str) -> list[str]:
    bucket, _ = storage.split_gcs(bucket_uri)
    return sorted(b.name for b in gcs.client().list_blobs(bucket))


def _upload_tree(local: Path, uri: str) -> list[str]:
    rels = []
    for path in sorted(local.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local).as_posix()
            gcs.upload_file(path, storage.join(uri, rel))
            rels.append(rel)
    return rels


def _count_downloads(monkeypatch) -> list[str]:
    from google.cloud.storage import Blob

    calls: list[str] = []
    original = Blob.download_to_filename

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "download_to_filename", counting)
    return calls


def _first_per_class(source: Path, dest: Path, count: int) -> Path:
    """A copy of the first ``count`` images of every class folder of ``source``."""
    for class_dir in sorted(source.iterdir()):
        (dest / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:count]:
            (dest / class_dir.name / f.name).write_bytes(f.read_bytes())
    return dest


def test_folder_source_of_real_images_reads_from_gs(gcs_bucket, pbc_sample, tmp_path):
    from hemaflow.config import load_config
    from hemaflow.data.sources import read_source

    small = _first_per_class(pbc_sample, tmp_path / "pbc", 3)
    rels = _upload_tree(small, f"{gcs_bucket}/sources/pbc")

    local = storage.local_path(f"{gcs_bucket}/sources/pbc")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == rels

    loaded = read_source(f"{gcs_bucket}/sources/pbc", load_config("quickstart"))
    assert len(loaded.labels) == 24
    assert loaded.class_names == sorted(p.name for p in small.iterdir())
    assert loaded.images.dtype == np.uint8 and loaded.images.shape[-1] == 3

    one = rels[0]
    assert storage.read_bytes(f"{gcs_bucket}/sources/pbc/{one}") == (small / one).read_bytes()


@pytest.mark.slow
def test_ingest_reads_real_images_from_gs_and_publishes_to_gs(gcs_bucket, pbc_sample, tmp_path):
    from hemaflow.components import ingest

    from hemaflow.config import load_config

    small = _first_per_class(pbc_sample, tmp_path / "pbc", 6)
    _upload_tree(small, f"{gcs_bucket}/sources/pbc")

    out = f"{gcs_bucket}/runs/pbc32"
    ingest.run(f"{gcs_bucket}/sources/pbc", out, load_config("quickstart"))
    assert storage.is_complete(out)
    manifest = json.loads(storage.read_text(f"{out}/manifest.json"))
    assert manifest["kind"] == "dataset" and manifest["image_size"] == 32
    assert sum(sum(c.values()) for c in manifest["counts"].values()) <= 48
    assert {"train.npz", "val.npz", "test.npz", "manifest.json"} <= set(
        p.name for p in storage.local_path(out).iterdir()
    )


def test_second_read_uses_cache_and_a_changed_object_is_fetched_again(
    gcs_bucket, tmp_path, monkeypatch
):
    calls = _count_downloads(monkeypatch)
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_text("other")
    gcs.upload_file(tmp_path / "a.txt", f"{gcs_bucket}/d/a.txt")
    gcs.upload_file(tmp_path / "b.txt", f"{gcs_bucket}/d/b.txt")

    folder = storage.local_path(f"{gcs_bucket}/d")
    assert sorted(calls) == ["d/a.txt", "d/b.txt"]
    assert storage.local_path(f"{gcs_bucket}/d") == folder
    assert storage.read_text(f"{gcs_bucket}/d/a.txt") == "first"
    assert len(calls) == 2, "unchanged objects must come from the cache"

    (tmp_path / "a.txt").write_text("second")
    gcs.upload_file(tmp_path / "a.txt", f"{gcs_bucket}/d/a.txt")
    gcs.client().bucket(gcs_bucket[5:]).blob("d/b.txt").delete()
    folder = storage.local_path(f"{gcs_bucket}/d")
    assert calls[2:] == ["d/a.txt"]
    assert (folder / "a.txt").read_text() == "second"
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"], "deleted objects leave the cache"


def test_artifact_written_to_gs_is_complete_and_replaced_whole(gcs_bucket):
    final = f"{gcs_bucket}/runs/ds"
    with storage.artifact_dir(final) as out:
        (out / "manifest.json").write_text(json.dumps({"kind": "dataset", "n": 1}))
        (out / "old-only.txt").write_text("stale")
        (out / "sub").mkdir()
        (out / "sub" / "x.bin").write_bytes(b"\x00\x01")
    assert storage.is_complete(final)
    assert json.loads(storage.read_text(f"{final}/manifest.json"))["n"] == 1

    with storage.artifact_dir(final) as out:
        (out / "manifest.json").write_text(json.dumps({"kind": "dataset", "n": 2}))
    assert _names(gcs_bucket) == ["runs/ds/_COMPLETE", "runs/ds/manifest.json"]
    assert json.loads(storage.read_text(f"{final}/manifest.json"))["n"] == 2


def test_tfrecords_published_to_gs_are_read_back(gcs_bucket):
    from hemaflow.data import tfrecords

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    labels = np.eye(8, dtype=np.float32)[np.arange(10) % 8]
    final = f"{gcs_bucket}/data/tfr"
    with storage.artifact_dir(final) as out:
        records = (
            tfrecords.encode_example(img, lab, f"img{i}")
            for i, (img, lab) in enumerate(zip(images, labels, strict=True))
        )
        write_shards(records, out, "train", shards=3)
    assert storage.is_complete(final)

    assert tfrecords.count_records(final, "train") == 10
    got = list(tfrecords.read_dataset(final, "train", 8, 16, batch_size=4, with_ids=True))
    ids = np.concatenate([b[2].numpy() for b in got]).astype(str)
    by_id = {
        sid: (img, lab)
        for b in got
        for sid, img, lab in zip(b[2].numpy().astype(str), b[0].numpy(), b[1].numpy(), strict=True)
    }
    assert sorted(ids) == sorted(f"img{i}" for i in range(10))
    np.testing.assert_array_equal(by_id["img7"][0], images[7])
    np.testing.assert_array_equal(by_id["img7"][1], labels[7])


def test_keras_model_round_trip_on_gs(gcs_bucket):
    import keras

    from hemaflow.modeling import loading

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    x = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    final = f"{gcs_bucket}/models/m1"
    with storage.artifact_dir(final) as out:
        model.save(out / "model.keras")
    loaded = loading.load_model(final)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_missing_object_and_missing_bucket_name_the_uri(gcs_bucket):
    with pytest.raises(storage.StorageError, match=rf"{gcs_bucket}/nope/file.npz: no such object"):
        storage.local_path(f"{gcs_bucket}/nope/file.npz")
    assert not storage.exists(f"{gcs_bucket}/nope")

    missing = "gs://hemaflow-no-such-bucket-4711/x"
    with pytest.raises(
        storage.StorageError, match="bucket 'hemaflow-no-such-bucket-4711' does not exist"
    ):
        storage.local_path(missing)
    assert not storage.exists(missing)
    with (
        pytest.raises(storage.StorageError, match="does not exist"),
        storage.artifact_dir(missing) as out,
    ):
        (out / "a.txt").write_text("x")


def _fail_after(n: int, real):
    count = {"n": 0}

    def flaky(*args, **kwargs):
        count["n"] += 1
        if count["n"] > n:
            raise ConnectionResetError("connection reset by peer (injected)")
        return real(*args, **kwargs)

    return flaky


def _write_artifact(out: Path, files: int, tag: str) -> None:
    (out / "manifest.json").write_text(json.dumps({"kind": "dataset", "tag": tag}))
    for i in range(files):
        (out / f"part-{i}.bin").write_bytes(bytes([i]) * 100)


def test_upload_interrupted_midway_leaves_no_complete_artifact(gcs_bucket, monkeypatch):
    final = f"{gcs_bucket}/runs/interrupted"
    monkeypatch.setattr(gcs, "upload_file", _fail_after(3, gcs.upload_file))
    with (
        pytest.raises(storage.StorageError, match="publishing failed.*injected"),
        storage.artifact_dir(final) as out,
    ):
        _write_artifact(out, 6, "new")
    assert not storage.is_complete(final)
    assert not storage.exists(final)
    assert _names(gcs_bucket) == [], "the temporary prefix is cleaned up"
    with pytest.raises(storage.StorageError):
        storage.local_path(final)


def test_copy_interrupted_over_an_old_artifact_is_refused_by_readers(gcs_bucket, monkeypatch):
    final = f"{gcs_bucket}/runs/replaced"
    with storage.artifact_dir(final) as out:
        _write_artifact(out, 4, "old")
    assert storage.is_complete(final)

    monkeypatch.setattr(gcs, "_copy_object", _fail_after(2, gcs._copy_object))
    with (
        pytest.raises(storage.StorageError, match="incomplete"),
        storage.artifact_dir(final) as out,
    ):
        _write_artifact(out, 4, "new")
    assert not storage.is_complete(final), "a half-replaced artifact must not look complete"
    assert all(".staging-" not in n for n in _names(gcs_bucket))
    with pytest.raises(storage.IncompleteArtifactError, match="no _COMPLETE marker"):
        storage.local_path(final)


def test_a_failing_stage_uploads_nothing(gcs_bucket):
    final = f"{gcs_bucket}/runs/failed"
    with pytest.raises(RuntimeError, match="stage broke"), storage.artifact_dir(final) as out:
        _write_artifact(out, 2, "x")
        raise RuntimeError("stage broke")
    assert _names(gcs_bucket) == []
