"""Backbone comparison on real images, and top-k selection."""

from __future__ import annotations

import json

import pytest
from hemaflow.components import compare

from hemaflow.config import load_config


@pytest.mark.slow
def test_compare_backbone_reports_every_key(pbc_tfrecords, tmp_path):
    config = load_config("quickstart", overrides={"compare.epochs": 1, "model.batch_size": 32})
    out = tmp_path / "small_cnn"
    result = compare.run(str(pbc_tfrecords), "small_cnn", str(out), config)
    for key in compare.RESULT_KEYS:
        assert key in result, key
    assert result["backbone"] == "small_cnn"
    assert 0.0 <= result["val_accuracy"] <= 1.0
    # pbc_tfrecords has no bmk_val split (an older folder): no Bmk-val score, and never Bmk.
    assert result["bmk_val_accuracy"] is None and "bmk_accuracy" not in result
    assert result["params"] > 10_000
    assert result["train_images_per_s"] > 0 and result["infer_images_per_s"] > 0
    assert result["precision"] in ("float32", "mixed_bfloat16")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["val_accuracy"] == result["val_accuracy"]
    assert (out / "report.html").exists()


def test_compare_unknown_backbone_fails_before_writing(pbc_tfrecords, tmp_path):
    config = load_config("quickstart")
    with pytest.raises(ValueError, match="known backbones"):
        compare.run(str(pbc_tfrecords), "alexnet", str(tmp_path / "x"), config)
    assert not (tmp_path / "x").exists()


RESULTS = [
    {"backbone": "a", "val_accuracy": 0.90, "bmk_val_accuracy": 0.70, "params": 10},
    {"backbone": "b", "val_accuracy": 0.85, "bmk_val_accuracy": 0.85, "params": 20},
    {"backbone": "c", "val_accuracy": 0.80, "bmk_val_accuracy": 0.60, "params": 5},
    {"backbone": "d", "val_accuracy": 0.85, "bmk_val_accuracy": 0.85, "params": 8},
]


def test_criteria_are_the_configs_choices():
    import typing

    from hemaflow.config import CompareConfig

    hint = typing.get_type_hints(CompareConfig)["criterion"]
    assert typing.get_args(hint) == compare.CRITERIA
    assert not any(c == "bmk_accuracy" or "test" in c for c in compare.CRITERIA)


def test_select_top_k_by_each_criterion():
    assert compare.select_top_k(RESULTS, 1, "val_accuracy") == ["a"]
    # b and d tie on bmk_val: the smaller model wins.
    assert compare.select_top_k(RESULTS, 2, "bmk_val_accuracy") == ["d", "b"]
    assert compare.select_top_k(RESULTS, 3, "mean_accuracy") == ["d", "b", "a"]
    assert compare.select_top_k(RESULTS, 4, "val_accuracy")[-1] == "c"


def test_select_top_k_errors():
    with pytest.raises(ValueError, match="only 4 candidate"):
        compare.select_top_k(RESULTS, 5, "val_accuracy")
    with pytest.raises(ValueError, match="criterion"):
        compare.select_top_k(RESULTS, 1, "f1")
    with pytest.raises(ValueError, match="at least 1"):
        compare.select_top_k(RESULTS, 0, "val_accuracy")
    with pytest.raises(ValueError, match="no val_accuracy"):
        compare.select_top_k([{"backbone": "a", "bmk_val_accuracy": 0.9}], 1, "mean_accuracy")


def test_without_bmk_val_every_criterion_ranks_on_val(caplog):
    # Results from a TFRecord folder without bmk_val (older augment); b's Bmk-val is ignored
    # too, so every candidate is measured the same way.
    results = [
        {"backbone": "a", "val_accuracy": 0.9, "bmk_val_accuracy": None},
        {"backbone": "b", "val_accuracy": 0.8, "bmk_val_accuracy": 1.0},
    ]
    for criterion in compare.CRITERIA:
        assert compare.select_top_k(results, 1, criterion) == ["a"]
    assert "ranking every backbone on val_accuracy" in caplog.text


def test_train_images_budget_is_a_fixed_sample_reshuffled_each_epoch(pbc_tfrecords):
    import numpy as np

    from hemaflow.modeling import fitting

    config = load_config("quickstart", overrides={"compare.train_images": 40})
    s = fitting.setup(str(pbc_tfrecords), "small_cnn", config, config.compare.train_images)
    full = fitting.split_size(s.info, "train")
    assert s.train_images == 40 < full
    train_ds, _, _ = fitting.data(s, seed=0)
    epochs = [np.concatenate([x.numpy() for x, _ in train_ds]) for _ in range(2)]
    assert [len(e) for e in epochs] == [40, 40]
    as_set = [sorted(map(canonical_view, e)) for e in epochs]
    assert as_set[0] == as_set[1]  # the same images ...
    assert any(not np.array_equal(a, b) for a, b in zip(*epochs, strict=True))  # ... reshuffled
    # A budget above the split size means the whole split.
    assert fitting.setup(str(pbc_tfrecords), "small_cnn", config, full + 5).train_images == full


def canonical_view(image) -> bytes:
    """The same bytes for all 8 flips and 90-degree rotations of ``image``."""
    views = (image, image.transpose(1, 0, 2))
    return min(v.tobytes() for t in views for v in (t, t[::-1], t[:, ::-1], t[::-1, ::-1]))


def test_training_batches_show_each_image_in_random_dihedral_views():
    import numpy as np
    import tensorflow as tf

    from hemaflow.modeling import fitting

    image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    batch = np.repeat(image[None], 64, axis=0)
    views = fitting.random_dihedral(tf.constant(batch), tf.constant([3, 7], tf.int64)).numpy()
    assert {canonical_view(v) for v in views} == {canonical_view(image)}
    assert len({v.tobytes() for v in views}) == 8  # 64 draws reach all 8 views
    again = fitting.random_dihedral(tf.constant(batch), tf.constant([3, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(views, again)  # stateless: the seed decides
