"""No choice sees the test split: scrambling its labels (hence Bmk's) changes no choice.

The same real images go through augment, compare, select-top-k, tune, train and ensemble
twice, once with the test split's labels permuted. Everything chosen or fitted before evaluate
must come out identical; evaluate's test figures must not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemaflow.config import Config, load_config
from hemaflow.data import dataset

OVERRIDES = {
    "data.image_size": 32,
    "augment.copies": 0,
    "augment.mix.kind": "none",
    "model.backbones": ["small_cnn", "resnet_mini"],
    "model.batch_size": 32,
    "compare.epochs": 1,
    "compare.top_k": 2,
    "compare.criterion": "mean_accuracy",  # val and Bmk-val: both sides of the selection
    "tune.algorithm": "random",
    "tune.max_trials": 2,
    "tune.epochs": 1,
    "tune.space.dense_first": [16, 32],
    "train.epochs": 2,
    "train.early_stopping_patience": 1,
    "evaluate.corruptions": ["gaussian_noise"],
    "evaluate.severities": [1],
}
# Wall-clock measurements and folder locations, not choices or fits.
UNFITTED = {
    "train_images_per_s",
    "infer_images_per_s",
    "wall_seconds",
    "epoch_seconds",
    "first_epoch_seconds",
    "overhead_seconds",
    "data_dir",
    "path",
}


def permute_test_labels(folder: Path) -> None:
    """Shuffle the test labels in place (class counts kept) and re-sign the manifest."""
    test = dataset.load_split(folder, "test")
    labels = np.random.default_rng(0).permutation(test.labels)
    assert np.mean(labels != test.labels) > 0.5
    manifest = dataset.read_manifest(folder)
    manifest["files"]["test.npz"] = dataset.save_split(
        folder, "test", dataset.Split(test.images, labels, test.ids)
    )
    dataset.write_manifest(folder, manifest)


def pipeline(dataset_dir: Path, work: Path, config: Config) -> dict:
    """Every stage that chooses or fits, then evaluate; returns what each produced."""
    import keras
    from hemaflow.components import augment, compare, ensemble, evaluate, train, tune

    records = str(work / "records")
    augment.run(str(dataset_dir), records, config)
    scores = [
        compare.run(records, b, str(work / f"compare-{b}"), config) for b in config.model.backbones
    ]
    top = compare.select_top_k(scores, config.compare.top_k, config.compare.criterion)
    tuned, trained, weights = [], [], []
    for backbone in top:
        tune_dir, model_dir = work / f"tune-{backbone}", work / f"train-{backbone}"
        tuned.append(tune.run(records, backbone, str(tune_dir), config))
        trained.append(train.run(records, backbone, str(tune_dir), str(model_dir), config))
        weights.append(keras.models.load_model(model_dir / "model.keras").get_weights())
    members = [str(work / f"train-{b}") for b in top]
    fitted = ensemble.run(records, members, str(work / "ensemble"), config)
    evaluated = evaluate.run(str(work / "ensemble"), records, str(work / "evaluate"), config)
    return {
        "records": Path(records),
        "compare": scores,
        "top": top,
        "hparams": [json.loads((work / f"tune-{b}" / "hparams.json").read_text()) for b in top],
        "trials": [json.loads((work / f"tune-{b}" / "trials.json").read_text()) for b in top],
        "tune": tuned,
        "train": trained,
        "weights": weights,
        "ensemble": fitted,
        "evaluate": evaluated,
    }


def fitted_only(value):
    if isinstance(value, dict):
        return {k: fitted_only(v) for k, v in value.items() if k not in UNFITTED}
    if isinstance(value, list):
        return [fitted_only(v) for v in value]
    return value


def shard_bytes(folder: Path, split: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob(f"{split}-*"))]


@pytest.mark.slow
def test_no_choice_depends_on_the_test_split(pbc_sample, tmp_path):
    from hemaflow.components import ingest

    config = load_config("quickstart", overrides=OVERRIDES)
    original = tmp_path / "dataset"
    ingest.run(str(pbc_sample), str(original), config)
    scrambled = tmp_path / "scrambled"
    shutil.copytree(original, scrambled)
    permute_test_labels(scrambled)

    a = pipeline(original, tmp_path / "a", config)
    b = pipeline(scrambled, tmp_path / "b", config)

    # What the choices may see is byte-identical; test and Bmk are not.
    for split in ("train", "val", "bmk_val"):
        assert shard_bytes(a["records"], split) == shard_bytes(b["records"], split), split
    for split in ("test", "bmk"):
        assert shard_bytes(a["records"], split) != shard_bytes(b["records"], split), split
    # Bmk-val is really scored, so the default criterion uses it rather than falling back.
    assert all(r["bmk_val_accuracy"] is not None for r in a["compare"])
    assert all("bmk_accuracy" not in r for r in a["compare"] + a["train"])

    # Choices: exactly equal.
    assert a["top"] == b["top"]
    assert a["hparams"] == b["hparams"]
    # Fitted numbers: exactly equal too. Same seed, same inputs and one process: CPU kernels
    # are deterministic here, so nothing about test may move a single bit.
    for key in ("compare", "trials", "tune", "train", "ensemble"):
        assert fitted_only(a[key]) == fitted_only(b[key]), key
    assert a["ensemble"]["weights"] == b["ensemble"]["weights"]
    assert a["ensemble"]["temperature"] == b["ensemble"]["temperature"]
    for first, second in zip(a["weights"], b["weights"], strict=True):
        assert len(first) == len(second)
        for x, y in zip(first, second, strict=True):
            np.testing.assert_array_equal(x, y)

    # The same model on differently labelled test images: evaluate's figures differ.
    ea, eb = a["evaluate"], b["evaluate"]
    assert ea["confusion_matrix"] != eb["confusion_matrix"]
    assert ea["log_loss"] != eb["log_loss"]
    assert ea["bmk"]["confusion_matrix"] != eb["bmk"]["confusion_matrix"]
