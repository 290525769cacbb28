"""Ensemble: fitted weights and temperature beat the members on val log-loss; safe export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemaflow.config import CLASS_NAMES, load_config
from tests.helpers import SIZE, load_pbc_arrays, mark_complete, train_tiny, write_dataset


@pytest.fixture(scope="module")
def members(pbc128_root, tmp_path_factory):
    from hemaflow.modeling.export import export_model

    train = load_pbc_arrays(pbc128_root, 16)
    val = load_pbc_arrays(pbc128_root, 8, offset=16)
    data_dir = write_dataset(tmp_path_factory.mktemp("data"), {"train": train, "val": val})
    dirs = []
    for seed, (epochs, width) in enumerate([(4, 8), (3, 6)]):
        model, history = train_tiny(train[0], train[1], epochs=epochs, seed=seed, width=width)
        folder = tmp_path_factory.mktemp(f"member{seed}")
        export_model(model, folder, list(CLASS_NAMES), SIZE, {"backbone": f"tiny{seed}"})
        dirs.append(str(mark_complete(folder)))
    return data_dir, dirs, val


def test_fit_weights_and_temperature_pure():
    from hemaflow.components.ensemble import (
        apply_temperature,
        combine,
        fit_temperature,
        fit_weights,
    )

    from hemaflow.modeling import metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    # Right 70% of the time with confidence 0.7: calibrated by construction.
    right = rng.random(400) < 0.7
    predicted = np.where(right, labels, (labels + rng.integers(1, 4, 400)) % 4)
    good = np.full((400, 4), 0.1)
    good[np.arange(400), predicted] = 0.7
    noisy = rng.dirichlet(np.ones(4), 400)
    stacked = np.stack([noisy, good])
    weights = fit_weights(stacked, labels)
    assert weights.sum() == pytest.approx(1.0) and weights[1] > 0.8
    assert metrics.log_loss(combine(stacked, weights), labels) <= metrics.log_loss(good, labels)
    overconfident = apply_temperature(good, 0.25)
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(4.0, rel=0.1)
    np.testing.assert_allclose(apply_temperature(overconfident, t), good, atol=0.03)
    # All right on val: no evidence on how far to sharpen, so no sharpening at all.
    assert fit_temperature(good, predicted) == 1.0


def test_dihedral_views_are_the_eight_symmetries_in_numpy_and_keras():
    import keras

    from hemaflow.modeling.layers import dihedral_view, register_layers

    images = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    views = [dihedral_view(images, v) for v in range(8)]
    assert len({v.tobytes() for v in views}) == 8  # all distinct
    for view in views:  # each a rearrangement of the same pixels, of the same image
        np.testing.assert_array_equal(np.sort(view, axis=None), np.sort(images, axis=None))
    np.testing.assert_array_equal(views[1][0], images[0].transpose(1, 0, 2))
    np.testing.assert_array_equal(views[6][0], images[0][::-1, ::-1])  # rotated by 180
    layer = register_layers()["DihedralView"]
    for v in range(8):
        np.testing.assert_array_equal(np.asarray(layer(v)(images)), views[v])
        np.testing.assert_array_equal(np.asarray(dihedral_view(images, v, keras.ops)), views[v])
    with pytest.raises(ValueError, match="0-7"):
        layer(8)


@pytest.mark.slow
def test_eight_view_ensemble_gives_every_view_of_an_image_the_same_answer(members, tmp_path):
    from hemaflow.components import ensemble

    from hemaflow.modeling.inference import predict_arrays
    from hemaflow.modeling.layers import dihedral_view
    from hemaflow.modeling.loading import load_model, read_model_manifest

    data_dir, dirs, val = members
    out = tmp_path / "ensemble"
    config = load_config("quickstart", overrides={"ensemble.views": 8})
    result = ensemble.run(str(data_dir), dirs[:1], str(out), config)
    assert read_model_manifest(out)["views"] == 8
    report = json.loads((out / "metrics.json").read_text())
    assert report["views"] == 8 and report["members"][0]["model"] == "tiny0 (8 views)"
    model = load_model(out)  # safe_mode: DihedralView is registered
    probs = predict_arrays(model, val[0])
    from hemaflow.modeling import metrics

    assert metrics.log_loss(probs, val[1]) == pytest.approx(result["val_log_loss"], abs=1e-3)
    for v in range(1, 8):
        np.testing.assert_allclose(
            predict_arrays(model, dihedral_view(val[0], v)), probs, atol=1e-5
        )
    # One view alone is not invariant: the averaging is what makes the answer the same.
    member = load_model(dirs[0])
    single = predict_arrays(member, val[0])
    assert np.abs(predict_arrays(member, dihedral_view(val[0], 1)) - single).max() > 1e-3


@pytest.mark.slow
def test_build_ensemble_beats_members_on_val(members, tmp_path):
    from hemaflow.components import ensemble

    from hemaflow.modeling.inference import predict_arrays
    from hemaflow.modeling.loading import load_model, read_model_manifest

    data_dir, dirs, val = members
    out = tmp_path / "ensemble"
    result = ensemble.run(str(data_dir), dirs, str(out), load_config("quickstart"))
    assert result["val_log_loss"] <= result["best_member_val_log_loss"] + 1e-9
    assert result["val_log_loss"] <= result["uncalibrated_val_log_loss"] + 1e-9
    assert sum(result["weights"]) == pytest.approx(1.0)
    assert result["val_accuracy"] > 0.25  # chance is 0.125

    manifest = read_model_manifest(out)
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert [m["backbone"] for m in manifest["members"]] == ["tiny0", "tiny1"]
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["members"]) == 2 and "ensemble" in report
    assert (out / "report.html").is_file() and (out / "saved_model" / "saved_model.pb").is_file()

    model = load_model(out)  # safe_mode: custom layers are registered
    probs = predict_arrays(model, val[0])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    from hemaflow.modeling import metrics

    assert metrics.log_loss(probs, val[1]) == pytest.approx(result["val_log_loss"], abs=1e-3)
    # Any input size: 48 px images are resized to the 32 px working size inside the model.
    import tensorflow as tf

    bigger = tf.cast(tf.image.resize(val[0][:4], (48, 48)), tf.uint8).numpy()
    assert predict_arrays(model, bigger).shape == (4, 8)
    # The resize layer, traced with unknown sizes as a serving graph may be: images at the
    # working size pass through untouched, others are resized exactly as with known sizes.
    resize = model.get_layer("resize")
    traced = tf.function(resize, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    np.testing.assert_array_equal(traced(val[0][:4]).numpy(), val[0][:4])
    resized = traced(bigger).numpy()
    assert resized.shape == (4, SIZE, SIZE, 3)
    np.testing.assert_array_equal(resized, resize(bigger).numpy())
    assert not np.array_equal(resized, val[0][:4])  # a real resize, not a pass-through


def test_ensemble_rejects_mismatched_members(members, tmp_path):
    from hemaflow.components import ensemble

    data_dir, dirs, _ = members
    config = load_config("quickstart")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    first = Path(dirs[0])
    (wrong / "model.keras").write_bytes((first / "model.keras").read_bytes())
    mark_complete(wrong)
    manifest = json.loads((first / "manifest.json").read_text())
    (wrong / "manifest.json").write_text(json.dumps({**manifest, "class_names": ["a"] * 8}))
    with pytest.raises(ValueError, match="member classes"):
        ensemble.run(str(data_dir), [dirs[0], str(wrong)], str(tmp_path / "out"), config)
    (wrong / "manifest.json").write_text(json.dumps({**manifest, "image_size": 64}))
    with pytest.raises(ValueError, match="works at 64 px but the data is 32 px"):
        ensemble.run(str(data_dir), [dirs[0], str(wrong)], str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="at least one member"):
        ensemble.run(str(data_dir), [], str(tmp_path / "out"), config)
