"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.modeling import metrics


def test_confusion_accuracy_balanced():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(6 / 8)
    assert metrics.balanced_accuracy(y_true, y_pred, 3) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    prf = metrics.per_class_prf(y_true, y_pred, 3)
    np.testing.assert_allclose(prf["precision"], [3 / 4, 1 / 2, 1])
    np.testing.assert_allclose(prf["recall"], [3 / 4, 1 / 2, 1])
    np.testing.assert_allclose(prf["f1"], [3 / 4, 1 / 2, 1])
    assert prf["support"].tolist() == [4, 2, 2]


def test_balanced_accuracy_ignores_absent_classes_and_rewards_minorities():
    y_true = np.array([0] * 9 + [1])
    always_zero = np.zeros(10, int)
    assert metrics.accuracy(y_true, always_zero) == pytest.approx(0.9)
    assert metrics.balanced_accuracy(y_true, always_zero, 4) == pytest.approx(0.5)


def test_ece_and_reliability():
    # 4 examples at confidence 0.9 with 2 right: gap 0.4; 2 at 0.6 both right: gap 0.4.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y_true = np.array([0, 0, 1, 1, 1, 1])
    assert metrics.expected_calibration_error(probs, y_true) == pytest.approx(0.4)
    table = metrics.reliability(probs, y_true)
    assert sum(table["count"]) == 6 and len(table["count"]) == 15
    busy = [i for i, c in enumerate(table["count"]) if c]
    assert [table["accuracy"][i] for i in busy] == pytest.approx([1.0, 0.5])
    perfect = np.eye(3)[[0, 1, 2, 1]]
    assert metrics.expected_calibration_error(perfect, np.array([0, 1, 2, 1])) == 0.0


def test_log_loss_and_errors():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert metrics.log_loss(probs, np.array([0, 1])) == pytest.approx(
        -(np.log(0.5) + np.log(0.75)) / 2
    )
    with pytest.raises(ValueError, match="labels: values must be in"):
        metrics.log_loss(probs, np.array([0, 2]))
    with pytest.raises(ValueError, match="no examples"):
        metrics.accuracy(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="2 true labels but 3"):
        metrics.accuracy(np.array([0, 1]), np.array([0, 1, 1]))


def test_classification_metrics_bundle():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    out = metrics.classification_metrics(probs, np.array([0, 1, 2]), ["a", "b", "c"])
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["confusion_matrix"][2] == [1, 0, 0]
    with pytest.raises(ValueError, match="class_names has 2"):
        metrics.classification_metrics(probs, np.array([0, 1, 2]), ["a", "b"])


def test_robustness_summary_medmnist_c():
    corrupted = {
        "blur": {
            1: {"accuracy": 0.9, "balanced_accuracy": 0.8},
            3: {"accuracy": 0.7, "balanced_accuracy": 0.6},
        },
        "noise": {1: {"accuracy": 1.0, "balanced_accuracy": 0.9}},
    }
    out = metrics.robustness_summary(0.95, corrupted)
    assert out["clean_balanced_error"] == pytest.approx(0.05)
    assert out["per_corruption"]["blur"]["balanced_error"] == pytest.approx(0.3)
    assert out["per_corruption"]["blur"]["balanced_error_increase"] == pytest.approx(0.25)
    assert out["per_corruption"]["blur"]["balanced_error_ratio"] == pytest.approx(6.0)
    assert out["mean_balanced_error"] == pytest.approx(0.2)
    assert out["mean_balanced_error_increase"] == pytest.approx(0.15)
    assert out["corrupted_accuracy"] == pytest.approx((0.9 + 0.7 + 1.0) / 3)
    assert metrics.robustness_summary(1.0, corrupted)["mean_balanced_error_ratio"] is None
    with pytest.raises(ValueError, match="no corruption"):
        metrics.robustness_summary(0.9, {})
