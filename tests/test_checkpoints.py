"""Checkpoints mirrored to gs://: torn saves restore the previous one, killed tasks resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hemaflow import storage
from hemaflow.config import load_config
from hemaflow.modeling import checkpoints, fitting

REPO = Path(__file__).resolve().parents[1]


def test_a_save_uploads_only_what_changed_and_drops_what_no_pointer_names():
    previous = {
        "a": {"object": "000001/a", "sha256": "x"},
        "b": {"object": "000001/b", "sha256": "y"},
    }
    files, uploads = checkpoints.plan_save({"a": "x", "b": "z", "c": "w"}, previous, 2)
    assert files["a"] == previous["a"] and uploads == ["b", "c"]
    assert files["b"]["object"] == "000002/b" and files["c"]["object"] == "000002/c"
    objects = ["000001/a", "000001/b", "000002/b", "000002/c", "000003/a", checkpoints.POINTER]
    assert checkpoints.garbage(objects, files) == ["000001/b", "000003/a"]


def test_a_local_store_is_its_own_checkpoint(tmp_path):
    store = checkpoints.Store(tmp_path / "work")
    (store.local / "phase").mkdir(parents=True)
    (store.local / "phase" / "f").write_text("1")
    assert store.save("phase") == 0 and store.restore("phase") == 0
    assert (store.local / "phase" / "f").read_text() == "1"
    store.remove()
    assert not store.local.exists()


def test_task_checkpoints_are_keyed_by_output_and_backbone(tmp_path):
    from hemaflow.pipeline import steps

    config = load_config("quickstart").to_json()
    out = SimpleNamespace(
        uri="gs://b/root/run-1/train_7/model", path="/gcs/b/root/run-1/train_7/model"
    )
    conf = steps.checkpointed(config, out, "resnet50")
    assert conf.train.checkpoint_dir == "gs://b/root/run-1/train_7/model.checkpoints/resnet50"
    store = fitting.checkpoint_store(out.path, conf.train.checkpoint_dir)
    assert store.remote.startswith(conf.train.checkpoint_dir + "/model-")
    assert store.local.is_relative_to(storage.cache_root())
    local = SimpleNamespace(uri=str(tmp_path / "model"), path=str(tmp_path / "model"))
    here = steps.checkpointed(config, local, "small_cnn").train.checkpoint_dir
    assert here == f"{tmp_path / 'model'}.checkpoints/small_cnn"
    assert not fitting.checkpoint_store(local.path, here).remote
    minio = SimpleNamespace(uri="minio://mlpipeline/v2/artifacts/x/model", path="/minio/x")
    assert steps.checkpointed(config, minio, "small_cnn").train.checkpoint_dir == ""


@pytest.mark.gcs
def test_a_save_killed_before_its_pointer_restores_the_previous_one(
    gcs_bucket, tmp_path, monkeypatch
):
    store = checkpoints.Store(tmp_path / "a", f"{gcs_bucket}/run/ckpt")
    phase = store.local / "phase"
    phase.mkdir(parents=True)
    (phase / "weights").write_text("epoch 1")
    (phase / "log.csv").write_text("1\n")
    assert store.save("phase") == 1
    (phase / "weights").write_text("epoch 2")
    (phase / "extra").write_text("new")

    def killed(prefix, pointer):
        raise KeyboardInterrupt("killed between the upload and the pointer")

    monkeypatch.setattr(checkpoints, "_write_pointer", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save("phase")
    monkeypatch.undo()

    fresh = checkpoints.Store(tmp_path / "b", store.remote)  # another node
    assert fresh.restore("phase") == 1
    restored = fresh.local / "phase"
    assert sorted(p.name for p in restored.iterdir()) == ["log.csv", "weights"]
    assert (restored / "weights").read_text() == "epoch 1"

    # The next save is whole again, and the killed save's objects are gone.
    assert store.save("phase") == 2
    assert fresh.restore("phase") == 2 and (restored / "weights").read_text() == "epoch 2"
    objects = sorted(checkpoints._list(f"{store.remote}/phase"))
    assert objects == ["000001/log.csv", "000002/extra", "000002/weights", checkpoints.POINTER]
    store.remove()
    assert not storage.exists(store.remote) and not store.local.exists()


def _remote_epoch(remote_phase: str) -> int | None:
    """The epoch of the checkpoint a restart would restore from ``remote_phase``, if any."""
    from google.api_core import exceptions

    pointer = checkpoints._read_pointer(remote_phase)
    entry = (pointer or {}).get("files", {}).get("backup/training_metadata.json")
    if entry is None:
        return None
    blob = checkpoints._blob(storage.join(remote_phase, entry["object"]))
    try:
        return int(json.loads(blob.download_as_bytes())["epoch"])
    except exceptions.NotFound:  # replaced by a newer save meanwhile
        return None


@pytest.mark.gcs
@pytest.mark.slow
def test_killed_training_on_gs_resumes_on_a_fresh_node(gcs_bucket, pbc_tfrecords, tmp_path):
    """SIGKILL a training task after an epoch reached the bucket; the same task started again
    with an empty local disk resumes there, publishes its model and removes the checkpoints."""
    out, ckpt = f"{gcs_bucket}/run/train/model", f"{gcs_bucket}/run/train/ckpt"
    remote_phase = storage.join(fitting.checkpoint_store(out, ckpt).remote, "finetune")
    cmd = [
        sys.executable, "-m", "hemaflow", "train", str(pbc_tfrecords),
        "--backbone", "small_cnn", "--out", out, "--profile", "quickstart",
        "--set", "model.batch_size=16", "--set", "train.epochs=5",
        "--set", "train.early_stopping_patience=0", "--set", f"train.checkpoint_dir={ckpt}",
    ]  # fmt: skip

    def env(node: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "HEMAFLOW_CACHE": str(tmp_path / node)}

    first = subprocess.Popen(cmd, cwd=tmp_path, env=env("node1"), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _remote_epoch(remote_phase) is None:
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in the bucket within 300 s"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved_epoch = _remote_epoch(remote_phase)
    assert saved_epoch is not None and 1 <= saved_epoch < 5
    assert not storage.is_complete(out)

    second = subprocess.run(cmd, cwd=tmp_path, env=env("node2"), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from checkpoint at epoch {saved_epoch}" in second.stderr
    assert storage.is_complete(out)
    metrics = json.loads(storage.read_text(storage.join(out, "metrics.json")))
    assert metrics["resumed_from"] == saved_epoch and metrics["epochs_run"] == 5
    # Only the remaining epochs were trained again, and the checkpoints are gone.
    epoch_lines = [line for line in second.stderr.splitlines() if "images/s)" in line]
    assert len(epoch_lines) == 5 - saved_epoch, epoch_lines
    assert not storage.exists(ckpt)
