"""Evaluate: clean, Bmk and corruption metrics, BN adaptation, report and model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hemaflow.config import CLASS_NAMES, load_config
from tests.helpers import (
    SIZE,
    load_pbc_arrays,
    mark_complete,
    train_tiny,
    write_dataset,
    write_tfrecord_folder,
)


@pytest.fixture(scope="module")
def setup(pbc128_root, tmp_path_factory):
    from hemaflow.modeling.export import export_model

    train = load_pbc_arrays(pbc128_root, 16)
    test = load_pbc_arrays(pbc128_root, 5, offset=20)
    bmk = load_pbc_arrays(pbc128_root, 3, offset=30)
    model, history = train_tiny(train[0], train[1])
    model_dir = tmp_path_factory.mktemp("model")
    export_model(
        model, model_dir, list(CLASS_NAMES), SIZE, {"backbone": "tiny", "history": history}
    )
    mark_complete(model_dir)
    records = write_tfrecord_folder(tmp_path_factory.mktemp("records"), {"test": test, "bmk": bmk})
    data = write_dataset(tmp_path_factory.mktemp("data"), {"test": test})
    return model, model_dir, records, data, test


def quick_config(**extra):
    overrides = {
        "evaluate.corruptions": ["gaussian_blur", "stain_deposits"],
        "evaluate.severities": [1, 5],
        "evaluate.max_images": 24,
        "evaluate.independent": ["gauss_noise", "hue_shift", "white_balance"],
        **extra,
    }
    return load_config("quickstart", overrides=overrides)


@pytest.mark.slow
def test_evaluate_tfrecords_end_to_end(setup, tmp_path):
    from hemaflow.components import evaluate

    model, model_dir, records, _, test = setup
    out = tmp_path / "eval"
    result = evaluate.run(
        str(model_dir), str(records), str(out), quick_config(**{"evaluate.bn_adaptation": True})
    )
    body = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "ece",
        "bmk_accuracy",
        "corrupted_accuracy",
        "per_class",
        "per_corruption",
    ):
        assert key in body
    assert body["test"]["count"] == len(test[1]) and body["bmk"]["count"] == 24
    assert result["accuracy"] == body["accuracy"] > 0.2  # chance is 0.125
    expected = model.predict(test[0], verbose=0).argmax(axis=1)
    assert body["accuracy"] == pytest.approx(np.mean(expected == test[1]))
    assert set(body["per_corruption"]) == {"gaussian_blur", "stain_deposits"}
    assert body["corruption_sample_count"] == 24
    blur = body["robustness"]["per_corruption"]["gaussian_blur"]
    assert set(blur["by_severity"]) == {"1", "5"}
    assert blur["balanced_error"] == pytest.approx(
        np.mean([1 - v["balanced_accuracy"] for v in blur["by_severity"].values()])
    )
    assert body["bn_adaptation"]["batchnorm_layers"] == 1
    assert 0.0 <= body["bn_adaptation"]["corrupted_accuracy"] <= 1.0
    assert "RunInference" in body["inference"]
    assert sum(map(sum, body["confusion_matrix"])) == len(test[1])
    html = (out / "report.html").read_text()
    for figure in (
        "confusion_test.png",
        "reliability_test.png",
        "corruption_accuracy.png",
        "corruption_grid.png",
        "training_curves.png",
        "mistakes.png",
    ):
        assert figure in html and (out / figure).is_file()
    card = (out / "model_card.md").read_text()
    assert "Acevedo" in card and "gaussian_blur" in card and "Intended use" in card


def test_evaluate_dataset_folder_in_process(setup, tmp_path):
    from hemaflow.components import evaluate

    model, model_dir, _, data, test = setup
    result = evaluate.run(str(model_dir), str(data), str(tmp_path / "eval"), quick_config())
    expected = model.predict(test[0], verbose=0).argmax(axis=1)
    assert result["accuracy"] == pytest.approx(np.mean(expected == test[1]))
    assert result["bmk_accuracy"] is None and result["bn_adapted_corrupted_accuracy"] is None


def test_independent_benchmark_beside_the_own_suite(setup, tmp_path):
    from hemaflow.components import evaluate

    _, model_dir, _, data, _ = setup
    out = tmp_path / "eval"
    result = evaluate.run(
        str(model_dir), str(data), str(out), quick_config(**{"evaluate.bn_adaptation": True})
    )
    body = json.loads((out / "metrics.json").read_text())
    ind = body["independent"]
    assert ind["corruptions"] == ["gauss_noise", "hue_shift", "white_balance"]
    cells = {
        (name, s): v["accuracy"]
        for name, row in ind["per_corruption"].items()
        for s, v in row["by_severity"].items()
    }
    assert set(cells) == {(n, s) for n in ind["corruptions"] for s in ("1", "5")}
    assert body["independent_accuracy"] == pytest.approx(np.mean(list(cells.values())))
    assert body["independent_accuracy"] == result["independent_accuracy"] == ind["accuracy"]
    assert body["independent_severity5_accuracy"] == pytest.approx(
        np.mean([v for (_, s), v in cells.items() if s == "5"])
    )
    assert set(ind["by_severity"]) == {"1", "5"}
    assert set(ind["per_family"]) == {"noise", "stain"}
    stain = ind["per_family"]["stain"]
    assert stain["corruptions"] == ["hue_shift", "white_balance"]
    assert stain["accuracy"] == pytest.approx(
        np.mean([v for (n, _), v in cells.items() if n != "gauss_noise"])
    )
    # hue_shift's kind (chromatic) is in the quickstart policy, white balance has no kind.
    assert stain["training_policy_has_kind"] == "partly"
    assert ind["per_corruption"]["white_balance"]["trained_kind"] is None
    worst = min(ind["per_family"], key=lambda f: ind["per_family"][f]["accuracy"])
    assert body["independent_worst_family"] == worst
    assert body["independent_worst_family_accuracy"] == ind["per_family"][worst]["accuracy"]
    own = body["robustness"]
    assert set(own["per_family"]) == {"blur", "artifact"}
    assert body["corrupted_worst_family"] in own["per_family"]
    assert body["corrupted_worst_family_accuracy"] == pytest.approx(
        min(v["accuracy"] for v in own["per_family"].values())
    )
    assert body["corrupted_severity5_accuracy"] == pytest.approx(
        np.mean([r["by_severity"]["5"]["accuracy"] for r in own["per_corruption"].values()])
    )
    adapted = ind["bn_adaptation"]
    assert body["bn_adapted_independent_accuracy"] == adapted["accuracy"]
    assert set(adapted["per_corruption"]) == set(ind["corruptions"])
    assert 0.0 <= adapted["accuracy"] <= 1.0 and adapted["worst_family"] in {"noise", "stain"}
    html = (out / "report.html").read_text()
    assert "independent_grid.png" in html and (out / "independent_grid.png").is_file()
    assert "independent_accuracy.png" in html and "training policy has this kind" in html
    assert "corrupted, independent benchmark (mean)" in html
    card = (out / "model_card.md").read_text()
    assert "Independent corruption benchmark" in card
    assert f"{100 * body['independent_accuracy']:.2f}%" in card


def test_independent_benchmark_off_and_unknown_names(setup, tmp_path):
    from hemaflow.components import evaluate

    from hemaflow.config import ConfigError

    _, model_dir, _, data, _ = setup
    off = quick_config(**{"evaluate.independent": [], "evaluate.corruptions": ["jpeg"]})
    result = evaluate.run(str(model_dir), str(data), str(tmp_path / "off"), off)
    assert result["independent"] is None and result["independent_accuracy"] is None
    assert result["independent_worst_family"] is None
    assert "not measured" in (tmp_path / "off" / "model_card.md").read_text().lower()
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="unknown independent corruption 'fog'"):
        evaluate.run(
            str(model_dir), str(data), str(out), quick_config(**{"evaluate.independent": ["fog"]})
        )
    assert not out.exists()


def test_bn_adaptation_restores_statistics(setup):
    from hemaflow.components.evaluate import batchnorm_layers, predict_bn_adapted

    from hemaflow.imaging.corruptions import corrupt

    model, _, _, _, test = setup
    layer = batchnorm_layers(model)[0]
    layer.trainable = False  # as in a fine-tuned model with a frozen backbone
    before = [w.numpy().copy() for w in layer.non_trainable_weights]
    momentum = layer.momentum
    blurred = corrupt(test[0], "gaussian_blur", 5, 0)
    adapted = predict_bn_adapted(model, blurred, 16)
    plain = model.predict(blurred, verbose=0)
    assert adapted.shape == plain.shape and not np.allclose(adapted, plain, atol=1e-4)
    for old, new in zip(before, layer.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())
    assert layer.momentum == momentum and layer.trainable is False
    layer.trainable = True


def test_bn_adaptation_averages_every_view_of_an_ensemble_alike():
    """Each member runs once per view: its statistics must still average all the images."""
    import keras
    from hemaflow.components.ensemble import build_ensemble_model
    from hemaflow.components.evaluate import predict_bn_adapted

    from hemaflow.modeling.layers import dihedral_view

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(momentum=0.99)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    member = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(0)
    # Two batches far apart: an average weighted to the last one predicts differently.
    images = np.concatenate(
        [rng.integers(0, 60, (8, 8, 8, 3)), rng.integers(150, 255, (8, 8, 8, 3))]
    ).astype("uint8")
    # Flips move pixels, not their per-channel statistics: every view adapts to the same.
    expected = np.mean(
        [predict_bn_adapted(member, dihedral_view(images, v), 8) for v in range(4)], axis=0
    )
    ensemble = build_ensemble_model([member], 8, [1.0], 1.0, views=4)
    np.testing.assert_allclose(predict_bn_adapted(ensemble, images, 8), expected, atol=1e-5)


def test_evaluate_errors_write_nothing(setup, tmp_path):
    from hemaflow.components import evaluate

    from hemaflow.data import dataset
    from hemaflow.errors import StageError

    _, model_dir, _, data, test = setup
    other = tmp_path / "other"
    write_dataset(other, {"test": test})
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["class_names"] = list(reversed(CLASS_NAMES))
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    with pytest.raises(StageError, match="class lists differ"):
        evaluate.run(str(model_dir), str(other), str(out), quick_config())
    empty = tmp_path / "empty"
    write_dataset(empty, {"test": (test[0][:0], test[1][:0], [])})
    with pytest.raises(dataset.DatasetError, match="split 'test' is empty"):
        evaluate.run(str(model_dir), str(empty), str(out), quick_config())
    with pytest.raises(ValueError, match="unknown corruption"):
        evaluate.run(
            str(model_dir), str(data), str(out), quick_config(**{"evaluate.corruptions": ["fog"]})
        )
    assert not out.exists()


def test_model_card_names_an_ensembles_members_temperature_and_views():
    from hemaflow.reporting.modelcard import model_card

    manifest = {
        "class_names": list(CLASS_NAMES),
        "image_size": 64,
        "members": [{"backbone": "resnet_mini", "weight": 1.0}],
        "temperature": 1.25,
        "views": 4,
    }
    card = model_card(manifest, {"accuracy": 0.98}, {"source": "pbc128"})
    assert "Ensemble of 1 members: resnet_mini (weight 1.000); temperature 1.250" in card
    assert "averaged over 4 symmetric views" in card
    assert "symmetric views" not in model_card({**manifest, "views": 1}, {}, {})


def test_corruption_writing_is_timed_on_a_probe_and_scaled_to_the_sample(monkeypatch):
    from hemaflow.components import evaluate

    from hemaflow.imaging import corruptions, independent

    calls, clock = [], iter(float(t) for t in range(1000))

    def fake(suite):
        def corrupt(images, name, severity, seed):
            calls.append((suite, name, severity, len(images)))
            return images

        return corrupt

    monkeypatch.setattr(corruptions, "corrupt", fake("own"))
    monkeypatch.setattr(independent, "corrupt", fake("independent"))
    monkeypatch.setattr(evaluate.time, "perf_counter", lambda: next(clock))
    config = load_config(
        "quickstart",
        overrides={
            "evaluate.corruptions": ["gaussian_noise", "defocus_blur"],
            "evaluate.independent": ["gauss_noise"],
            "evaluate.severities": [1, 5],
        },
    )
    probe = np.zeros((4, 8, 8, 3), np.uint8)
    # One clock tick across the timed writing of 3 sets x 2 severities, scaled 4 -> 100.
    assert evaluate.generation_seconds(probe, config, 100) == pytest.approx(1.0 * 100 / 4)
    jobs = [("own", "gaussian_noise"), ("own", "defocus_blur"), ("independent", "gauss_noise")]
    assert calls[:3] == [(suite, name, 1, 4) for suite, name in jobs]  # untimed: builds ops
    assert sorted(calls[3:]) == sorted((suite, name, s, 4) for suite, name in jobs for s in (1, 5))
    assert evaluate.generation_seconds(probe[:0], config, 100) == 0.0
