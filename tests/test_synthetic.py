"""The embedded synthetic source: deterministic, balanced, fast, and its classes are visible."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.config import CLASS_NAMES
from hemaflow.data import synthetic


def _pooled(images: np.ndarray, side: int = 8) -> np.ndarray:
    """Mean-pooled pixels: a crude picture of where the colours are."""
    n, size = len(images), images.shape[1]
    k = size // side
    pooled = images.astype(np.float32).reshape(n, side, k, side, k, 3).mean(axis=(2, 4))
    return pooled.reshape(n, -1)


def test_shapes_labels_and_balance():
    images, labels = synthetic.generate(5, 32, seed=3)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [5] * len(CLASS_NAMES)
    assert images.std() > 20  # pictures, not blank frames


def test_deterministic_by_seed():
    a, la = synthetic.generate(3, 24, seed=11)
    b, lb = synthetic.generate(3, 24, seed=11)
    c, _ = synthetic.generate(3, 24, seed=12)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_class_is_visible_to_a_nearest_centroid_classifier():
    """Mean colour layout per class separates unseen images far above chance (1/8)."""
    train, train_labels = synthetic.generate(30, 32, seed=1)
    val, val_labels = synthetic.generate(15, 32, seed=2)
    features_train, features_val = _pooled(train), _pooled(val)
    centroids = np.stack([features_train[train_labels == c].mean(0) for c in range(8)])
    distances = ((features_val[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = float((distances.argmin(1) == val_labels).mean())
    assert accuracy > 0.6, accuracy


def test_class_traits_show_in_pixels():
    """Platelets have no large cell; erythroblast nuclei are the darkest; eosinophils orange."""
    images, labels = synthetic.generate(12, 48, seed=5)
    by = {name: images[labels == i].astype(np.float32) for i, name in enumerate(CLASS_NAMES)}
    centre = slice(16, 32)
    darkest = {n: np.percentile(im[:, centre, centre].mean(-1), 2) for n, im in by.items()}
    assert darkest["erythroblast"] < darkest["monocyte"]
    # a cell covers the centre in every class but platelet: the centre is background-pink there
    centre_mean = {n: im[:, 20:28, 20:28].mean() for n, im in by.items()}
    assert centre_mean["platelet"] == max(centre_mean.values())
    eos = by["eosinophil"][:, centre, centre]
    neu = by["neutrophil"][:, centre, centre]
    assert (eos[..., 0] - eos[..., 2]).mean() > (neu[..., 0] - neu[..., 2]).mean() + 20


@pytest.mark.parametrize("bad", [(0, 32), (2, 4)])
def test_rejects_impossible_requests(bad):
    with pytest.raises(ValueError, match="synthetic"):
        synthetic.generate(*bad, seed=0)
