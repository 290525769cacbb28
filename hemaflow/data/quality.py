"""Data-quality checks of ingest, as pure functions over uint8 image arrays.

- exact duplicates: identical decoded pixels at the working size (a SHA-1 of the pixel bytes;
  byte-identical files always decode to identical pixels, so they are found too);
- near duplicates: a 64-bit DCT perceptual hash (pHash) per image and groups of images whose
  hashes differ in at most ``near_duplicate_distance`` bits and whose mean colours agree
  (re-encoded, resized, slightly shifted copies);
- label conflicts: duplicate groups (exact or near) whose members carry different labels;
- outliers: images that are not blood-smear pictures at all (cartoons, text, noise, flat
  colour). Each image gets colour and texture features; each feature is turned into a robust
  z-score with the data set's median and MAD, and an image is an outlier when its largest
  |z| exceeds ``outlier_threshold``. The statistics come from the data itself, so a few
  percent of strange images cannot move them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# (name, floor of its robust scale): the floor keeps a feature that barely varies in real
# smears (e.g. the share of pure black pixels) from turning tiny differences into huge scores.
OUTLIER_FEATURES: tuple[tuple[str, float], ...] = (
    ("border_red", 4.0),
    ("border_green", 4.0),
    ("border_blue", 4.0),
    ("green_excess", 2.0),
    ("border_roughness", 0.6),
    ("edge_energy", 0.4),
    ("contrast", 3.0),
    ("saturation", 0.02),
    ("extreme_pixels", 0.02),
    ("off_palette", 0.02),
)


@dataclass
class Findings:
    """What the checks found; indices refer to the arrays that were checked."""

    exact_groups: list[list[int]] = field(default_factory=list)
    near_groups: list[list[int]] = field(default_factory=list)  # beyond exact copies
    conflicts: list[list[int]] = field(default_factory=list)
    outliers: list[int] = field(default_factory=list)
    outlier_scores: np.ndarray | None = None
    outlier_reasons: dict[int, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- duplicates


def pixel_hashes(images: np.ndarray) -> list[str]:
    """A SHA-1 per image of its decoded pixels (shape included)."""
    return [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def exact_duplicate_groups(images: np.ndarray) -> list[list[int]]:
    """Groups (size >= 2, sorted indices) of images with identical pixels."""
    by_hash: dict[str, list[int]] = {}
    for i, digest in enumerate(pixel_hashes(images)):
        by_hash.setdefault(digest, []).append(i)
    return sorted(g for g in by_hash.values() if len(g) > 1)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)


def block_mean(images: np.ndarray, k: int) -> np.ndarray:
    """Float32 means of k x k pixel blocks (k*k strided adds: far faster than a reshaped mean)."""
    if k == 1:
        return images.astype(np.float32)
    side = images.shape[1] // k
    out = np.zeros((len(images), side, side, *images.shape[3:]), dtype=np.float32)
    for i in range(k):
        for j in range(k):
            out += images[:, i : side * k : k, j : side * k : k]
    return out / np.float32(k * k)


def _grey_at(images: np.ndarray, side: int) -> np.ndarray:
    """Greyscale images resized to ``side`` (block means when the size divides, else Lanczos)."""
    size = images.shape[1]
    if size % side == 0:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return block_mean(images, size // side) @ weights
    from PIL import Image

    out = np.empty((len(images), side, side), dtype=np.float32)
    for i, image in enumerate(images):
        small = Image.fromarray(image).convert("L").resize((side, side), Image.Resampling.LANCZOS)
        out[i] = np.asarray(small, dtype=np.float32)
    return out


def perceptual_hashes(images: np.ndarray, hash_size: int = 8, highfreq: int = 4) -> np.ndarray:
    """DCT pHash (as in imagehash.phash) for a batch: one uint64 per image.

    Grey 32 x 32 (antialiased resize), 2-D DCT, the top-left 8 x 8 coefficients, each bit
    set where the coefficient is above their median.
    """
    side = hash_size * highfreq
    grey = _grey_at(images, side).astype(np.float64)
    dct = _dct_matrix(side)
    coefficients = dct @ grey @ dct.T
    low = coefficients[:, :hash_size, :hash_size].reshape(len(images), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    weights = np.left_shift(np.uint64(1), np.arange(hash_size * hash_size, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> np.ndarray:
    """Index pairs (i < j) whose hashes differ in at most ``max_distance`` bits; M x 2."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def same_colour(images: np.ndarray, pairs: np.ndarray, tolerance: float = 12.0) -> np.ndarray:
    """The pairs whose mean colours differ by at most ``tolerance`` per channel.

    pHash sees only grey structure: two flat or nearly flat pictures of different colours get
    the same hash. A real copy (re-encoded, resized) keeps its mean colour.
    """
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    close = np.abs(means[pairs[:, 0]] - means[pairs[:, 1]]).max(axis=1) <= tolerance
    return pairs[close]


