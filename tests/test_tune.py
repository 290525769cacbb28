"""keras-tuner search with a tiny budget on real images."""

from __future__ import annotations

import json

import pytest

from hemaflow.config import ConfigError, load_config
from hemaflow.modeling import fitting


@pytest.mark.slow
def test_tune_writes_best_hparams_within_budget(pbc_tfrecords, tmp_path):
    from hemaflow.components import tune

    config = load_config(
        "quickstart",
        overrides={
            "tune.algorithm": "hyperband",
            "tune.max_trials": 2,
            "tune.epochs": 1,
            "model.batch_size": 32,
            "tune.directory": str(tmp_path / "tuner"),
            "tune.train_images": 64,
            "tune.space.optimizers": ["adam", "adamw"],
            "tune.space.dense_first": [64],
            "tune.space.dropout": [0.2, 0.2],
        },
    )
    out = tmp_path / "hparams"
    result = tune.run(str(pbc_tfrecords), "small_cnn", str(out), config)
    best = json.loads((out / "hparams.json").read_text())
    assert best["backbone"] == "small_cnn" and 1 <= best["trials"] <= 2
    assert 0.0 <= best["best_val_accuracy"] <= 1.0
    assert best["best_val_accuracy"] == result["best_val_accuracy"]
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == best["trials"]
    assert max(t["score"] for t in trials if t["score"] is not None) == best["best_val_accuracy"]
    header = (out / "trials.csv").read_text().splitlines()[0].split(",")
    for column in ("trial_id", "score", "learning_rate", "optimizer", "dense_1", "dropout"):
        assert column in header
    assert json.loads((out / "metrics.json").read_text()) == result
    # The artifact is what train reads: the folder or its hparams.json.
    hp = fitting.load_hparams(str(out), config)
    assert hp == fitting.load_hparams(str(out / "hparams.json"), config)
    # Every trial stayed inside the configured space.
    assert hp.optimizer in ("adam", "adamw") and hp.dense[0] == 64 and hp.dropout == 0.2
    assert {t["optimizer"] for t in trials} <= {"adam", "adamw"}


def test_search_space_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"tune.space.optimizers\[1\]: 'rmsprop' is not one of"):
        load_config("quickstart", overrides={"tune.space.optimizers": ["adam", "rmsprop"]})
    with pytest.raises(ConfigError) as err:
        load_config(
            "quickstart",
            overrides={
                "tune.space.learning_rate": [0.01, 0.001],
                "tune.space.dropout": [0.5],
                "tune.space.dense_first": [],
            },
        )
    text = str(err.value)
    assert "tune.space.learning_rate: expected [low, high]" in text
    assert "tune.space.dropout: expected [low, high]" in text
    assert "tune.space.dense_first: give at least one choice" in text


def test_zero_trial_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="max_trials"):
        load_config("quickstart", overrides={"tune.max_trials": 0})


def test_trial_values_map_to_hparams():
    from hemaflow.components.tune import hparams_from_values

    config = load_config("quickstart")
    values = {
        "dense_1": 1024,
        "dense_2": 128,
        "dropout": 0.4,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "schedule": "constant",
        "label_smoothing": 0.1,
        "unfreeze": 20,
    }
    pretrained = hparams_from_values(values, True, config)
    assert pretrained["dense"] == [1024, 128] and pretrained["unfreeze"] == 20
    assert pretrained["fine_tune_learning_rate"] == pytest.approx(0.001)
    scratch = hparams_from_values({**values, "dense_2": 0}, False, config)
    assert scratch["dense"] == [1024] and scratch["fine_tune_learning_rate"] == 0.01
