"""A pretrained backbone through train's two phases, checked weight by weight.

Warm-up: the backbone is frozen (BatchNorm in inference mode), so only the head moves.
Fine-tune: the top ``unfreeze`` weighted layers and the head move at the lower rate with a
fresh optimizer; lower layers and every BatchNorm variable (moving statistics included)
stay as loaded. The run is interrupted between the phases and resumed, as a preempted
task is: the finished warm-up is loaded, not rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hemaflow.config import load_config
from hemaflow.modeling import fitting, zoo

BACKBONE = "mobilenet_v3_small"
SIZE = 32
UNFREEZE = 6


class Preempted(RuntimeError):
    """Stands in for a kill between the phases."""


def _weights_file(path: Path) -> Path:
    """A backbone's weights file with values no initializer gives (BN statistics included)."""
    import keras

    spec = zoo.backbone_spec(BACKBONE)
    model = getattr(keras.applications, spec.constructor)(
        include_top=False,
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        name=zoo.BACKBONE_LAYER,
        **dict(spec.kwargs),
    )
    rng = np.random.default_rng(7)
    for variable in model.weights:
        value = np.asarray(variable) + rng.normal(0, 0.02, variable.shape)
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value.astype("float32"))
    model.save_weights(path)
    return path


def _snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v) for v in model.weights}


def _groups(model) -> dict[str, list[str]]:
    """Variable paths: head, BatchNorm, the top UNFREEZE weighted layers (not BN), the rest."""
    from keras import layers

    base = zoo.backbone_of(model)
    weighted = [layer for layer in base.layers if layer.weights]
    convs = [w for w in weighted if not isinstance(w, layers.BatchNormalization)]
    top = {id(layer) for layer in convs[-UNFREEZE:]}
    groups: dict[str, list[str]] = {"bn": [], "top": [], "lower": [], "head": []}
    for layer in weighted:
        if isinstance(layer, layers.BatchNormalization):
            key = "bn"
        else:
            key = "top" if id(layer) in top else "lower"
        groups[key] += [v.path for v in layer.weights]
    groups["backbone"] = [v.path for v in base.weights]
    groups["head"] = [
        v.path for name in ("head_dense1", zoo.OUTPUT_LAYER) for v in model.get_layer(name).weights
    ]
    return groups


@pytest.mark.slow
def test_warmup_moves_the_head_only_and_finetune_the_top_layers(
    pbc_tfrecords, tmp_path, monkeypatch
):
    from hemaflow.components import train

    weights = _weights_file(tmp_path / "mnv3s.weights.h5")
    config = load_config(
        "quickstart",
        overrides={
            "model.backbones": [BACKBONE],
            "model.weights": str(weights),
            "model.precision": "float32",
            "model.batch_size": 32,
            "model.head.dense": [32],
            "train.warmup_epochs": 1,
            "train.epochs": 1,
            "train.learning_rate": 0.003,
            "train.fine_tune_learning_rate": 0.0003,
            "train.schedule": "constant",
            "train.unfreeze_layers": UNFREEZE,
            "train.early_stopping_patience": 0,
        },
    )
    seen: list[dict[str, Any]] = []
    real = fitting.run_phase
    preempt = {"finetune": True}

    def recording(model, name, *args, **kwargs):
        if preempt.pop(name, False):
            raise Preempted(name)
        before = _snapshot(model)
        optimizer = model.optimizer
        start = {
            "iterations": int(optimizer.iterations),
            "learning_rate": float(np.asarray(optimizer.learning_rate)),
            "optimizer": optimizer,
        }
        result = real(model, name, *args, **kwargs)
        seen.append({"name": name, "before": before, "after": _snapshot(model), **start, **result})
        seen[-1]["groups"] = _groups(model)
        return result

    monkeypatch.setattr(fitting, "run_phase", recording)
    out = tmp_path / "model"
    with pytest.raises(Preempted):
        train.run(str(pbc_tfrecords), BACKBONE, "", str(out), config)
    assert [p["name"] for p in seen] == ["warmup"] and not out.exists()
    metrics = train.run(str(pbc_tfrecords), BACKBONE, "", str(out), config)

    first, warmup, finetune = seen
    assert [p["name"] for p in seen] == ["warmup", "warmup", "finetune"]
    assert metrics["phases"] == ["warmup", "finetune"]
    groups = first["groups"]
    assert all(groups.values()), {k: len(v) for k, v in groups.items()}

    # The file's weights were loaded into the backbone before anything trained.
    import keras

    spec = zoo.backbone_spec(BACKBONE)
    loaded = getattr(keras.applications, spec.constructor)(
        include_top=False,
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        name=zoo.BACKBONE_LAYER,
        **dict(spec.kwargs),
    )
    loaded.load_weights(weights)
    assert len(loaded.weights) == len(groups["backbone"])
    for path, variable in zip(groups["backbone"], loaded.weights, strict=True):
        assert np.array_equal(first["before"][path], np.array(variable)), path

    def changed(phase: dict, paths: list[str]) -> list[bool]:
        return [not np.array_equal(phase["before"][p], phase["after"][p]) for p in paths]

    # Warm-up: the head learned, the whole backbone (BN statistics too) is as loaded.
    assert all(changed(first, groups["head"]))
    assert not any(changed(first, groups["top"] + groups["lower"] + groups["bn"]))
    assert first["learning_rate"] == pytest.approx(0.003)

    # Resumed between phases: the finished warm-up was loaded, not trained again.
    assert warmup["history"] == first["history"]
    for path, value in first["after"].items():
        assert np.array_equal(warmup["after"][path], value), path
    assert finetune["before"].keys() == first["after"].keys()
    for path, value in first["after"].items():
        assert np.array_equal(finetune["before"][path], value), path

    # Fine-tune: head and the top layers moved; lower layers and all BN variables did not.
    assert all(changed(finetune, groups["head"]))
    assert all(changed(finetune, groups["top"])), [
        p for p, c in zip(groups["top"], changed(finetune, groups["top"]), strict=True) if not c
    ]
    assert not any(changed(finetune, groups["lower"]))
    assert not any(changed(finetune, groups["bn"]))
    # ... at the lower rate, with a fresh optimizer (no state carried from the warm-up).
    assert finetune["learning_rate"] == pytest.approx(0.0003)
    assert finetune["iterations"] == 0 and finetune["optimizer"] is not warmup["optimizer"]
    assert metrics["trainable_backbone_layers"] == len({p.rsplit("/", 1)[0] for p in groups["top"]})
    assert metrics["weights_fallback"] == ""
