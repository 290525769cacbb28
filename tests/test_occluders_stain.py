"""The training-only colour and occluder ops on real pbc128 cells: white balance and stain
vectors (colour), precipitate, fibres and defocused dust (artifacts), and how the policy uses
them: identity at 0, effect growing with strength, bounded coverage, determinism per seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemaflow.imaging import ops as imageops
from tests.helpers import pbc_cells

COLOUR = ["white_balance", "stain_vectors"]
OCCLUDERS = ["precipitate", "fibres", "defocused_dust"]
NEW = COLOUR + OCCLUDERS
COVERAGE_AT_FULL_STRENGTH = {"precipitate": 0.3, "fibres": 0.12, "defocused_dust": 0.3}
"""The most of one 128 px image an occluder at strength 1 may change by more than 8 levels."""


@pytest.fixture(scope="module")
def cells(pbc128_root: Path) -> np.ndarray:
    """Sixteen real 128 px cells, two of each class, uint8 [16, 128, 128, 3]."""
    classes = sorted(p.name for p in pbc128_root.iterdir() if p.is_dir())
    return np.concatenate([pbc_cells(pbc128_root, classes, i) for i in range(2)])


def run(name: str, images, strength, seed=(5, 9)) -> np.ndarray:
    return imageops.apply(name, images, strength, seed).numpy()


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64))


def changed_fraction(out: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per image, the fraction of pixels moved by more than 8 levels in some channel."""
    return (diff(out, images).max(-1) > 8).reshape(len(images), -1).mean(1)


@pytest.mark.parametrize("name", NEW)
def test_deterministic_per_seed_eager_and_in_a_graph(cells, name):
    import tensorflow as tf

    graph = tf.function(lambda x, s, seed: imageops.apply(name, x, s, seed))
    eager = run(name, cells, 0.8, seed=(2, 3))
    np.testing.assert_array_equal(eager, run(name, cells, 0.8, seed=(2, 3)))
    # A graph fuses float ops differently: a pixel may round the other way, no draw differs.
    assert diff(eager, graph(cells, 0.8, tf.constant([2, 3])).numpy()).max() <= 1.0
    other = run(name, cells, 0.8, seed=(2, 4))
    assert diff(eager, other).mean() > 0.2, "another seed must draw another corruption"


@pytest.mark.parametrize("name", NEW)
def test_dtype_shape_and_per_image_strengths(cells, name):
    strengths = np.linspace(0.0, 1.0, len(cells)).astype(np.float32)
    out = imageops.apply(name, cells, strengths, (1, 1))
    assert out.dtype.name == "uint8" and tuple(out.shape) == cells.shape
    out_f = imageops.apply(name, cells.astype(np.float32), strengths, (1, 1)).numpy()
    assert out_f.dtype == np.float32 and out_f.min() >= 0.0 and out_f.max() <= 255.0
    assert diff(out.numpy()[0], cells[0]).max() <= 1.0  # the image at strength 0


@pytest.mark.parametrize("name", NEW)
def test_effect_grows_with_strength(cells, name):
    effects = [diff(run(name, cells, s), cells).mean() for s in (0.25, 0.5, 1.0)]
    assert effects[0] > 0.05 and effects[0] < effects[1] < effects[2], effects


@pytest.mark.parametrize("name", OCCLUDERS)
def test_occluders_grow_pixel_by_pixel(cells, name):
    """Same seed, larger strength: the same occluders, only more opaque, larger or more."""
    weaker, stronger = diff(run(name, cells, 0.4), cells), diff(run(name, cells, 0.8), cells)
    assert np.all(stronger >= weaker - 1.0)
    assert (stronger > weaker + 1.0).mean() > 0.002


