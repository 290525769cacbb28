"""Duplicate, near-duplicate, label-conflict and outlier checks on real pbc128 images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hemaflow.data import quality
from hemaflow.data.sources import read_folder


def non_cell_images(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Pictures that are not blood smears, of the kinds mixed into the original challenge."""
    rng = np.random.default_rng(seed)
    s = size
    cartoon = Image.new("RGB", (s, s), (90, 160, 230))
    draw = ImageDraw.Draw(cartoon)
    line = max(1, s // 32)
    draw.ellipse((s * 0.2, s * 0.2, s * 0.8, s * 0.8), fill=(250, 220, 40), outline=0, width=line)
    draw.ellipse((s * 0.35, s * 0.38, s * 0.42, s * 0.45), fill=(0, 0, 0))
    draw.ellipse((s * 0.58, s * 0.38, s * 0.65, s * 0.45), fill=(0, 0, 0))
    draw.arc((s * 0.33, s * 0.4, s * 0.67, s * 0.7), 20, 160, fill=(0, 0, 0), width=line)
    meme = Image.new("RGB", (s, s), (255, 255, 255))
    draw = ImageDraw.Draw(meme)
    for row in range(6):
        draw.text((2, 2 + row * s // 6), "WHEN THE CODE", fill=(0, 0, 0))
    rows = np.linspace(0, 1, s)[:, None, None]
    sky = np.array([120, 180, 230]) - 40 * rows * np.array([0, 0, 1])
    ground = np.array([60, 140, 50]) + 0 * rows
    photo = np.where(rows < 0.55, sky, ground) * np.ones((1, s, 1)) + rng.normal(0, 6, (s, s, 3))
    return {
        "cartoon": np.asarray(cartoon),
        "meme": np.asarray(meme),
        "noise": rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
        "flat": np.full((s, s, 3), (40, 160, 60), np.uint8),
        "photo": np.clip(photo, 0, 255).astype(np.uint8),
        "flat_pink": np.full((s, s, 3), (230, 200, 205), np.uint8),
    }


def reencode_jpeg(image: np.ndarray, quality_level: int = 70) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality_level)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def real(pbc_sample):
    loaded = read_folder(pbc_sample, 64)
    return loaded.images, loaded.labels


def test_clean_sample_has_no_findings(real):
    images, labels = real
    findings = quality.analyse(images, labels, near_distance=4, outlier_threshold=6.0)
    assert findings.exact_groups == [] and findings.near_groups == []
    assert findings.conflicts == [] and findings.outliers == []


def test_injected_duplicates_conflict_and_non_cells_are_found_exactly(real):
    images, labels = real
    n = len(images)
    extra = non_cell_images(64)
    injected = np.concatenate(
        [
            images,
            images[[3, 50]],  # n, n+1: exact copies, same labels
            reencode_jpeg(images[100])[None],  # n+2: near copy of 100
            images[[7]],  # n+3: exact copy of 7, given another label below
            np.stack(list(extra.values())),  # n+4 ...: not blood cells
        ]
    )
    new_labels = np.concatenate(
        [labels, labels[[3, 50, 100]], [(labels[7] + 1) % 8], np.zeros(len(extra), np.int64)]
    )
    findings = quality.analyse(injected, new_labels, near_distance=4, outlier_threshold=6.0)
    assert findings.exact_groups == [[3, n], [7, n + 3], [50, n + 1]]
    assert findings.near_groups == [[100, n + 2]]
    assert findings.conflicts == [[7, n + 3]]
    assert findings.outliers == list(range(n + 4, n + 4 + len(extra)))
    assert all("robust SDs" in findings.outlier_reasons[i] for i in findings.outliers)


def test_perceptual_hash_agrees_with_imagehash(real):
    """Our batched numpy pHash is the standard DCT pHash (imagehash's), up to resize details."""
    import imagehash

    images = real[0][:24]
    ours = quality.perceptual_hashes(images)
    for image, value in zip(images, ours, strict=True):
        reference = imagehash.phash(Image.fromarray(image)).hash.ravel()
        bits = np.array([(int(value) >> k) & 1 for k in range(64)], dtype=bool)
        assert np.count_nonzero(bits != reference) <= 10


def test_near_duplicate_distance_separates_copies_from_other_cells(real):
    images = real[0]
    hashes = quality.perceptual_hashes(
        np.concatenate([images[:40], reencode_jpeg(images[5])[None]])
    )
    copy_distance = int(np.bitwise_count(hashes[5] ^ hashes[40]))
    others = np.bitwise_count(hashes[:40, None] ^ hashes[None, :40])[np.triu_indices(40, 1)]
    assert copy_distance <= 4 < int(others.min())


def test_connected_groups_are_transitive():
    pairs = np.array([[0, 2], [2, 5], [3, 4]])
    assert quality.connected_groups(6, pairs) == [[0, 2, 5], [3, 4]]
    assert quality.connected_groups(3, np.empty((0, 2), int)) == []


def test_label_conflicts_need_two_labels():
    groups = [[0, 1], [2, 3]]
    assert quality.label_conflicts(groups, np.array([1, 1, 2, 5])) == [[2, 3]]


def test_outlier_scale_does_not_depend_on_image_size(real):
    """Features are computed at <= 64 px, so 128 px images score like their 64 px versions."""
    images = real[0][:64]
    big = images.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(
        quality.outlier_features(big), quality.outlier_features(images), rtol=1e-4, atol=1e-3
    )


def test_outliers_are_found_when_one_image_in_nine_is_not_a_cell(real):
    """The original challenge mixed ~1,800 memes into ~15,000 cells; robust statistics hold."""
    images, _ = real
    planted = np.concatenate(
        [np.stack(list(non_cell_images(64, seed).values())) for seed in range(5)]
    )
    scores, _ = quality.outlier_scores(np.concatenate([images, planted]))
    assert np.all(scores[len(images) :] > 6.0)
    assert np.all(scores[: len(images)] <= 6.0)
