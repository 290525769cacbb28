"""The embedded default source: generated blood-cell-like images for the 8 classes.

Each class is drawn so that its identity is visible, as a haematologist would tell them apart:
nucleus shape and lobes (bilobed eosinophil, 3-5 lobed neutrophil, round lymphocyte with a
thin rim of cytoplasm, kidney-shaped monocyte, small dense erythroblast nucleus, large oval ig
nucleus), granule colour (orange eosinophil, dark purple basophil, faint lilac neutrophil),
cell size, and platelets as small purple fragments without a cell. Every image has a pink
background with red blood cells. Rendering is vectorised numpy over a batch of images and
deterministic for a seed. The images are not real cells and are always labelled synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hemaflow.config import CLASS_NAMES

_BACKGROUND = (236, 212, 214)
_RBC = (226, 150, 152)
_CHUNK = 64  # images rendered at once; bounds memory at large sizes


@dataclass(frozen=True)
class CellStyle:
    """How one class looks; radii are in units of half the image side."""

    cell_radius: tuple[float, float]
    cytoplasm: tuple[int, int, int]
    nucleus: str  # round | lobes | kidney | oval | none
    nucleus_colour: tuple[int, int, int]
    nucleus_scale: float  # nucleus radius relative to the cell radius
    lobes: tuple[int, int] = (1, 1)
    granules: tuple[int, int, int] | None = None
    granule_density: float = 0.0
    granules_over_nucleus: bool = False


STYLES: dict[str, CellStyle] = {
    "basophil": CellStyle(
        (0.42, 0.5), (190, 160, 205), "lobes", (95, 50, 130), 0.42, (2, 2), (55, 20, 85), 0.45, True
    ),
    "eosinophil": CellStyle(
        (0.52, 0.6), (232, 170, 140), "lobes", (90, 45, 125), 0.36, (2, 2), (226, 105, 60), 0.5
    ),
    "erythroblast": CellStyle((0.3, 0.36), (178, 150, 196), "round", (45, 15, 60), 0.55),
    "ig": CellStyle(
        (0.58, 0.68),
        (172, 170, 212),
        "oval",
        (125, 80, 165),
        0.72,
        granules=(175, 110, 170),
        granule_density=0.12,
    ),
    "lymphocyte": CellStyle((0.34, 0.42), (165, 185, 228), "round", (75, 35, 115), 0.86),
    "monocyte": CellStyle((0.62, 0.72), (185, 175, 208), "kidney", (135, 90, 170), 0.62),
    "neutrophil": CellStyle(
        (0.52, 0.6), (222, 190, 208), "lobes", (88, 40, 120), 0.27, (3, 5), (190, 140, 190), 0.25
    ),
    "platelet": CellStyle((0.05, 0.09), (0, 0, 0), "none", (120, 70, 165), 0.0, (2, 6)),
}


def generate(
    per_class: int, size: int, seed: int, class_names: tuple[str, ...] = CLASS_NAMES
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every class: (N x size x size x 3 uint8, N int64 labels)."""
    if per_class < 1 or size < 8:
        raise ValueError("synthetic: per_class must be >= 1 and size >= 8")
    unknown = [c for c in class_names if c not in STYLES]
    if unknown:
        raise ValueError(f"synthetic: no style for classes {unknown}")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(class_names):
        for start in range(0, per_class, _CHUNK):
            count = min(_CHUNK, per_class - start)
            images.append(render(STYLES[name], count, size, rng))
            labels.append(np.full(count, label, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def render(style: CellStyle, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``count`` images of one class in one vectorised pass."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    yy, xx = axis[None, :, None], axis[None, None, :]
    edge = 3.0 / size  # soft edge of about 1.5 pixels: antialiased shapes
    stain = rng.normal(1.0, 0.05, (count, 1, 1, 3)).astype(np.float32)

    image = np.broadcast_to(np.array(_BACKGROUND, np.float32), (count, size, size, 3)).copy()
    image = _red_cells(image, yy, xx, edge, rng)

    cy, cx = (rng.uniform(-0.08, 0.08, (2, count, 1, 1))).astype(np.float32)
    angle = rng.uniform(0, np.pi, (count, 1, 1)).astype(np.float32)
    radius = rng.uniform(*style.cell_radius, (count, 1, 1)).astype(np.float32)

    if style.nucleus == "none":  # platelets: small purple fragments near the centre
        fragments = _fragments(count, yy, xx, edge, style, rng)
        image = _paint(image, fragments, style.nucleus_colour, stain)
        grain = _granule_field(count, size, 0.35, rng) * fragments
        image = _paint(image, grain * 0.5, (80, 40, 120), stain)
        return _finish(image, rng)

    cell = _ellipse(
        yy, xx, cy, cx, radius, radius * rng.uniform(0.9, 1.0, (count, 1, 1)), angle, edge
    )
    image = _paint(image, cell, style.cytoplasm, stain)
    nucleus = _nucleus(style, yy, xx, cy, cx, radius, angle, edge, rng) * cell
    granules = None
    if style.granules is not None:
        granules = _granule_field(count, size, style.granule_density, rng) * cell
        if not style.granules_over_nucleus:
            image = _paint(image, granules * (1 - nucleus), style.granules, stain)
    image = _paint(image, nucleus, style.nucleus_colour, stain)
    if granules is not None and style.granules_over_nucleus:
        image = _paint(image, granules, style.granules, stain)
    return _finish(image, rng)


# --------------------------------------------------------------------------- shapes


def _distance(yy, xx, cy, cx, ry, rx, angle) -> np.ndarray:
    """Elliptical distance from the centre: 1 on the rim, float32 throughout for speed."""
    f32 = np.float32
    cos, sin = np.cos(angle).astype(f32), np.sin(angle).astype(f32)
    dy, dx = yy - np.asarray(cy, f32), xx - np.asarray(cx, f32)
    u = (dx * cos + dy * sin) / np.asarray(rx, f32)
    v = (dy * cos - dx * sin) / np.asarray(ry, f32)
    return np.sqrt(u * u + v * v)


def _soft(distance, rim: float, radius, edge: float) -> np.ndarray:
    """A soft-edged (antialiased) fill, 0..1, of everything inside ``rim`` times the radius."""
    return np.clip((rim - distance) * (np.asarray(radius, np.float32) / edge) + 0.5, 0, 1)


def _ellipse(yy, xx, cy, cx, ry, rx, angle, edge) -> np.ndarray:
    """A filled soft-edged ellipse for every image of the batch."""
    return _soft(_distance(yy, xx, cy, cx, ry, rx, angle), 1.0, np.minimum(rx, ry), edge)


def _nucleus(style, yy, xx, cy, cx, radius, angle, edge, rng) -> np.ndarray:
    count = radius.shape[0]
    r = radius * style.nucleus_scale
    if style.nucleus == "round":
        return _ellipse(yy, xx, cy, cx, r, r * rng.uniform(0.9, 1.0, (count, 1, 1)), angle, edge)
    if style.nucleus == "oval":
        return _ellipse(yy, xx, cy, cx, r * 0.8, r, angle, edge)
    if style.nucleus == "kidney":
        body = _ellipse(yy, xx, cy, cx, r * 0.75, r, angle, edge)
        notch_y = cy + np.sin(angle + np.pi / 2) * r * 0.85
        notch_x = cx + np.cos(angle + np.pi / 2) * r * 0.85
        notch = _ellipse(yy, xx, notch_y, notch_x, r * 0.45, r * 0.45, angle, edge)
        return body * (1 - notch)
    # lobes: K round lobes along a curved arc; K varies per image within the style's range
    low, high = style.lobes
    k = rng.integers(low, high + 1, (count, 1, 1, 1))
    index = np.arange(high)[None, :, None, None]
    t = np.where(k > 1, 2 * index / np.maximum(k - 1, 1) - 1, 0).astype(np.float32)
    spread = radius[:, None] * (0.5 if high > 2 else 0.42)
    bend = radius[:, None] * 0.25 * (t * t - 0.5)
    a = angle[:, None]
    ly = cy[:, None] + np.sin(a) * t * spread + np.cos(a) * bend
    lx = cx[:, None] + np.cos(a) * t * spread - np.sin(a) * bend
    lobes = _ellipse(yy[:, None], xx[:, None], ly, lx, r[:, None], r[:, None] * 0.85, a, edge)
    lobes = lobes * (index < k)
    return lobes.max(axis=1)


def _red_cells(image, yy, xx, edge, rng, most: int = 6) -> np.ndarray:
    """Paint 2-6 red blood cells (pale centre) behind the white cell."""
    count = image.shape[0]
    present = np.arange(most)[None, :] < rng.integers(2, most + 1, (count, 1))
    cy, cx = rng.uniform(-1.05, 1.05, (2, count, most, 1, 1)).astype(np.float32)
    r = rng.uniform(0.24, 0.34, (count, most, 1, 1)).astype(np.float32)
    distance = _distance(yy[:, None], xx[:, None], cy, cx, r, r, np.zeros((), np.float32))
    disc, pallor = _soft(distance, 1.0, r, edge), _soft(distance, 0.45, r, edge)
    cells = (disc * present[..., None, None]).max(axis=1)
    centres = (pallor * present[..., None, None]).max(axis=1)
    image = _paint(image, cells, _RBC, 1.0)
    return _paint(image, centres * cells * 0.55, _BACKGROUND, 1.0)


def _fragments(count, yy, xx, edge, style, rng) -> np.ndarray:
    most = style.lobes[1]
    present = np.arange(most)[None, :] < rng.integers(style.lobes[0], most + 1, (count, 1))
    cy, cx = rng.uniform(-0.3, 0.3, (2, count, most, 1, 1)).astype(np.float32)
    ry = rng.uniform(*style.cell_radius, (count, most, 1, 1)).astype(np.float32)
    rx = ry * rng.uniform(0.6, 1.0, (count, most, 1, 1)).astype(np.float32)
    angle = rng.uniform(0, np.pi, (count, most, 1, 1)).astype(np.float32)
    blobs = _ellipse(yy[:, None], xx[:, None], cy, cx, ry, rx, angle, edge)
    return (blobs * present[..., None, None]).max(axis=1)


def _granule_field(count: int, size: int, density: float, rng) -> np.ndarray:
    """Random granules about size/40 pixels across: coarse noise upsampled to the image."""
    coarse = max(8, size // 2)
    field = (rng.random((count, coarse, coarse)) < density).astype(np.float32)
    index = np.arange(size) * coarse // size
    return field[:, index][:, :, index]


def _paint(image, mask, colour, stain) -> np.ndarray:
    colour = np.asarray(colour, np.float32) * np.asarray(stain, np.float32)
    alpha = mask[..., None].astype(np.float32, copy=False)
    return image + (colour - image) * alpha


def _finish(image: np.ndarray, rng) -> np.ndarray:
    """Slight optical blur, brightness variation and sensor noise, then uint8."""
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = (
        padded[:, 1:-1, 1:-1] * 4
        + padded[:, :-2, 1:-1]
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
    ) / 8
    count = image.shape[0]
    brightness = rng.normal(1.0, 0.04, (count, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal(blurred.shape, dtype=np.float32) * np.float32(3.0)
    return np.clip(blurred * brightness + noise, 0, 255).round().astype(np.uint8)
