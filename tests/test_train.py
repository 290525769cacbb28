"""Final training on real images: export, accuracy above chance, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hemaflow.config import load_config
from hemaflow.modeling import fitting
from tests.helpers import mark_complete

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides):
    base = {
        "model.batch_size": 32,
        "model.head.dense": [64],
        "train.epochs": 4,
        "train.learning_rate": 0.003,
    }
    return load_config("quickstart", overrides={**base, **overrides})


@pytest.mark.slow
def test_train_exports_a_model_that_beats_chance(pbc_tfrecords, tmp_path):
    from hemaflow.components import train

    from hemaflow.data import tfrecords
    from hemaflow.modeling import loading

    out = tmp_path / "model"
    metrics = train.run(str(pbc_tfrecords), "small_cnn", "", str(out), _config())
    for name in ("model.keras", "saved_model", "manifest.json", "curves.png", "report.html"):
        assert (out / name).exists(), name
    manifest = loading.read_model_manifest(str(out))
    assert manifest["kind"] == "model" and manifest["backbone"] == "small_cnn"
    assert manifest["image_size"] == 32 and len(manifest["class_names"]) == 8
    assert metrics["epochs_run"] >= 1 and metrics["resumed_from"] == 0
    # Held-out images (never trained on): 8 classes, so chance is 0.125.
    model = loading.load_model(str(out))
    ds = tfrecords.read_dataset(pbc_tfrecords, "bmk", 8, 32, batch_size=64)
    accuracy = fitting.evaluate_accuracy(model, ds)
    assert accuracy > 0.3, accuracy
    # train reports val (and Bmk-val, absent from this older folder), never Bmk.
    val = tfrecords.read_dataset(pbc_tfrecords, "val", 8, 32, batch_size=64)
    assert abs(metrics["val_accuracy"] - fitting.evaluate_accuracy(model, val)) < 1e-6
    assert metrics["bmk_val_accuracy"] is None and "bmk_accuracy" not in metrics
    # Consistency training is off by default: plain CE, no JSD column in the curves.
    assert metrics["consistency"] == "none" and metrics["consistency_weight"] == 0.0
    assert "jsd" not in json.loads((out / "history.json").read_text())
    assert not fitting.default_work_dir(str(out)).exists()  # checkpoints cleaned up
    assert json.loads((out / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(pbc_tfrecords, tmp_path):
    out = tmp_path / "model"
    work = fitting.default_work_dir(str(out))
    metadata = work / "finetune" / "backup" / "training_metadata.json"
    cmd = [
        sys.executable,
        "-m",
        "hemaflow",
        "train",
        str(pbc_tfrecords),
        "--backbone",
        "small_cnn",
        "--out",
        str(out),
        "--profile",
        "quickstart",
        "--set",
        "model.batch_size=16",
        "--set",
        "train.epochs=5",
        "--set",
        "train.early_stopping_patience=0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not metadata.exists():
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved_epoch = json.loads(metadata.read_text())["epoch"]
    assert 1 <= saved_epoch < 5 and not out.exists()

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from checkpoint at epoch {saved_epoch}" in second.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == saved_epoch
    # The restarted run only trained the remaining epochs, not all five again.
    epoch_lines = [line for line in second.stderr.splitlines() if "images/s)" in line]
    assert len(epoch_lines) == 5 - saved_epoch, epoch_lines


def test_hparams_file_overrides_and_is_checked(tmp_path):
    config = _config()
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps({"hparams": {"dense": [256, 64], "optimizer": "lion"}}))
    hp = fitting.load_hparams(str(path), config)
    assert hp.dense == [256, 64] and hp.optimizer == "lion"
    assert hp.dropout == config.model.head.dropout
    path.write_text(json.dumps({"hparams": {"dense_units": 3}}))
    with pytest.raises(ValueError, match="dense_units"):
        fitting.load_hparams(str(path), config)
    path.write_text(json.dumps({"hparams": {"optimizer": "rmsprop"}}))
    with pytest.raises(ValueError, match=r"hparams.json: optimizer"):
        fitting.load_hparams(str(path), config)


def test_weight_decay_shrinks_kernels_only():
    """A step with zero gradients moves nothing but decayed weights: the kernels under
    AdamW, SGD and Lion; never BatchNorm's scale and offset or a bias, and nothing under Adam."""
    import keras

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()]
    )
    for name in fitting.OPTIMIZERS:
        for variable in model.trainable_variables:
            variable.assign(np.ones(variable.shape))
        optimizer = fitting.make_optimizer(name, 0.1, weight_decay=0.5)
        optimizer.apply_gradients(
            [(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables]
        )
        moved = {v.name: float(np.max(np.abs(v.numpy() - 1.0))) for v in model.trainable_variables}
        expected = 0.0 if name == "adam" else pytest.approx(0.05)
        assert moved == {"kernel": expected, "bias": 0.0, "gamma": 0.0, "beta": 0.0}, name


def test_optimizers_and_schedule():
    opt = fitting.make_optimizer("adam", 1e-3, "cosine", total_steps=100)
    rates = [float(opt.learning_rate) for _ in range(1)]  # the schedule at step 0: warm-up start
    assert rates[0] == pytest.approx(1e-4)
    schedule = opt._learning_rate
    assert float(schedule(5)) == pytest.approx(1e-3, rel=1e-3)  # peak after the 5% warm-up
    assert float(schedule(100)) < 1e-4
    with pytest.raises(ValueError, match="optimizer"):
        fitting.make_optimizer("rmsprop", 1e-3)


def test_bad_data_folders_are_named(pbc_tfrecords, tmp_path):
    from hemaflow.components import train

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train.run(str(nothing), "small_cnn", "", str(tmp_path / "m"), _config())
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = json.loads((pbc_tfrecords / "manifest.json").read_text())
    manifest["counts"]["val"] = {name: 0 for name in manifest["class_names"]}
    (empty / "manifest.json").write_text(json.dumps(manifest))
    mark_complete(empty)
    with pytest.raises(ValueError, match="split 'val' is empty"):
        train.run(str(empty), "small_cnn", "", str(tmp_path / "m"), _config())
    assert not (tmp_path / "m").exists()


def test_history_concatenates_phases():
    from hemaflow.components.train import _concat

    joined = _concat([{"loss": [3.0, 2.0], "epoch": [0, 1]}, {"loss": [1.0], "epoch": [0]}])
    assert joined == {"loss": [3.0, 2.0, 1.0]}
    assert np.isclose(fitting.steady_rate([10.0, 100.0, 110.0]), 105.0)


def test_work_dir_is_stable_and_unique_per_output(tmp_path):
    from hemaflow.config import ConfigError

    out = str(tmp_path / "models" / "resnet_mini")
    assert fitting.default_work_dir(out) == fitting.default_work_dir(out)
    assert fitting.default_work_dir(out).parent == tmp_path / "models"
    shared = str(tmp_path / "ckpt")
    a = fitting.default_work_dir("gs://b/run1/model", shared)
    b = fitting.default_work_dir("gs://b/run2/model", shared)
    assert a != b and a.parent == b.parent == tmp_path / "ckpt"
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        load_config("quickstart", overrides={"train.checkpoint_dir": "gs:///ckpt"})


def test_checkpoint_dir_may_be_gs_and_gives_a_mirrored_store(tmp_path):
    config = load_config("quickstart", overrides={"train.checkpoint_dir": "gs://bucket/ckpt"})
    store = fitting.checkpoint_store("gs://b/run/model", config.train.checkpoint_dir)
    assert store.remote.startswith("gs://bucket/ckpt/model-")
    assert fitting.default_work_dir("gs://b/run/model", "gs://bucket/ckpt") == store.local
