"""The independent corruption benchmark: 16 albumentations corruptions at severities 1-5.

The project's own suite (:mod:`hemaflow.imaging.corruptions`) is built from the same ops
(:mod:`hemaflow.imaging.ops`) that training augmentation draws from, so its number is
optimistic: the model has seen those exact implementations. This benchmark takes its
corruptions from albumentations, a library no training code imports (a test walks the
imports to keep it so), in the spirit of ImageNet-C: noise, blur, digital, occluders, colour
and stain casts, illumination. Severity 1 is mild, 5 heavy but with the cell still
recognisable; each row gives its parameter per severity in physical units (pixels of a
128-pixel image, scaled with the image size; noise in grey levels of 255; kelvin; degrees).

Families use the own suite's names (noise, blur, digital, artifact, stain, photometric), so
the report can put the two side by side. ``trained_kind`` names the training-policy family
(:data:`hemaflow.imaging.policy.FAMILIES`) of the same kind, or None where training has
nothing like it, which is what separates "robust to a new implementation" from "robust to a
new kind of damage".

Deterministic: every image gets its own generator seeded from (seed, name, index in the
batch), never from the severity, so a higher severity is a stronger version of the same draw
wherever albumentations draws the same numbers (noise fields, mud, blur direction), and the
same images, name, severity and seed always give the same pixels.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from hemaflow.config import ConfigError
from hemaflow.imaging.corruptions import check_severity, select, severity_grid

REFERENCE_SIZE = 128
"""Pixel parameters are quoted for an image of this height."""


@dataclass(frozen=True)
class Independent:
    """One corruption: the albumentations transform and its parameter at severities 1-5.

    ``build(value, scale)`` returns the transform at ``value`` for an image ``scale`` times
    the reference size, always applied (p=1) at exactly that strength (ranges with equal
    ends).
    """

    name: str
    family: str
    trained_kind: str | None
    transform: str
    parameter: str
    values: tuple[float, float, float, float, float]
    build: Callable[[float, float], Any]

    def value(self, severity: int) -> float:
        """The parameter at ``severity`` (1-5), in the units of :attr:`parameter`."""
        check_severity(severity)
        return float(self.values[severity - 1])


def _odd(length: float) -> int:
    """The nearest odd kernel size of at least 3 (motion blur needs odd kernels)."""
    k = max(3, int(round(length)))
    return k if k % 2 else k + 1


def _white_balance(temperature: int) -> Any:
    """albumentations' blackbody white-balance shift at exactly ``temperature`` kelvin.

    ``PlanckianJitter`` itself insists on sampling around 6000 K, so the fixed strength calls
    its function through ``Lambda``.
    """
    from albumentations.augmentations.pixel import functional as fpixel

    def shift(image: np.ndarray, **_: Any) -> np.ndarray:
        return fpixel.planckian_jitter(image, temperature, mode="blackbody")

    return A.Lambda(image=shift, name=f"white_balance_{temperature}K", p=1)


def _fixed(v: float) -> tuple[float, float]:
    return (float(v), float(v))


def _table() -> dict[str, Independent]:
    rows = [
        # noise: sensor and read-out noise
        Independent(
            "gauss_noise", "noise", "noise", "GaussNoise", "noise std (of 255), per channel",
            (5, 9, 14, 20, 27),
            lambda v, s: A.GaussNoise(std_range=_fixed(v / 255), per_channel=True, p=1),
        ),
        Independent(
            "iso_noise", "noise", "noise", "ISONoise", "luminance noise intensity (colour shift = intensity / 10)",
            (0.2, 0.35, 0.5, 0.7, 0.9),
            lambda v, s: A.ISONoise(color_shift=_fixed(v / 10), intensity=_fixed(v), p=1),
        ),
        Independent(
            "salt_pepper", "noise", "noise", "SaltAndPepper", "fraction of pixels hit",
            (0.004, 0.008, 0.015, 0.025, 0.04),
            lambda v, s: A.SaltAndPepper(amount=_fixed(v), salt_vs_pepper=(0.5, 0.5), p=1),
        ),
        # blur: optics and stage motion
        Independent(
            "gaussian_blur", "blur", "blur", "GaussianBlur", "sigma (px)",
            (0.6, 0.9, 1.3, 1.8, 2.4),
            lambda v, s: A.GaussianBlur(blur_limit=0, sigma_limit=_fixed(v * s), p=1),
        ),
        Independent(
            "motion_blur", "blur", "blur", "MotionBlur", "kernel length (px, odd), random direction",
            (3, 6, 9, 12, 15),
            lambda v, s: A.MotionBlur(
                blur_limit=(_odd(v * s), _odd(v * s)), allow_shifted=False,
                direction_range=(0.0, 0.0), p=1,
            ),
        ),
        Independent(
            "defocus", "blur", "blur", "Defocus", "disk radius (px, whole px; kernel smoothing sigma = radius / 2)",
            (1.0, 1.6, 2.3, 3.1, 4.0),
            lambda v, s: A.Defocus(
                radius=(max(1, round(v * s)),) * 2, alias_blur=_fixed(v * s / 2), p=1
            ),
        ),
        Independent(
            "zoom_blur", "blur", "blur", "ZoomBlur", "largest zoom factor (step 0.01)",
            (1.02, 1.04, 1.06, 1.09, 1.12),
            lambda v, s: A.ZoomBlur(max_factor=_fixed(v), step_factor=(0.01, 0.01), p=1),
        ),
        # digital: compression and resampling
        Independent(
            "jpeg", "digital", "jpeg", "ImageCompression", "JPEG quality",
            (45, 30, 20, 13, 8),
            lambda v, s: A.ImageCompression(
                compression_type="jpeg", quality_range=(int(v), int(v)), p=1
            ),
        ),
        Independent(
            "webp", "digital", "jpeg", "ImageCompression", "WebP quality",
            (40, 25, 15, 8, 3),
            lambda v, s: A.ImageCompression(
                compression_type="webp", quality_range=(int(v), int(v)), p=1
            ),
        ),
        Independent(
            "downscale", "digital", "pixelate", "Downscale", "scale factor (area down, linear up)",
            (0.6, 0.45, 0.35, 0.28, 0.22),
            lambda v, s: A.Downscale(
                scale_range=_fixed(v),
                interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
                p=1,
            ),
        ),
        # artifact: dirt on the slide or the optics
        Independent(
            "spatter_mud", "artifact", "artifacts", "Spatter", "mud intensity (blob sigma 2 px)",
            (0.2, 0.32, 0.44, 0.56, 0.7),
            lambda v, s: A.Spatter(
                mode="mud", intensity=_fixed(v), gauss_sigma=_fixed(2.0 * s),
                mean=(0.65, 0.65), std=(0.3, 0.3), cutout_threshold=(0.68, 0.68), p=1,
            ),
        ),
        # stain: colour casts of the illumination and of the staining
        Independent(
            "white_balance", "stain", None, "planckian_jitter (blackbody)",
            "lamp colour temperature (K; 6000 is neutral)",
            (5400, 4900, 4400, 3900, 3400),
            lambda v, s: _white_balance(int(v)),
        ),
        Independent(
            "hue_shift", "stain", "chromatic", "HueSaturationValue", "hue rotation (degrees)",
            (5, 10, 15, 21, 28),
            lambda v, s: A.HueSaturationValue(
                hue_shift_limit=_fixed(v), sat_shift_limit=(0, 0), val_shift_limit=(0, 0), p=1
            ),
        ),
        Independent(
            "stain_cast", "stain", "stain", "RGBShift", "red/blue up, green down (of 255)",
            (8, 15, 22, 30, 40),
            lambda v, s: A.RGBShift(
                r_shift_limit=_fixed(v), g_shift_limit=_fixed(-v), b_shift_limit=_fixed(v / 2),
                p=1,
            ),
        ),
        # photometric: exposure and lamp brightness
        Independent(
            "overexposure", "photometric", "chromatic", "RandomGamma", "gamma (x100, < 100 brightens)",
            (80, 65, 52, 42, 34),
            lambda v, s: A.RandomGamma(gamma_limit=_fixed(v), p=1),
        ),
        Independent(
            "underexposure", "photometric", "chromatic", "RandomBrightnessContrast",
            "lamp intensity (fraction of normal)",
            (0.88, 0.77, 0.67, 0.58, 0.5),
            lambda v, s: A.RandomBrightnessContrast(
                brightness_limit=(0.0, 0.0), contrast_limit=_fixed(v - 1.0), p=1
            ),
        ),
    ]  # fmt: skip
    return {c.name: c for c in rows}


INDEPENDENT: dict[str, Independent] = _table()
"""Every corruption of the benchmark by name, in the order reports show them."""


def names(selection: Sequence[str]) -> list[str]:
    """The names a selection means: "all" expands to the benchmark, in table order.

    An empty selection means none (the benchmark is off); an unknown name is an error that
    lists the known ones; duplicates are dropped.
    """
    return select(selection, INDEPENDENT, "independent corruption")


def families(selected: Sequence[str]) -> dict[str, str]:
    """Corruption name -> family, for the robustness summary."""
    return {name: INDEPENDENT[name].family for name in selected}


@functools.cache
def _transform(name: str, severity: int, size: int) -> Any:
    spec = INDEPENDENT[name]
    return spec.build(spec.value(severity), size / REFERENCE_SIZE)


def image_seeds(name: str, seed: int, count: int) -> list[int]:
    """One seed per image, from (seed, name, index): independent of severity on purpose."""
    base = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])
    return [int(s) for s in base.generate_state(count, np.uint32)]


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` (uint8 numpy [B, H, W, 3]) with corruption ``name`` at ``severity``."""
    if name not in INDEPENDENT:
        raise ConfigError(
            f"unknown independent corruption {name!r}; known: {', '.join(INDEPENDENT)}"
        )
    check_severity(severity)
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [B, H, W, 3], got {images.shape}")
    out = np.empty_like(images)
    if not len(images):
        return out
    transform = _transform(name, int(severity), int(images.shape[1]))
    for i, image_seed in enumerate(image_seeds(name, seed, len(images))):
        transform.set_random_seed(image_seed)
        out[i] = transform(image=np.ascontiguousarray(images[i]))["image"]
    return out


def grid(
    image: np.ndarray, selection: Sequence[str] = ("all",), seed: int = 0, with_clean: bool = True
) -> bytes:
    """A PNG of the benchmark on one image: a row per corruption, a column per severity 1-5
    (after a clean column when ``with_clean``)."""
    rows = [(n, INDEPENDENT[n].transform, INDEPENDENT[n].values) for n in names(list(selection))]
    return severity_grid(image, rows, corrupt, seed, with_clean)
