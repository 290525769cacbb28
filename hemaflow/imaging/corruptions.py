"""The evaluation corruption suite: 14 corruptions of microscope images at severities 1-5.

In the spirit of ImageNet-C and MedMNIST-C: severity 1 is a mild, realistic degradation,
severity 5 heavy but with the cell still recognisable to a person. Each corruption is one op of
``hemaflow.imaging.ops`` at a fixed strength per severity; the table below gives each severity's
parameter in the op's own physical units (pixels are pixels of a 128-pixel image and scale with
the image size), so the suite reads like a specification.

For a given seed the random parts (noise fields, blob shapes, bubble places, blur directions)
are the same at every severity, so a higher severity is a stronger version of the same
corruption, and every call with the same images, name, severity and seed returns the same
pixels.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hemaflow.config import SEVERITIES, ConfigError
from hemaflow.imaging import ops


@dataclass(frozen=True)
class Corruption:
    """One corruption: the imageops op it runs and its parameter at severities 1-5."""

    name: str
    family: str
    op: str
    parameter: str
    values: tuple[float, float, float, float, float]
    to_strength: Callable[[float], float]

    def strength(self, severity: int) -> float:
        """The op strength at ``severity`` (1-5)."""
        check_severity(severity)
        return float(self.to_strength(self.values[severity - 1]))


def _table() -> dict[str, Corruption]:
    io = ops
    rows = [
        Corruption(
            "gaussian_blur", "blur", "gaussian_blur", "sigma (px)",
            (0.8, 1.2, 1.6, 2.2, 3.0), lambda v: v / io.MAX_GAUSSIAN_SIGMA,
        ),
        Corruption(
            "motion_blur", "blur", "motion_blur", "streak length (px), random direction",
            (3.0, 5.0, 7.5, 10.0, 13.0), lambda v: v / io.MAX_MOTION_LENGTH,
        ),
        Corruption(
            "defocus_blur", "blur", "defocus_blur", "disk radius (px)",
            (1.3, 1.8, 2.4, 3.1, 4.0), lambda v: v / io.MAX_DEFOCUS_RADIUS,
        ),
        Corruption(
            "jpeg", "digital", "jpeg", "JPEG quality",
            (50, 30, 18, 11, 7), lambda v: (100 - v) / (100 - io.MIN_JPEG_QUALITY),
        ),
        Corruption(
            "pixelate", "digital", "pixelate", "block size (px)",
            (2, 3, 4, 5, 6), lambda v: (v - 1) / (io.MAX_PIXEL_BLOCK - 1),
        ),
        Corruption(
            "gaussian_noise", "noise", "gaussian_noise", "noise std (of 255)",
            (8, 14, 21, 29, 38), lambda v: v / io.MAX_GAUSSIAN_STD,
        ),
        Corruption(
            "shot_noise", "noise", "shot_noise", "photons at full scale",
            (120, 60, 30, 16, 9), lambda v: (io.MIN_SHOT_PHOTONS / v) ** 0.5,
        ),
        Corruption(
            "impulse_noise", "noise", "impulse_noise", "fraction of values hit",
            (0.01, 0.025, 0.045, 0.07, 0.1), lambda v: v / io.MAX_IMPULSE_FRACTION,
        ),
        Corruption(
            "brightness", "photometric", "brightness", "HSV value shift",
            (0.05, 0.1, 0.15, 0.21, 0.28), lambda v: v / 0.5,
        ),
        Corruption(
            "contrast", "photometric", "contrast", "contrast factor",
            (0.75, 0.6, 0.47, 0.35, 0.25), lambda v: v - 1.0,
        ),
        Corruption(
            "saturation", "photometric", "saturation", "saturation factor",
            (0.75, 0.58, 0.43, 0.3, 0.2), lambda v: v - 1.0,
        ),
        Corruption(
            "stain_shift", "stain", "stain_shift", "HED scale change (+/-)",
            (0.06, 0.12, 0.18, 0.25, 0.33), lambda v: v / io.MAX_HED_SCALE,
        ),
        Corruption(
            "stain_deposits", "artifact", "stain_deposits", "deposit strength",
            (0.2, 0.4, 0.6, 0.8, 1.0), lambda v: v,
        ),
        Corruption(
            "bubbles", "artifact", "bubbles", "bubble strength",
            (0.2, 0.4, 0.6, 0.8, 1.0), lambda v: v,
        ),
    ]  # fmt: skip
    return {c.name: c for c in rows}


CORRUPTIONS: dict[str, Corruption] = _table()
"""Every corruption of the suite by name, in the order reports show them."""


def check_severity(severity: int) -> None:
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or severity not in SEVERITIES
    ):
        raise ConfigError(f"severity must be an integer 1-5, got {severity!r}")


def select(selection: Sequence[str], table: Mapping[str, object], what: str) -> list[str]:
    """The names ``selection`` means in ``table``: "all" expands to it, in table order.

    An unknown name is an error naming ``what`` and the known ones; duplicates are dropped.
    """
    if isinstance(selection, str):
        selection = [selection]
    names: list[str] = []
    for item in selection:
        for name in list(table) if item == "all" else [item]:
            if name not in table:
                raise ConfigError(f"unknown {what} {name!r}; known: all, {', '.join(table)}")
            if name not in names:
                names.append(name)
    return names


def corruption_names(selection: Sequence[str]) -> list[str]:
    """The corruption names a selection means: "all" expands to the suite, in suite order.

    An unknown name is an error that lists the known ones; duplicates are dropped.
    """
    names = select(selection, CORRUPTIONS, "corruption")
    if not names:
        raise ConfigError(
            "no corruptions selected; use 'all' or names from: " + ", ".join(CORRUPTIONS)
        )
    return names


def _seed_pair(name: str, seed: int) -> tuple[int, int]:
    """A stateless seed per (corruption, seed): independent of severity on purpose."""
    return (int(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def corrupt(images: Any, name: str, severity: int, seed: int = 0) -> Any:
    """``images`` (uint8 [B, H, W, 3], numpy or tf) with corruption ``name`` at ``severity``.

    Returns uint8 of the same shape, a numpy array for numpy input and a tensor otherwise
    (so it also runs inside ``tf.data`` maps and ``tf.function``).
    """
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    check_severity(severity)
    corruption = CORRUPTIONS[name]
    is_numpy = isinstance(images, np.ndarray)
    if is_numpy:
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape [B, H, W, 3], got {images.shape}")
        if images.shape[0] == 0:
            return images.copy()
    else:
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        if images.dtype != tf.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype.name}")
    out = _graph(corruption.op)(images, corruption.strength(severity), _seed_pair(name, seed))
    return out.numpy() if is_numpy else out


@functools.cache
def _graph(op: str) -> Callable[[Any, float, tuple[int, int]], Any]:
    """The imageops op as a ``tf.function``: graph execution is 2-3x faster than eager here.

    Strength and seed go in as tensors, so one trace serves every severity and seed.
    """
    import tensorflow as tf

    traced = tf.function(
        lambda images, strength, seed: ops.apply(op, images, strength, seed),
        reduce_retracing=True,
    )

    def run(images: Any, strength: float, seed: tuple[int, int]) -> Any:
        return traced(images, tf.constant(strength, tf.float32), tf.constant(seed, tf.int64))

    return run


def corruption_grid(
    image: np.ndarray, names: Sequence[str] = ("all",), seed: int = 0, with_clean: bool = True
) -> bytes:
    """A PNG showing the suite on one image: a row per corruption, a column per severity 1-5
    (after a clean column when ``with_clean``)."""
    rows = [
        (name, CORRUPTIONS[name].parameter.split(",")[0], CORRUPTIONS[name].values)
        for name in corruption_names(list(names))
    ]
    return severity_grid(image, rows, corrupt, seed, with_clean)


def severity_grid(
    image: np.ndarray,
    rows: Sequence[tuple[str, str, Sequence[float]]],
    corrupt_batch: Callable[[np.ndarray, str, int, int], np.ndarray],
    seed: int = 0,
    with_clean: bool = True,
) -> bytes:
    """A PNG of a corruption table on one image, for either suite: a row per (name, header,
    values at severities 1-5), a column per severity (after a clean column when
    ``with_clean``); ``corrupt_batch(images, name, severity, seed)`` does the corrupting."""
    from hemaflow.reporting.plots import image_grid

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    cells: list[np.ndarray] = []
    titles: list[str] = []
    for name, header, values in rows:
        if with_clean:
            cells.append(image)
            titles.append(f"{name}\n{header}")
        for severity in SEVERITIES:
            cells.append(corrupt_batch(image[None], name, severity, seed)[0])
            label = "" if with_clean else f"{name} "
            titles.append(f"{label}s{severity}: {values[severity - 1]:g}")
    return image_grid(cells, titles, columns=len(SEVERITIES) + int(with_clean), cell=1.6)
