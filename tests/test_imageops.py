"""Contracts of the hand-written image ops: identities, invariants, geometry and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemaflow.imaging import ops as imageops
from tests.helpers import pbc_cells

SEED = (7, 11)


@pytest.fixture(scope="module")
def cells(pbc128_root: Path) -> np.ndarray:
    """Four real 128 px cells of different classes, uint8 [4, 128, 128, 3]."""
    return pbc_cells(pbc128_root, ["basophil", "eosinophil", "lymphocyte", "neutrophil"], 0)


def run(name: str, images, strength, seed=SEED) -> np.ndarray:
    return imageops.apply(name, images, strength, seed).numpy()


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64))


EXACT_IDENTITY_AT_ZERO = [
    "gaussian_blur",
    "defocus_blur",
    "motion_blur",
    "jpeg",
    "pixelate",
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "contrast",
    "stain_deposits",
    "bubbles",
    "dust",
    "white_balance",
    "precipitate",
    "fibres",
    "defocused_dust",
]


@pytest.mark.parametrize("name", EXACT_IDENTITY_AT_ZERO)
def test_strength_zero_is_identity(cells, name):
    np.testing.assert_array_equal(run(name, cells, 0.0), cells)


@pytest.mark.parametrize("name", ["brightness", "saturation", "stain_shift", "stain_vectors"])
def test_strength_zero_is_identity_up_to_colour_round_trip(cells, name):
    assert diff(run(name, cells, 0.0), cells).max() <= 1.0


@pytest.mark.parametrize("name", sorted(imageops.OPS))
def test_dtype_shape_and_range_preserved(cells, name):
    out_u8 = imageops.apply(name, cells, 0.6, SEED)
    assert out_u8.dtype.name == "uint8" and tuple(out_u8.shape) == cells.shape
    out_f = imageops.apply(name, cells.astype(np.float32), 0.6, SEED).numpy()
    assert out_f.dtype == np.float32 and out_f.shape == cells.shape
    assert out_f.min() >= 0.0 and out_f.max() <= 255.0
    # float and uint8 paths agree up to the final rounding (and JPEG's own uint8 step)
    assert diff(out_f, out_u8.numpy()).mean() < 1.0
    assert diff(out_u8.numpy(), cells).mean() > 0.3, "strength 0.6 must change the image"


@pytest.mark.parametrize("name", sorted(imageops.SEEDED))
def test_seeded_ops_are_deterministic_and_seed_dependent(cells, name):
    first = run(name, cells, 0.7, seed=(3, 4))
    np.testing.assert_array_equal(first, run(name, cells, 0.7, seed=(3, 4)))
    assert not np.array_equal(first, run(name, cells, 0.7, seed=(3, 5)))


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur"])
def test_blur_keeps_a_constant_image_and_the_mean(cells, name):
    flat = np.full((2, 40, 40, 3), 137, np.uint8)
    np.testing.assert_array_equal(run(name, flat, 1.0), flat)
    blurred = run(name, cells.astype(np.float32), 0.8)
    assert abs(blurred.mean() - cells.mean()) < 0.5
    assert laplacian_energy(blurred) < 0.8 * laplacian_energy(cells)


def laplacian_energy(images: np.ndarray) -> float:
    x = images.astype(np.float64).mean(axis=-1)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


def point(size: int = 41) -> np.ndarray:
    image = np.zeros((1, size, size, 3), np.float32)
    image[0, size // 2, size // 2] = 255.0
    return image


def test_gaussian_blur_of_a_point_has_the_requested_sigma():
    out = run("gaussian_blur", point(129), 0.5)[0, :, :, 0]
    sigma = 0.5 * imageops.MAX_GAUSSIAN_SIGMA * 129 / 128
    ys = np.arange(129) - 64
    profile = out.sum(axis=1) / out.sum()
    assert np.sqrt((profile * ys**2).sum()) == pytest.approx(sigma, rel=0.05)


def test_defocus_blur_of_a_point_is_a_flat_disk():
    out = run("defocus_blur", point(128 + 1), 0.5)[0, :, :, 0]  # radius 3 px
    ys, xs = np.nonzero(out > 0)
    radius = np.hypot(ys - 64, xs - 64)
    assert radius.max() <= 3.0 + 1.0
    inner = out[np.hypot(*np.meshgrid(np.arange(129) - 64, np.arange(129) - 64)) <= 2.0]
    assert inner.max() - inner.min() < 0.5, "the disk interior is flat"


def test_motion_blur_makes_a_streak_along_the_angle():
    strength = 0.5  # 8 px streak at 128 px
    horizontal = imageops.motion_blur(point(129), strength, SEED, angle=0.0).numpy()[0, :, :, 0]
    ys, xs = np.nonzero(horizontal > 1e-3)
    assert set(ys) == {64}
    assert xs.max() - xs.min() == pytest.approx(strength * imageops.MAX_MOTION_LENGTH, abs=1.0)
    vertical = imageops.motion_blur(point(129), strength, SEED, angle=90.0).numpy()[0, :, :, 0]
    ys, xs = np.nonzero(vertical > 1e-3)
    assert set(xs) == {64} and ys.max() - ys.min() >= 7


def test_per_image_strength_matches_separate_calls(cells):
    mixed = run("gaussian_blur", cells[:2], np.array([0.0, 0.9], np.float32))
    np.testing.assert_array_equal(mixed[0], cells[0])
    np.testing.assert_array_equal(mixed[1], run("gaussian_blur", cells[1:2], 0.9)[0])
    blocks = run("pixelate", cells[:2], np.array([0.9, 0.0], np.float32))
    np.testing.assert_array_equal(blocks[1], cells[1])
    np.testing.assert_array_equal(blocks[0], run("pixelate", cells[:1], 0.9)[0])


def test_pixelate_produces_blocks_of_the_block_mean(cells):
    strength = 3.0 / (imageops.MAX_PIXEL_BLOCK - 1.0)  # blocks of 4 px at 128 px
    out = run("pixelate", cells.astype(np.float32), strength)
    blocks = out.reshape(4, 32, 4, 32, 4, 3)
    assert np.ptp(blocks, axis=(2, 4)).max() < 1e-3, "every 4x4 block is one colour"
    means = cells.astype(np.float64).reshape(4, 32, 4, 32, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(blocks[:, :, 0, :, 0], means, atol=1e-3)


def test_pixelate_fractional_blocks_grow_smoothly_at_small_sizes():
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    changes = [diff(run("pixelate", image, s), image).mean() for s in (0.05, 0.1, 0.2, 0.3)]
    assert changes[0] > 0 and all(a < b for a, b in zip(changes, changes[1:], strict=False))
    out = run("pixelate", image, 1.0 / 11.0)  # 1.5 px blocks at 64 px: widths 1 and 2 mixed
    widths = np.diff(np.flatnonzero(np.any(np.diff(out[0, :, :, 0], axis=1) != 0, axis=0)))
    assert set(widths) <= {1, 2} and 2 in set(widths)


def test_jpeg_matches_tensorflow_encoder_at_the_mapped_quality(cells):
    import tensorflow as tf

    assert int(imageops.jpeg_quality(1.0)) == imageops.MIN_JPEG_QUALITY
    assert int(imageops.jpeg_quality(0.5)) == 52
    out = run("jpeg", cells[:1], 0.5)
    expected = tf.image.adjust_jpeg_quality(cells[0], 52).numpy()
    np.testing.assert_array_equal(out[0], expected)


def test_gaussian_noise_has_the_requested_std():
    grey = np.full((2, 64, 64, 3), 128, np.float32)
    out = run("gaussian_noise", grey, 0.2)
    assert np.std(out - grey) == pytest.approx(0.2 * imageops.MAX_GAUSSIAN_STD, rel=0.03)
    assert abs(np.mean(out - grey)) < 0.5


def test_shot_noise_variance_follows_the_signal():
    strength = 0.2  # 75 photons at full scale
    photons = imageops.MIN_SHOT_PHOTONS / strength**2
    stds = []
    for level in (40.0, 160.0):
        image = np.full((2, 64, 64, 3), level, np.float32)
        out = run("shot_noise", image, strength)
        expected_std = np.sqrt(level / 255.0 * photons) / photons * 255.0
        assert np.std(out) == pytest.approx(expected_std, rel=0.05), level
        assert abs(out.mean() - level) < 1.0
        stds.append(np.std(out))
    assert stds[1] / stds[0] == pytest.approx(2.0, rel=0.05), "std grows as sqrt(signal)"


def test_impulse_noise_hits_the_requested_fraction_with_extremes(cells):
    out = run("impulse_noise", cells, 0.5)
    changed = out != cells
    assert changed.mean() == pytest.approx(0.5 * imageops.MAX_IMPULSE_FRACTION, abs=0.01)
    assert set(np.unique(out[changed])) <= {0, 255}


def test_brightness_contrast_saturation_directions(cells):
    c = cells.astype(np.float64)
    assert run("brightness", cells, 0.3).mean() > c.mean() + 10
    assert run("brightness", cells, -0.3).mean() < c.mean() - 10
    grey = np.random.default_rng(1).uniform(96, 160, (2, 32, 32, 3)).astype(np.float32)
    low = run("contrast", grey, -0.5)
    assert np.std(low) == pytest.approx(0.5 * np.std(grey), rel=1e-3)
    assert np.std(run("contrast", grey, 0.25)) == pytest.approx(1.5 * np.std(grey), rel=1e-3)
    flat = run("saturation", cells.astype(np.float32), -1.0)
    assert np.ptp(flat, axis=-1).max() < 1e-3, "saturation -1 is grey"
    assert saturation_of(run("saturation", cells, 0.5)) > saturation_of(cells)


def saturation_of(images: np.ndarray) -> float:
    x = images.astype(np.float64)
    high, low = x.max(axis=-1), x.min(axis=-1)
    return float(np.mean(np.where(high > 0, (high - low) / np.maximum(high, 1e-9), 0.0)))


def test_hed_round_trip_is_close_to_identity(cells):
    hed = imageops.rgb_to_hed(cells)
    back = imageops.hed_to_rgb(hed).numpy()
    assert diff(back, np.maximum(cells, 1)).max() < 0.05


def test_hed_separates_pure_stains():
    import tensorflow as tf

    concentrations = np.zeros((1, 1, 3, 3), np.float32)
    concentrations[0, 0, 0, 0] = 0.8  # haematoxylin only
    concentrations[0, 0, 1, 1] = 0.5  # eosin only
    concentrations[0, 0, 2, 2] = 0.3  # DAB only
    rgb = imageops.hed_to_rgb(tf.constant(concentrations))
    recovered = imageops.rgb_to_hed(rgb).numpy()
    np.testing.assert_allclose(recovered, concentrations, atol=1e-4)


def test_stain_shift_changes_colour_not_structure(cells):
    out = run("stain_shift", cells, 0.6)
    colour_change = diff(out.mean(axis=(1, 2)), cells.mean(axis=(1, 2))).mean()
    assert colour_change > 5
    # structure stays: the shifted image still correlates with the original per channel
    for i in range(len(cells)):
        corr = np.corrcoef(out[i].mean(axis=-1).ravel(), cells[i].mean(axis=-1).ravel())[0, 1]
        assert corr > 0.8


def test_deposits_are_dark_purple_and_grow_with_strength(cells):
    weak, strong = run("stain_deposits", cells, 0.3), run("stain_deposits", cells, 1.0)
    changed_weak = diff(weak, cells).max(axis=-1) > 10
    changed = diff(strong, cells).max(axis=-1) > 10
    assert changed.mean() > changed_weak.mean() > 0
    assert np.all(changed_weak <= changed), "weak deposits are part of the strong ones"
    pixels = strong[changed].astype(np.float64)
    assert pixels[:, 2].mean() > pixels[:, 1].mean(), "blue above green: purple-blue"
    assert pixels.mean() < cells[changed].astype(np.float64).mean(), "deposits darken"


def test_bubbles_have_a_dark_rim_and_a_lighter_interior():
    grey = np.full((4, 128, 128, 3), 150, np.float32)
    out = run("bubbles", grey, 1.0)
    assert out.min() < 100, "a dark rim"
    assert (out > 180).mean() > 0.05, "a lightened interior and bright ring"
    small = (diff(run("bubbles", grey, 0.2), grey).max(axis=-1) > 5).mean()
    assert (diff(out, grey).max(axis=-1) > 5).mean() > small > 0


def test_dust_adds_dark_specks(cells):
    few, many = run("dust", cells, 0.3), run("dust", cells, 1.0)
    darker_few = (cells.astype(np.float64) - few).max(axis=-1) > 10
    darker_many = (cells.astype(np.float64) - many).max(axis=-1) > 10
    assert darker_many.mean() > darker_few.mean() > 0
    changed = diff(many, cells).max(axis=-1) > 10
    assert (cells[changed].astype(np.float64) - many[changed]).mean() > 20, "dust darkens"


def test_ops_run_inside_tf_data_with_random_per_image_strengths(cells):
    import tensorflow as tf

    def augment(batch, index):
        seed = tf.stack([tf.cast(index, tf.int64), tf.constant(5, tf.int64)])
        strength = tf.random.stateless_uniform(tf.shape(batch)[:1], seed)
        out = imageops.stain_shift(batch, strength, seed)
        out = imageops.defocus_blur(out, strength)
        return imageops.bubbles(out, strength, seed)

    data = tf.data.Dataset.from_tensor_slices(cells).batch(2).enumerate()
    data = data.map(lambda i, b: augment(b, i))
    first = np.concatenate([b.numpy() for b in data])
    second = np.concatenate([b.numpy() for b in data])
    assert first.shape == cells.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    assert diff(first, cells).mean() > 1.0


def test_bad_inputs_are_clear_errors(cells):
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        imageops.gaussian_blur(cells[0], 0.5)
    with pytest.raises(ValueError, match="uint8 or float32"):
        imageops.gaussian_blur(cells.astype(np.int32), 0.5)
    with pytest.raises(ValueError, match="pair of integers"):
        imageops.gaussian_noise(cells, 0.5, seed=(1, 2, 3))
    with pytest.raises(ValueError, match="one value per image"):
        imageops.contrast(cells, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="unknown image op 'sharpen'.*bubbles"):
        imageops.apply("sharpen", cells, 0.5)
