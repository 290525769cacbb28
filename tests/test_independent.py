"""The independent corruption benchmark: table, determinism, severities, errors, summaries."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.config import SEVERITIES, ConfigError, load_config
from hemaflow.imaging import independent
from hemaflow.imaging.independent import INDEPENDENT
from tests.helpers import load_pbc_arrays

FAMILIES = {"noise", "blur", "digital", "artifact", "stain", "photometric"}


@pytest.fixture(scope="module")
def cells96(pbc128_root) -> np.ndarray:
    return load_pbc_arrays(pbc128_root, 2, size=96)[0]


@pytest.fixture(scope="module")
def cells128(pbc128_root) -> np.ndarray:
    return load_pbc_arrays(pbc128_root, 1, size=128)[0]


def damage(images: np.ndarray, name: str, severity: int) -> float:
    out = independent.corrupt(images, name, severity, seed=3)
    return float(np.abs(out.astype(np.float64) - images).mean())


def test_table_covers_the_families_and_names_training_kinds():
    from hemaflow.imaging.policy import FAMILIES as POLICY_FAMILIES

    assert 14 <= len(INDEPENDENT) <= 20
    assert {c.family for c in INDEPENDENT.values()} == FAMILIES
    for name, spec in INDEPENDENT.items():
        assert spec.name == name and len(spec.values) == len(SEVERITIES)
        assert spec.trained_kind is None or spec.trained_kind in POLICY_FAMILIES, name
        assert spec.parameter and spec.transform
    assert any(c.trained_kind is None for c in INDEPENDENT.values())
    assert independent.families(["jpeg", "hue_shift"]) == {"jpeg": "digital", "hue_shift": "stain"}


@pytest.mark.parametrize("size", [32, 96, 128])
def test_shape_and_dtype_at_any_size(size):
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    for name in INDEPENDENT:
        out = independent.corrupt(images, name, 5, seed=1)
        assert out.shape == images.shape and out.dtype == np.uint8, name
    assert independent.corrupt(images[:0], "jpeg", 1).shape == (0, size, size, 3)


def test_deterministic_per_images_name_severity_and_seed(cells96):
    images = cells96[:6]
    for name in INDEPENDENT:
        first = independent.corrupt(images, name, 3, seed=7)
        independent.corrupt(images[::-1].copy(), name, 3, seed=99)  # draws in between
        again = independent.corrupt(images, name, 3, seed=7)
        np.testing.assert_array_equal(first, again, err_msg=name)
    # The random types really draw from the seed.
    for name in ("gauss_noise", "iso_noise", "salt_pepper", "spatter_mud", "motion_blur"):
        a = independent.corrupt(images, name, 3, seed=7)
        b = independent.corrupt(images, name, 3, seed=8)
        assert not np.array_equal(a, b), name


def test_random_parts_are_shared_across_severities(cells96):
    images = cells96[:4].astype(np.float64)
    for name in ("gauss_noise", "spatter_mud"):
        low = independent.corrupt(cells96[:4], name, 2, seed=5) - images
        high = independent.corrupt(cells96[:4], name, 5, seed=5) - images
        other = independent.corrupt(cells96[:4], name, 5, seed=6) - images
        same = np.corrcoef(low.ravel(), high.ravel())[0, 1]
        fresh = np.corrcoef(low.ravel(), other.ravel())[0, 1]
        assert same > 0.8 and same > fresh + 0.2, (name, same, fresh)


@pytest.mark.parametrize("fixture", ["cells96", "cells128"])
def test_damage_grows_with_severity_for_every_type(fixture, request):
    images = request.getfixturevalue(fixture)
    for name in INDEPENDENT:
        d = [damage(images, name, s) for s in SEVERITIES]
        assert d[0] > 0.1, (name, d)
        assert all(b > a for a, b in zip(d, d[1:], strict=False)), (name, np.round(d, 3))


def test_heavy_but_recognisable(cells96):
    # Severity 5 changes the image a lot, but never beyond recognition (the mean pixel moves
    # by less than 40% of the range) for any type.
    for name in INDEPENDENT:
        assert damage(cells96, name, 5) < 0.4 * 255, name


def test_unknown_names_and_severities_are_config_errors(cells96):
    with pytest.raises(ConfigError, match="unknown independent corruption 'fog'.*known: all"):
        independent.names(["fog"])
    with pytest.raises(ConfigError, match="unknown independent corruption"):
        independent.corrupt(cells96, "gaussian_noise", 1)  # the own suite's name
    for severity in (0, 6, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="severity must be an integer 1-5"):
            independent.corrupt(cells96, "jpeg", severity)
    with pytest.raises(ValueError, match="uint8"):
        independent.corrupt(cells96.astype(np.float32), "jpeg", 1)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        independent.corrupt(cells96[0], "jpeg", 1)


def test_names_selection():
    assert independent.names(["all"]) == list(INDEPENDENT)
    assert independent.names("all") == list(INDEPENDENT)
    assert independent.names([]) == []
    assert independent.names(["jpeg", "all"])[0] == "jpeg"
    assert len(independent.names(["jpeg", "all"])) == len(INDEPENDENT)


def test_config_key_is_validated():
    assert load_config("cpu").evaluate.independent == ["all"]
    assert (
        load_config("quickstart", overrides={"evaluate.independent": []}).evaluate.independent == []
    )
    for bad in ("all", ["Not A Name"], ["jpeg", "jpeg"], [3]):
        with pytest.raises(ConfigError, match="evaluate.independent"):
            load_config("quickstart", overrides={"evaluate.independent": bad})


def test_grid_is_a_png(cells96):
    png = independent.grid(cells96[0], ["jpeg", "hue_shift"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="uint8"):
        independent.grid(cells96[0].astype(np.float32))


def test_grouped_summary_per_family_and_severity():
    from hemaflow.modeling import metrics

    def row(acc: float) -> dict[str, float]:
        return {"accuracy": acc, "balanced_accuracy": acc - 0.1}

    corrupted = {
        "a": {1: row(0.9), 5: row(0.5)},
        "b": {1: row(0.8), 5: row(0.4)},
        "c": {1: row(0.7), 5: row(0.7)},
    }
    out = metrics.grouped_summary(corrupted, {"a": "noise", "b": "noise", "c": "blur"})
    assert out["per_family"]["noise"]["accuracy"] == pytest.approx(0.65)
    assert out["per_family"]["noise"]["corruptions"] == ["a", "b"]
    assert out["per_family"]["blur"]["balanced_accuracy"] == pytest.approx(0.6)
    assert out["by_severity"]["5"]["accuracy"] == pytest.approx(1.6 / 3)
    assert out["severity5_accuracy"] == out["by_severity"]["5"]["accuracy"]
    assert (out["worst_family"], out["worst_family_accuracy"]) == ("noise", pytest.approx(0.65))
    only_mild = metrics.grouped_summary({"a": {1: row(0.9)}}, {"a": "noise"})
    assert only_mild["severity5_accuracy"] is None
    with pytest.raises(ValueError, match="no family for c"):
        metrics.grouped_summary(corrupted, {"a": "noise", "b": "noise"})
    full = metrics.robustness_summary(0.9, corrupted, {"a": "x", "b": "x", "c": "y"})
    assert full["worst_family"] == "x" and "per_family" in full
    assert "per_family" not in metrics.robustness_summary(0.9, corrupted)


def test_run_page_and_cli_show_the_independent_headline():
    from hemaflow.pipeline.commands.evaluate import independent_summary

    from hemaflow.reporting import runpage

    metrics = {
        "accuracy": 0.9,
        "corrupted_accuracy": 0.8,
        "independent_accuracy": 0.612,
        "independent_worst_family": "stain",
        "independent_worst_family_accuracy": 0.301,
        "independent_severity5_accuracy": 0.45,
    }
    html = runpage.render(runpage.RunPage("run", "succeeded", [], metrics=metrics))
    assert "independent accuracy" in html and "0.612" in html
    assert "independent worst family accuracy (stain)" in html and "0.301" in html
    assert "independent severity5 accuracy" in html and "0.450" in html
    line = independent_summary(metrics)
    assert line == "accuracy 0.6120, severity 5 0.4500, worst family stain 0.3010"
    assert independent_summary({"independent_accuracy": None}) == "off"