@pytest.mark.parametrize("name", OCCLUDERS)
def test_occluders_cover_a_bounded_fraction(cells, name):
    fractions = np.concatenate(
        [changed_fraction(run(name, cells, 1.0, seed=(s, 1)), cells) for s in range(4)]
    )
    assert fractions.max() <= COVERAGE_AT_FULL_STRENGTH[name], fractions.max()
    assert fractions.mean() > 0.01, "an occluder at strength 1 must show on most images"
    assert (fractions > 0).mean() > 0.8


def test_white_balance_is_one_gain_per_channel_keeping_intensity(cells):
    import tensorflow as tf

    gains = imageops.white_balance_gains(tf.fill([64], 1.0), (4, 2)).numpy()
    np.testing.assert_allclose(gains.prod(axis=1), 1.0, rtol=1e-5)  # geometric mean 1
    assert gains.min() > 0.78 and gains.max() < 1.28  # about +-20%, 25% at the far corners
    assert np.abs(gains - 1).max(axis=1).mean() > 0.08  # and not a faint change
    warm = gains[:, 0] > gains[:, 2]
    assert 0.2 < warm.mean() < 0.8, "the temperature draw must go both warm and cool"
    # Away from clipping every pixel of a channel is scaled by the same gain.
    flat = np.full((2, 16, 16, 3), 100.0, np.float32)
    out = run("white_balance", flat, 1.0, seed=(4, 2))
    expected = np.broadcast_to(gains[:2, None, None], out.shape)
    np.testing.assert_allclose(out / 100.0, expected, rtol=1e-5)


def test_stain_vectors_change_hue_not_optical_density(cells):
    out = run("stain_vectors", cells.astype(np.float32), 1.0)

    def od(x: np.ndarray) -> np.ndarray:
        return -np.log(np.maximum(x, 1.0) / 255.0)

    # Hue moves: the channel balance of the stained pixels changes ...
    stained = od(cells).sum(-1) > 1.0
    ratio = od(cells)[..., 2] / np.maximum(od(cells).sum(-1), 1e-6)
    ratio_out = od(out)[..., 2] / np.maximum(od(out).sum(-1), 1e-6)
    assert np.abs(ratio_out - ratio)[stained].mean() > 0.02
    # ... while the overall amount of stain stays close (vectors keep their length).
    total, total_out = od(cells).sum(-1)[stained], od(out).sum(-1)[stained]
    assert abs(np.median(total_out / total) - 1.0) < 0.2


def test_stain_family_runs_both_ops_and_keeps_its_old_draw(cells):
    import tensorflow as tf

    from hemaflow.config import AugFamily
    from hemaflow.imaging import policy

    family = policy._build_family("stain", AugFamily(1.0, 0.6))
    x = tf.constant(cells, tf.float32)
    out = family.run(x, 17).numpy()
    # First the draw the family made when it was stain_shift alone, then the stain vectors.
    shifted = imageops.stain_shift(x, policy._magnitudes(len(cells), 0.6, 17), [17, 3])
    sub = int(policy._sub_seeds(17, "stain:stain_vectors", 1)[0])
    both = imageops.stain_vectors(shifted, policy._magnitudes(len(cells), 0.6, sub), [sub, 3])
    assert policy.STAIN_OPS == ("stain_shift", "stain_vectors")
    assert diff(out, both.numpy()).max() <= 1.0  # graph against eager rounding
    assert diff(out, shifted.numpy()).mean() > 1.0  # the stain vectors moved too


def test_new_artifacts_are_training_only(cells):
    from hemaflow.config import AugFamily
    from hemaflow.imaging import policy
    from hemaflow.imaging.corruptions import CORRUPTIONS

    assert set(OCCLUDERS) <= set(policy.ARTIFACT_KINDS)
    assert not set(NEW) & {c.op for c in CORRUPTIONS.values()}, "the suite is a fixed spec"
    family = policy._build_family("artifacts", AugFamily(1.0, 1.0))
    batch = np.concatenate([cells] * 3)
    out = family.run(batch.astype(np.float32), 8).numpy()
    assert (changed_fraction(out, batch) > 0).mean() > 0.9