def connected_groups(count: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the graph with ``pairs`` as edges (union-find)."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


def label_conflicts(groups: list[list[int]], labels: np.ndarray) -> list[list[int]]:
    """The groups whose members carry more than one label."""
    return [g for g in groups if len({int(labels[i]) for i in g}) > 1]


# --------------------------------------------------------------------------- outliers


def outlier_features(images: np.ndarray, chunk: int = 512) -> np.ndarray:
    """N x F colour and texture features (columns as in :data:`OUTLIER_FEATURES`).

    Blood smears have a smooth pink-grey background, a pink/violet palette with green never
    the dominant channel, moderate contrast and JPEG-smooth texture; cartoons, text, photos,
    noise and flat fills each break at least one of these. Computed at <= 64 px (block means),
    so the cost and the texture scale hardly depend on the working size.
    """
    return np.concatenate([_features(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def _features(images: np.ndarray) -> np.ndarray:
    n, k = len(images), max(1, images.shape[1] // 64)
    x = block_mean(images, k)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    size = x.shape[1]
    w = max(2, size // 16)
    border = np.concatenate(
        [
            x[:, :w].reshape(n, -1, 3),
            x[:, -w:].reshape(n, -1, 3),
            x[:, :, :w].reshape(n, -1, 3),
            x[:, :, -w:].reshape(n, -1, 3),
        ],
        axis=1,
    )
    border_median = np.median(border, axis=1)
    grey = (r + g + b) / 3
    dy = np.abs(np.diff(grey, axis=1))
    dx = np.abs(np.diff(grey, axis=2))
    border_grey = border.sum(axis=-1) / 3
    roughness = np.log1p(np.abs(np.diff(border_grey, axis=1)).mean(axis=1))
    edge_energy = np.log1p(0.5 * (_mean(dy) + _mean(dx)))
    high = np.maximum(np.maximum(r, g), b)  # not .max(-1): slow over a 3-wide axis
    low = np.minimum(np.minimum(r, g), b)
    saturation = _mean((high - low) / np.maximum(high, 1.0))
    extreme = _mean((high < 25) | (low > 250))
    off_palette = _mean((g > np.maximum(r, b) + 8) | (b < np.minimum(r, g) - 60))
    return np.stack(
        [
            border_median[:, 0],
            border_median[:, 1],
            border_median[:, 2],
            _mean(g - 0.5 * (r + b)),
            roughness,
            edge_energy,
            grey.reshape(n, -1).std(axis=1),
            saturation,
            extreme,
            off_palette,
        ],
        axis=1,
    )


def _mean(values: np.ndarray) -> np.ndarray:
    return values.reshape(len(values), -1).mean(axis=1, dtype=np.float32)


def robust_z(features: np.ndarray, floors: np.ndarray) -> np.ndarray:
    """(x - median) / max(1.4826 * MAD, floor), per feature column."""
    median = np.median(features, axis=0)
    mad = np.median(np.abs(features - median), axis=0) * 1.4826
    return (features - median) / np.maximum(mad, floors)


def outlier_scores(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the largest robust |z| over the features, and which feature gave it."""
    floors = np.array([f for _, f in OUTLIER_FEATURES], dtype=np.float32)
    z = np.abs(robust_z(outlier_features(images), floors))
    return z.max(axis=1), z.argmax(axis=1)


# --------------------------------------------------------------------------- all together


def analyse(
    images: np.ndarray, labels: np.ndarray, near_distance: int, outlier_threshold: float
) -> Findings:
    """Run every check on a data set (images N x S x S x 3 uint8, labels N)."""
    exact = exact_duplicate_groups(images)
    pairs = near_duplicate_pairs(perceptual_hashes(images), near_distance)
    connected = connected_groups(len(images), same_colour(images, pairs))
    exact_sets = {frozenset(g) for g in exact}
    near = [g for g in connected if frozenset(g) not in exact_sets]
    conflicts = label_conflicts(connected, labels)  # every exact group lies inside one
    scores, which = outlier_scores(images)
    outliers = [int(i) for i in np.flatnonzero(scores > outlier_threshold)]
    reasons = {
        i: f"{OUTLIER_FEATURES[which[i]][0]} is {scores[i]:.1f} robust SDs from the data set"
        for i in outliers
    }
    return Findings(exact, near, conflicts, outliers, scores, reasons)
