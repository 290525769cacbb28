"""The corruption suite: every corruption at every severity, on real pbc128 cells."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaflow.imaging.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corruption_grid,
    corruption_names,
)
from tests.helpers import pbc_cells

SUITE = [
    "gaussian_blur",
    "motion_blur",
    "defocus_blur",
    "jpeg",
    "pixelate",
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "brightness",
    "contrast",
    "saturation",
    "stain_shift",
    "stain_deposits",
    "bubbles",
]


@pytest.fixture(scope="module")
def cells(pbc128_root: Path) -> np.ndarray:
    """Four real 128 px cells of different classes, uint8 [4, 128, 128, 3]."""
    return pbc_cells(pbc128_root, ["eosinophil", "monocyte", "platelet", "ig"], 1)


@pytest.fixture(scope="module")
def suite(cells) -> dict[str, list[np.ndarray]]:
    """Every corruption at severities 1-5 of the same cells, computed once."""
    return {name: [corrupt(cells, name, s, seed=3) for s in SEVERITIES] for name in SUITE}


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


def mean_abs_diff(clean: np.ndarray, out: np.ndarray) -> float:
    return float(np.abs(_f(out) - _f(clean)).mean())


def changed_fraction(clean: np.ndarray, out: np.ndarray) -> float:
    """Fraction of pixels with a channel changed by more than 10 levels."""
    return float((np.abs(_f(out) - _f(clean)).max(axis=-1) > 10).mean())


def changed_values(clean: np.ndarray, out: np.ndarray) -> float:
    return float((out != clean).mean())


def sharpness_loss(clean: np.ndarray, out: np.ndarray) -> float:
    """Relative loss of high-frequency (Laplacian) energy."""

    def energy(x: np.ndarray) -> float:
        g = _f(x).mean(axis=-1)
        lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1]
        lap = lap - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
        return float(np.abs(lap).mean())

    return 1.0 - energy(out) / energy(clean)


def brightness_gain(clean: np.ndarray, out: np.ndarray) -> float:
    return float(_f(out).mean() - _f(clean).mean())


def contrast_loss(clean: np.ndarray, out: np.ndarray) -> float:
    return float(1.0 - _f(out).std(axis=(1, 2, 3)).mean() / _f(clean).std(axis=(1, 2, 3)).mean())


def saturation_loss(clean: np.ndarray, out: np.ndarray) -> float:
    def saturation(x: np.ndarray) -> float:
        high, low = _f(x).max(axis=-1), _f(x).min(axis=-1)
        return float(np.mean((high - low) / np.maximum(high, 1.0)))

    return 1.0 - saturation(out) / saturation(clean)


def stain_colour_shift(clean: np.ndarray, out: np.ndarray) -> float:
    """Mean distance between per-image mean optical densities (colour, not structure)."""

    def mean_od(x: np.ndarray) -> np.ndarray:
        return (-np.log(np.maximum(_f(x), 1.0) / 255.0)).mean(axis=(1, 2))

    return float(np.linalg.norm(mean_od(out) - mean_od(clean), axis=-1).mean())


MEASURES: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], float]] = {
    # name: (measure that must rise strictly with severity, least value at severity 1)
    "gaussian_blur": (sharpness_loss, 0.1),
    "motion_blur": (sharpness_loss, 0.1),
    "defocus_blur": (sharpness_loss, 0.1),
    "jpeg": (mean_abs_diff, 1.0),
    "pixelate": (mean_abs_diff, 1.0),
    "gaussian_noise": (mean_abs_diff, 3.0),
    "shot_noise": (mean_abs_diff, 3.0),
    "impulse_noise": (changed_values, 0.005),
    "brightness": (brightness_gain, 3.0),
    "contrast": (contrast_loss, 0.1),
    "saturation": (saturation_loss, 0.1),
    "stain_shift": (stain_colour_shift, 0.02),
    "stain_deposits": (changed_fraction, 0.002),
    "bubbles": (changed_fraction, 0.01),
}


def test_suite_is_complete_and_tabulated():
    assert list(CORRUPTIONS) == SUITE
    assert set(MEASURES) == set(SUITE)
    for name, corruption in CORRUPTIONS.items():
        assert corruption.name == name and len(corruption.values) == 5
        strengths = [abs(corruption.strength(s)) for s in SEVERITIES]
        assert all(0 < a < b <= 1.0 for a, b in zip(strengths, strengths[1:], strict=False)), name


@pytest.mark.parametrize("name", SUITE)
def test_every_severity_keeps_dtype_and_shape_and_is_deterministic(cells, suite, name):
    for severity, out in zip(SEVERITIES, suite[name], strict=True):
        assert out.dtype == np.uint8 and out.shape == cells.shape, (name, severity)
    np.testing.assert_array_equal(corrupt(cells, name, 3, seed=3), suite[name][2])


@pytest.mark.parametrize("name", SUITE)
def test_corruption_grows_strictly_with_severity(cells, suite, name):
    measure, least = MEASURES[name]
    values = [measure(cells, out) for out in suite[name]]
    assert values[0] >= least, f"{name} severity 1 barely changes the image: {values}"
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), f"{name}: {values}"


@pytest.mark.parametrize(
    "name", ["motion_blur", "gaussian_noise", "impulse_noise", "stain_shift", "bubbles"]
)
def test_random_corruptions_depend_on_the_seed(cells, suite, name):
    assert not np.array_equal(corrupt(cells, name, 3, seed=4), suite[name][2])


def resized(cells: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf

    small = tf.image.resize(cells, (size, size), antialias=True)
    return np.clip(np.round(small.numpy()), 0, 255).astype(np.uint8)


def test_every_corruption_grows_with_severity_at_64_px(cells):
    small = resized(cells[:2], 64)
    for name in SUITE:
        outs = [corrupt(small, name, s, seed=1) for s in SEVERITIES]
        assert all(o.shape == small.shape and o.dtype == np.uint8 for o in outs), name
        change = [mean_abs_diff(small, o) for o in outs]
        assert change[0] > 0.2 and all(a < b for a, b in zip(change, change[1:], strict=False)), (
            name,
            change,
        )


def test_every_corruption_works_at_96_px(cells):
    small = resized(cells[:2], 96)
    for name in SUITE:
        mild, heavy = corrupt(small, name, 1, seed=1), corrupt(small, name, 5, seed=1)
        assert heavy.shape == small.shape and heavy.dtype == np.uint8, name
        assert 0.2 < mean_abs_diff(small, mild) < mean_abs_diff(small, heavy), name


def test_tensor_input_gives_a_tensor_and_runs_in_tf_data(cells):
    import tensorflow as tf

    out = corrupt(tf.constant(cells), "defocus_blur", 2, seed=3)
    assert isinstance(out, tf.Tensor) and out.dtype == tf.uint8
    np.testing.assert_array_equal(out.numpy(), corrupt(cells, "defocus_blur", 2, seed=3))
    data = tf.data.Dataset.from_tensor_slices(cells).batch(4)
    mapped = data.map(lambda batch: corrupt(batch, "stain_deposits", 4, seed=3))
    np.testing.assert_array_equal(
        next(iter(mapped)).numpy(), corrupt(cells, "stain_deposits", 4, 3)
    )


def test_corruption_names_expand_and_validate():
    assert corruption_names(["all"]) == SUITE
    assert corruption_names("all") == SUITE
    assert corruption_names(["jpeg", "bubbles", "jpeg"]) == ["jpeg", "bubbles"]
    assert corruption_names(["bubbles", "all"])[0] == "bubbles"
    with pytest.raises(ValueError, match="unknown corruption 'fog'.*all, gaussian_blur.*bubbles"):
        corruption_names(["jpeg", "fog"])
    with pytest.raises(ValueError, match="no corruptions selected"):
        corruption_names([])


def suite_table(names: list[str] | None = None) -> list[dict]:
    """The suite as table rows (name, family, parameter, s1..s5)."""
    rows = []
    for name in corruption_names(names or ["all"]):
        c = CORRUPTIONS[name]
        row = {"corruption": name, "family": c.family, "parameter": c.parameter}
        rows.append(row | {f"s{s}": c.values[s - 1] for s in SEVERITIES})
    return rows


def test_suite_table_lists_parameters_per_severity():
    rows = suite_table(["jpeg", "bubbles"])
    assert [r["corruption"] for r in rows] == ["jpeg", "bubbles"]
    assert rows[0]["parameter"] == "JPEG quality" and rows[0]["family"] == "digital"
    assert [rows[0][f"s{s}"] for s in SEVERITIES] == list(CORRUPTIONS["jpeg"].values)
    assert len(suite_table()) == len(SUITE)


def test_bad_arguments_are_clear_errors(cells):
    with pytest.raises(ValueError, match="unknown corruption 'snow'.*gaussian_blur"):
        corrupt(cells, "snow", 1)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity must be an integer 1-5"):
            corrupt(cells, "jpeg", severity)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(cells.astype(np.float32), "jpeg", 1)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        corrupt(cells[0], "jpeg", 1)
    with pytest.raises(ValueError, match="severity"):
        CORRUPTIONS["jpeg"].strength(7)


def test_empty_batch_passes_through():
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    assert corrupt(empty, "bubbles", 3).shape == (0, 32, 32, 3)


def test_grid_shows_every_corruption_at_every_severity(cells):
    png = corruption_grid(cells[0], names=["jpeg", "bubbles"])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    three_rows = Image.open(
        io.BytesIO(corruption_grid(cells[0], names=["jpeg", "bubbles", "contrast"]))
    )
    assert three_rows.height > image.height * 1.3, "one row per corruption"
    assert three_rows.width == pytest.approx(image.width, abs=4), "one column per severity"
    with pytest.raises(ValueError, match="uint8"):
        corruption_grid(cells[:1])
