"""Batched image operations that neither Keras 3 preprocessing layers nor keras-cv provide.

Every op takes a batch ``images`` of shape [B, H, W, 3], uint8 or float32 in 0-255, and returns
the same shape and dtype. Each op has a ``strength`` on a documented scale (a Python number, a
scalar tensor or one value per image, shape [B]); strength 0 leaves the image unchanged unless
the op says otherwise. Randomness comes only from stateless ops driven by an explicit ``seed``
(a pair of integers or an int tensor of shape [2]), so the same inputs and seed always give the
same output, in eager code, inside ``tf.function`` and inside ``tf.data`` maps.

Random draws never depend on the strength: for a fixed seed the same blobs, specks, angles and
noise fields are scaled by the strength, so a larger strength is always a stronger version of
the same corruption (the corruption suite relies on this for monotone severities).

Spatial sizes are given in pixels of a 128-pixel image and scale with the image height, so an
op at one strength does the same to a cell at 64, 96 or 128 pixels.

The augmentation policy draws strengths at random per image; the corruption suite in
``hemaflow.imaging.corruptions`` uses fixed strengths per severity.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

REFERENCE_SIZE = 128
"""Spatial parameters are quoted in pixels of an image of this height."""

# Ruifrok & Johnston (2001) stain vectors: optical density of haematoxylin, eosin and DAB per
# RGB channel (rows), the matrix scikit-image uses for rgb2hed/hed2rgb.
RGB_FROM_HED = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)

# Strength 1 of each op, in its own units (pixels at REFERENCE_SIZE unless stated).
MAX_GAUSSIAN_SIGMA = 4.0
MAX_DEFOCUS_RADIUS = 6.0
MAX_MOTION_LENGTH = 16.0
MIN_JPEG_QUALITY = 5
MAX_PIXEL_BLOCK = 12.0
MAX_GAUSSIAN_STD = 100.0
MIN_SHOT_PHOTONS = 3.0
MAX_IMPULSE_FRACTION = 0.3
MAX_HED_SCALE = 0.6
MAX_HED_BIAS = 0.25
MAX_DEPOSIT_THRESHOLD_DROP = 1.5
MAX_BUBBLES = 3
MAX_DUST_DENSITY = 0.004
MAX_WB_TEMPERATURE = 0.16  # log-gain of red (+) and blue (-) along the blackbody axis
MAX_WB_TINT = 0.08  # log-gain of green against magenta, off the blackbody axis
MAX_WB_JITTER = 0.04  # independent per-channel log-gain (sensor/filter spread)
MAX_STAIN_VECTOR_JITTER = 0.25  # per OD component of a unit stain vector (up to ~25 deg)
PRECIPITATE_THRESHOLD = (2.8, 1.1)  # field threshold at strength 0+ and at 1
PRECIPITATE_SOFTNESS = 0.8  # width of the soft edge, in field standard deviations
MAX_FIBRES = 4
FIBRE_SEGMENTS = 6
MAX_DUST_DISCS = 5


def _tf():
    import tensorflow as tf

    return tf


# ---------------------------------------------------------------------------------------------
# Plumbing shared by the ops
# ---------------------------------------------------------------------------------------------


def as_float(images: Any) -> tf.Tensor:
    """The batch as float32 in 0-255, checked to be [B, H, W, 3]."""
    tf = _tf()
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and (
        images.shape.rank != 4 or images.shape[-1] not in (3, None)
    ):
        raise ValueError(f"images must have shape [B, H, W, 3], got {images.shape}")
    if images.dtype not in (tf.uint8, tf.float32):
        raise ValueError(f"images must be uint8 or float32 in 0-255, got {images.dtype.name}")
    return tf.cast(images, tf.float32)


def restore(result: tf.Tensor, like: Any) -> tf.Tensor:
    """``result`` clipped to 0-255 and cast back to the dtype (and static shape) of ``like``."""
    tf = _tf()
    like = tf.convert_to_tensor(like)
    result = tf.clip_by_value(result, 0.0, 255.0)
    if like.dtype == tf.uint8:
        result = tf.cast(tf.round(result), tf.uint8)
    result.set_shape(like.shape)
    return result


def per_image(value: Any, images: tf.Tensor) -> tf.Tensor:
    """A scalar or per-image parameter as a float32 tensor of shape [B]."""
    tf = _tf()
    value = tf.cast(tf.convert_to_tensor(value), tf.float32)
    if value.shape.rank not in (None, 0, 1):
        raise ValueError(f"a strength must be a scalar or one value per image, got {value.shape}")
    return tf.broadcast_to(value, tf.shape(images)[:1])


def _scale(images: tf.Tensor) -> tf.Tensor:
    """Pixels of this batch per pixel of a REFERENCE_SIZE image."""
    tf = _tf()
    return tf.cast(tf.shape(images)[1], tf.float32) / REFERENCE_SIZE


def check_seed(seed: Any) -> tf.Tensor:
    """The seed as an int64 tensor of shape [2], or a clear error."""
    tf = _tf()
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank is not None and seed.shape != (2,):
        raise ValueError(f"seed must be a pair of integers, got shape {seed.shape}")
    return seed


def _seeds(seed: Any, count: int) -> list[tf.Tensor]:
    """``count`` independent stateless seeds derived from one."""
    tf = _tf()
    split = tf.random.experimental.stateless_split(check_seed(seed), num=count)
    return [split[i] for i in range(count)]


def _grid(radius: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Integer offsets -radius..radius as (dy, dx) float grids of shape [k, k]."""
    tf = _tf()
    r = tf.range(-radius, radius + 1, dtype=tf.float32)
    dy, dx = tf.meshgrid(r, r, indexing="ij")
    return dy, dx


def convolve_per_image(images: tf.Tensor, kernels: tf.Tensor) -> tf.Tensor:
    """Convolve image b with kernel b ([B, kh, kw], both odd), reflecting at the borders.

    One depthwise convolution over the batch folded into channels, so every image gets its own
    kernel in a single vectorised call.
    """
    tf = _tf()
    shape = tf.shape(images)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    pad_y, pad_x = tf.shape(kernels)[1] // 2, tf.shape(kernels)[2] // 2
    folded = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, h, w, b * c])
    folded = tf.pad(folded, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="REFLECT")
    filters = tf.repeat(tf.transpose(kernels, [1, 2, 0]), c, axis=2)[..., tf.newaxis]
    out = tf.nn.depthwise_conv2d(folded, filters, strides=[1, 1, 1, 1], padding="VALID")
    return tf.transpose(tf.reshape(out, [h, w, b, c]), [2, 0, 1, 3])


def _normalise(kernels: tf.Tensor) -> tf.Tensor:
    tf = _tf()
    return kernels / tf.reduce_sum(kernels, axis=[1, 2], keepdims=True)


def _max_radius(extent: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Kernel radius for the largest extent in the batch, kept below the image size."""
    tf = _tf()
    radius = tf.cast(tf.math.ceil(tf.reduce_max(extent)), tf.int32)
    limit = tf.minimum(tf.shape(images)[1], tf.shape(images)[2]) - 1
    return tf.clip_by_value(radius, 0, limit)


def sample_bilinear(images: tf.Tensor, y: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Images [B, H, W, C] sampled at float pixel coordinates y, x of shape [B, H, W].

    Coordinates outside the image are clamped to the border. Gathers from the flattened batch,
    which is much faster on CPU than a batched ``gather_nd``.
    """
    tf = _tf()
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    flat = tf.reshape(images, tf.stack([-1, shape[3]]))
    base = (tf.range(b) * h * w)[:, None, None]
    y = tf.clip_by_value(y, 0.0, tf.cast(h - 1, tf.float32))
    x = tf.clip_by_value(x, 0.0, tf.cast(w - 1, tf.float32))
    y0f, x0f = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0f)[..., tf.newaxis], (x - x0f)[..., tf.newaxis]
    y0, x0 = tf.cast(y0f, tf.int32), tf.cast(x0f, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, h - 1), tf.minimum(x0 + 1, w - 1)

    def at(yy: tf.Tensor, xx: tf.Tensor) -> tf.Tensor:
        return tf.gather(flat, base + yy * w + xx)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _coords(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Pixel-centre coordinates (y, x) as float grids of shape [1, H, W]."""
    tf = _tf()
    shape = tf.shape(images)
    yy, xx = tf.meshgrid(
        tf.range(shape[1], dtype=tf.float32), tf.range(shape[2], dtype=tf.float32), indexing="ij"
    )
    return yy[tf.newaxis], xx[tf.newaxis]


def _smooth_noise(seed: Any, images: tf.Tensor, cells: int) -> tf.Tensor:
    """Smooth random field [B, H, W], zero mean and unit std per image, ``cells`` blobs across."""
    tf = _tf()
    shape = tf.shape(images)
    coarse = tf.random.stateless_normal(tf.stack([shape[0], cells, cells, 1]), check_seed(seed))
    field = tf.image.resize(coarse, shape[1:3], method="bicubic")[..., 0]
    mean, var = tf.nn.moments(field, axes=[1, 2], keepdims=True)
    return (field - mean) / tf.sqrt(var + 1e-6)


def _blend(images: tf.Tensor, colour: Any, alpha: tf.Tensor) -> tf.Tensor:
    """Paint ``colour`` (RGB 0-255) over images with per-pixel opacity alpha [B, H, W]."""
    tf = _tf()
    colour = tf.reshape(tf.constant(colour, tf.float32), [1, 1, 1, 3])
    alpha = alpha[..., tf.newaxis]
    return images * (1 - alpha) + colour * alpha


# ---------------------------------------------------------------------------------------------
# Blurs
# ---------------------------------------------------------------------------------------------


def gaussian_kernels(sigma: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
    """Normalised 1-D Gaussian kernels [B, k] for per-image sigma [B] (sigma 0 = identity)."""
    tf = _tf()
    r = tf.range(-radius, radius + 1, dtype=tf.float32)[None, :]
    s = tf.maximum(sigma, 1e-3)[:, None]
    weights = tf.exp(-(r**2) / (2 * s**2))
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def gaussian_blur(images: Any, strength: Any) -> tf.Tensor:
    """Gaussian blur, deterministic: sigma = strength x 4 px (at 128 px); 0 is identity.

    Separable: a vertical then a horizontal pass.
    """
    x = as_float(images)
    sigma = per_image(strength, x) * MAX_GAUSSIAN_SIGMA * _scale(x)
    kernel = gaussian_kernels(sigma, _max_radius(3 * sigma, x))
    blurred = convolve_per_image(x, kernel[:, :, None])
    return restore(convolve_per_image(blurred, kernel[:, None, :]), images)


def disk_kernels(radius_px: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
    """Anti-aliased flat disks [B, k, k] of per-image radius [B] (radius 0 = identity)."""
    tf = _tf()
    dy, dx = _grid(radius)
    distance = tf.sqrt(dy**2 + dx**2)
    r = radius_px[:, None, None]
    return _normalise(tf.clip_by_value(r + 0.5 - distance, 0.0, 1.0))


def defocus_blur(images: Any, strength: Any) -> tf.Tensor:
    """Out-of-focus blur, a flat disk of radius strength x 6 px (at 128 px); 0 is identity."""
    x = as_float(images)
    radius_px = per_image(strength, x) * MAX_DEFOCUS_RADIUS * _scale(x)
    radius = _max_radius(radius_px + 1, x)
    return restore(convolve_per_image(x, disk_kernels(radius_px, radius)), images)


def line_kernels(length: tf.Tensor, angle: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
    """Anti-aliased line segments [B, k, k] centred on the origin (length 0 = identity).

    ``angle`` is in radians, per image.
    """
    tf = _tf()
    dy, dx = _grid(radius)
    cos, sin = tf.cos(angle)[:, None, None], tf.sin(angle)[:, None, None]
    along = dx * cos - dy * sin
    across = dx * sin + dy * cos
    half = length[:, None, None] / 2
    width = tf.clip_by_value(1.0 - tf.abs(across), 0.0, 1.0)
    extent = tf.clip_by_value(half + 0.5 - tf.abs(along), 0.0, 1.0)
    delta = tf.cast((dy == 0) & (dx == 0), tf.float32)
    return _normalise(tf.where(half > 0, width * extent, delta))


def motion_blur(images: Any, strength: Any, seed: Any, angle: Any = None) -> tf.Tensor:
    """Linear motion blur: a streak of length strength x 16 px (at 128 px); 0 is identity.

    ``angle`` in degrees (scalar or per image); when None each image gets a random direction
    drawn from ``seed``.
    """
    tf = _tf()
    x = as_float(images)
    length = per_image(strength, x) * MAX_MOTION_LENGTH * _scale(x)
    if angle is None:
        theta = tf.random.stateless_uniform(tf.shape(x)[:1], check_seed(seed), 0.0, math.pi)
    else:
        theta = per_image(angle, x) * (math.pi / 180.0)
    radius = _max_radius(length / 2 + 1, x)
    return restore(convolve_per_image(x, line_kernels(length, theta, radius)), images)


# ---------------------------------------------------------------------------------------------
# Compression and resolution
# ---------------------------------------------------------------------------------------------


def jpeg_quality(strength: Any) -> Any:
    """The JPEG quality for a strength: 100 at 0 down to 5 at 1."""
    tf = _tf()
    s = tf.cast(strength, tf.float32)
    return tf.cast(tf.round(100.0 - s * (100.0 - MIN_JPEG_QUALITY)), tf.int32)


def jpeg(images: Any, strength: Any) -> tf.Tensor:
    """JPEG re-compression at quality 100 - 95 x strength; strength 0 is identity (no re-encode)."""
    tf = _tf()
    x = as_float(images)
    quality = jpeg_quality(per_image(strength, x))
    as_uint8 = tf.cast(tf.round(tf.clip_by_value(x, 0, 255)), tf.uint8)
    encoded = tf.map_fn(
        lambda pair: tf.image.adjust_jpeg_quality(pair[0], tf.clip_by_value(pair[1], 1, 100)),
        (as_uint8, quality),
        fn_output_signature=tf.uint8,
    )
    keep = (quality >= 100)[:, None, None, None]
    return restore(tf.where(keep, x, tf.cast(encoded, tf.float32)), images)


def block_average_matrices(n: tf.Tensor, block: tf.Tensor) -> tf.Tensor:
    """Per-image [B, n, n] matrices that replace each index by the mean over its block.

    ``block`` [B] is a float width: index i falls in block floor(i / width), so a fractional
    width mixes blocks of the two neighbouring integer widths (as downscaling would).
    """
    tf = _tf()
    i = tf.cast(tf.range(n), tf.float32)
    index = tf.floor(i[None, :] / block[:, None] + 1e-4)
    same = tf.cast(tf.equal(index[:, :, None], index[:, None, :]), tf.float32)
    return same / tf.reduce_sum(same, axis=2, keepdims=True)


def pixelate(images: Any, strength: Any) -> tf.Tensor:
    """Pixelation into square blocks of 1 + 11 x strength px (at 128 px), each filled with its
    mean colour; 0 is identity.

    Block means are two batched matrix products (rows, then columns), so every image can have
    its own block size in one vectorised pass. Fractional block widths mix the neighbouring
    integer widths, so the effect grows smoothly with strength at any image size.
    """
    tf = _tf()
    x = as_float(images)
    block = 1.0 + per_image(strength, x) * (MAX_PIXEL_BLOCK - 1.0) * _scale(x)
    rows = block_average_matrices(tf.shape(x)[1], block)
    cols = block_average_matrices(tf.shape(x)[2], block)
    means = tf.einsum("byk,bkxc->byxc", rows, x)
    means = tf.einsum("bxk,bykc->byxc", cols, means)
    return restore(tf.where((block <= 1.0)[:, None, None, None], x, means), images)


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------


def gaussian_noise(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Additive Gaussian noise, std = strength x 100 (of 255), independent per channel."""
    tf = _tf()
    x = as_float(images)
    std = per_image(strength, x)[:, None, None, None] * MAX_GAUSSIAN_STD
    noise = tf.random.stateless_normal(tf.shape(x), check_seed(seed))
    return restore(x + std * noise, images)


def shot_noise(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Photon (shot) noise: a full-scale pixel collects 3 / strength^2 photons.

    Strength 1 is 3 photons (very grainy), 0.5 is 12, 0.25 is 48; 0 is identity. Counts are
    taken on the stored 0-255 intensities, as ImageNet-C does, and drawn from the normal
    approximation of the Poisson law (mean and variance = expected count), which is 5x faster
    than exact Poisson sampling on CPU and indistinguishable at these counts.
    """
    tf = _tf()
    x = as_float(images)
    s = per_image(strength, x)[:, None, None, None]
    photons = MIN_SHOT_PHOTONS / tf.maximum(s, 1e-3) ** 2
    expected = x / 255.0 * photons
    counts = expected + tf.sqrt(expected) * tf.random.stateless_normal(
        tf.shape(x), check_seed(seed)
    )
    noisy = counts / photons * 255.0
    return restore(tf.where(s > 0, noisy, x), images)


def impulse_noise(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Salt-and-pepper noise on a fraction strength x 0.3 of the pixel channels, half each way."""
    tf = _tf()
    x = as_float(images)
    hit_seed, salt_seed = _seeds(seed, 2)
    fraction = per_image(strength, x)[:, None, None, None] * MAX_IMPULSE_FRACTION
    hit = tf.random.stateless_uniform(tf.shape(x), hit_seed) < fraction
    salt = tf.random.stateless_uniform(tf.shape(x), salt_seed) < 0.5
    return restore(tf.where(hit, tf.where(salt, 255.0, 0.0), x), images)


# ---------------------------------------------------------------------------------------------
# Photometry
# ---------------------------------------------------------------------------------------------


def _hsv_adjust(images: Any, value_shift: Any = 0.0, saturation_factor: Any = 1.0) -> tf.Tensor:
    tf = _tf()
    x = as_float(images)
    hsv = tf.image.rgb_to_hsv(x / 255.0)
    h, s, v = tf.unstack(hsv, axis=-1)
    s = tf.clip_by_value(s * tf.reshape(saturation_factor, [-1, 1, 1]), 0.0, 1.0)
    v = tf.clip_by_value(v + tf.reshape(value_shift, [-1, 1, 1]), 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)) * 255.0


def brightness(images: Any, strength: Any) -> tf.Tensor:
    """Brightness: strength in [-1, 1] adds strength x 0.5 to HSV value (ImageNet-C style).

    Positive brightens towards over-exposure, negative darkens; 0 is identity (up to HSV
    round-off).
    """
    x = as_float(images)
    return restore(_hsv_adjust(x, value_shift=per_image(strength, x) * 0.5), images)


def contrast(images: Any, strength: Any) -> tf.Tensor:
    """Contrast around each image's mean: factor 1 + strength for strength in [-1, 0]
    (-1 = flat grey), 1 + 2 x strength for strength in (0, 1] (up to 3x); 0 is identity.
    """
    tf = _tf()
    x = as_float(images)
    s = per_image(strength, x)
    factor = tf.where(s < 0, 1.0 + s, 1.0 + 2.0 * s)[:, None, None, None]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return restore(mean + factor * (x - mean), images)


def saturation(images: Any, strength: Any) -> tf.Tensor:
    """Saturation: HSV saturation times 1 + strength for strength in [-1, 0] (-1 = grey),
    times 1 + 2 x strength for strength in (0, 1]; 0 is identity (up to HSV round-off).
    """
    tf = _tf()
    x = as_float(images)
    s = per_image(strength, x)
    factor = tf.where(s < 0, 1.0 + s, 1.0 + 2.0 * s)
    return restore(_hsv_adjust(x, saturation_factor=factor), images)


# ---------------------------------------------------------------------------------------------
# Stain colour (colour deconvolution)
# ---------------------------------------------------------------------------------------------


def _stain_matrices() -> tuple[tf.Tensor, tf.Tensor]:
    tf = _tf()
    rgb_from_hed = tf.constant(RGB_FROM_HED, tf.float32)
    return rgb_from_hed, tf.linalg.inv(rgb_from_hed)


def rgb_to_hed(images: Any) -> tf.Tensor:
    """Stain concentrations [B, H, W, 3] (H, E, D) of RGB images by Ruifrok-Johnston deconvolution.

    Optical density is -ln(I / 255) with I clamped to at least 1, so black maps to a finite OD.
    """
    tf = _tf()
    x = as_float(images)
    od = -tf.math.log(tf.maximum(x, 1.0) / 255.0)
    _, hed_from_rgb = _stain_matrices()
    return tf.einsum("bhwc,cs->bhws", od, hed_from_rgb)


def hed_to_rgb(hed: tf.Tensor) -> tf.Tensor:
    """RGB float32 in 0-255 from stain concentrations, the inverse of ``rgb_to_hed``."""
    tf = _tf()
    rgb_from_hed, _ = _stain_matrices()
    od = tf.einsum("bhws,sc->bhwc", hed, rgb_from_hed)
    return tf.clip_by_value(255.0 * tf.exp(-od), 0.0, 255.0)


def stain_shift(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Stain colour shift in HED space (Tellez et al. 2018 style jitter).

    Each image's H, E and D concentrations are scaled by 1 + a x 0.6 x strength and shifted
    by b x 0.25 x strength (optical density), with a, b random per image and stain, magnitude
    0.5-1 and random sign, drawn from ``seed`` independently of the strength. Strength 0 is
    identity (up to the round-trip through optical density).
    """
    tf = _tf()
    x = as_float(images)
    b = tf.shape(x)[0]
    seeds = _seeds(seed, 4)

    def signed(s_mag: tf.Tensor, s_sign: tf.Tensor) -> tf.Tensor:
        magnitude = tf.random.stateless_uniform(tf.stack([b, 3]), s_mag, 0.5, 1.0)
        sign = tf.where(tf.random.stateless_uniform(tf.stack([b, 3]), s_sign) < 0.5, -1.0, 1.0)
        return magnitude * sign

    s = per_image(strength, x)[:, None]
    scale = (1.0 + signed(seeds[0], seeds[1]) * MAX_HED_SCALE * s)[:, None, None, :]
    bias = (signed(seeds[2], seeds[3]) * MAX_HED_BIAS * s)[:, None, None, :]
    hed = rgb_to_hed(x)
    return restore(hed_to_rgb(hed * scale + bias), images)


def stain_vectors(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Stain colour change: each image is re-rendered with its own perturbed stain matrix.

    Where :func:`stain_shift` changes how much of each stain there is, this changes what
    colour each stain is (a different dye lot, pH or fixation; the stain-matrix
    augmentation of Tellez et al. 2019): the image is deconvolved with the reference
    (Ruifrok-Johnston) vectors and rebuilt with vectors moved by up to 0.25 x strength per
    optical-density component (a uniform draw per image, stain and channel, fixed by
    ``seed``), kept positive and at the reference length, so hue moves and intensity does
    not. Strength 0 is identity up to the round trip through optical density.
    """
    tf = _tf()
    x = as_float(images)
    s = per_image(strength, x)[:, None, None]
    rgb_from_hed, _ = _stain_matrices()
    jitter = tf.random.stateless_uniform(
        tf.stack([tf.shape(x)[0], 3, 3]), check_seed(seed), -1.0, 1.0
    )
    moved = tf.maximum(rgb_from_hed[None] + jitter * MAX_STAIN_VECTOR_JITTER * s, 1e-3)
    length = tf.norm(rgb_from_hed, axis=1)[None, :, None]
    moved = moved / tf.norm(moved, axis=2, keepdims=True) * length
    od = tf.einsum("bhws,bsc->bhwc", rgb_to_hed(x), moved)
    return restore(tf.clip_by_value(255.0 * tf.exp(-od), 0.0, 255.0), images)


def white_balance_gains(strength: tf.Tensor, seed: Any) -> tf.Tensor:
    """Per-image RGB gains [B, 3] of an illuminant or white-balance change.

    Log-gains are a first-order Planckian locus: a temperature draw t raises red and lowers
    blue by 0.16 x t (a warmer or cooler lamp), a tint draw m moves green against magenta
    by 0.08 x m, and each channel gets up to 0.04 of its own; all scale with ``strength``
    and t, m are uniform in [-1, 1]. The log-gains sum to 0 (a geometric mean gain of 1),
    so the illuminant's colour changes and its intensity does not (exposure is
    :func:`brightness`): red and blue move by up to about 20% at strength 1 (25% at the far
    corners of the draw), green by up to about 10%.
    """
    tf = _tf()
    b = tf.shape(strength)[0]
    temp_seed, tint_seed, jitter_seed = _seeds(seed, 3)
    temperature = tf.random.stateless_uniform(tf.stack([b, 1]), temp_seed, -1.0, 1.0)
    tint = tf.random.stateless_uniform(tf.stack([b, 1]), tint_seed, -1.0, 1.0)
    jitter = tf.random.stateless_uniform(tf.stack([b, 3]), jitter_seed, -1.0, 1.0)
    jitter = jitter - tf.reduce_mean(jitter, axis=1, keepdims=True)  # zero-sum, like the axes
    log_gain = (
        MAX_WB_TEMPERATURE * temperature * tf.constant([[1.0, 0.0, -1.0]])
        + MAX_WB_TINT * tint * tf.constant([[-0.5, 1.0, -0.5]])
        + MAX_WB_JITTER * jitter
    )
    return tf.exp(log_gain * strength[:, None])


def white_balance(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Illuminant / white-balance change: one gain per channel and image (up to about +-20%
    of red and blue at strength 1, see :func:`white_balance_gains`); the background turns warm,
    cool, greenish or magenta and saturates where a gain passes 255. 0 is identity.
    """
    tf = _tf()
    x = as_float(images)
    s = per_image(strength, x)
    gains = white_balance_gains(s, seed)[:, None, None, :]
    return restore(tf.where((s > 0)[:, None, None, None], x * gains, x), images)


# ---------------------------------------------------------------------------------------------
# Slide and optics artefacts
# ---------------------------------------------------------------------------------------------

DEPOSIT_COLOUR = (72, 38, 120)
"""Dark purple-blue of precipitated Romanowsky stain."""


def stain_deposits(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Dark purple-blue stain precipitate: irregular blotches plus fine granules.

    Blotches are the peaks of a smooth random field above a threshold that falls with the
    strength, so the same blotches grow and new ones appear as strength rises (strength 1
    covers roughly a fifth of the image); 0 is identity.
    """
    tf = _tf()
    x = as_float(images)
    coarse_seed, fine_seed, grain_seed = _seeds(seed, 3)
    s = per_image(strength, x)[:, None, None]
    coarse = _smooth_noise(coarse_seed, x, 6)
    fine = _smooth_noise(fine_seed, x, 20)
    field = 0.75 * coarse + 0.45 * fine
    threshold = 2.4 - MAX_DEPOSIT_THRESHOLD_DROP * s
    grain = tf.random.stateless_uniform(tf.shape(x)[:3], grain_seed, 0.75, 1.0)
    alpha = tf.clip_by_value((field - threshold) / 0.25, 0.0, 1.0) * 0.9 * grain
    alpha = tf.where(s > 0, alpha, 0.0)
    return restore(_blend(x, DEPOSIT_COLOUR, alpha), images)


def bubbles(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Air bubbles under the cover slip: a dark rim, a bright inner ring, and a lightened,
    slightly magnified (refracted) interior.

    Up to three bubbles at random places; strength sets how many (1 at low strength, 3 at 1)
    and their radius (about 10 to 34 px at 128 px); 0 is identity. The refraction of all
    bubbles is one resampling of the image.
    """
    tf = _tf()
    x = as_float(images)
    b = tf.shape(x)[0]
    size = tf.cast(tf.shape(x)[1], tf.float32)
    s = per_image(strength, x)
    place_seed, radius_seed = _seeds(seed, 2)
    centres = tf.random.stateless_uniform(tf.stack([b, MAX_BUBBLES, 2]), place_seed, 0.1, 0.9)
    unit_radius = tf.random.stateless_uniform(tf.stack([b, MAX_BUBBLES]), radius_seed, 0.6, 1.0)
    yy, xx = _coords(x)
    src_y, src_x = yy + tf.zeros_like(x[..., 0]), xx + tf.zeros_like(x[..., 0])
    inside = tf.zeros_like(x[..., 0])
    rims = []
    for k in range(MAX_BUBBLES):
        active = tf.cast(s > k / MAX_BUBBLES, tf.float32)[:, None, None]
        r = tf.maximum(unit_radius[:, k] * (0.08 + 0.19 * s) * size, 1.0)[:, None, None]
        cy = (centres[:, k, 0] * size)[:, None, None]
        cx = (centres[:, k, 1] * size)[:, None, None]
        dy, dx = yy - cy, xx - cx
        rho = tf.sqrt(dy**2 + dx**2) / r
        here = tf.cast(rho < 1.0, tf.float32) * active
        # Lens: the interior shows the scene magnified towards the centre.
        pull = 0.8 + 0.2 * rho**2
        src_y = here * (cy + dy * pull) + (1 - here) * src_y
        src_x = here * (cx + dx * pull) + (1 - here) * src_x
        inside = tf.maximum(inside, here)
        rims.append((rho, r, active))
    refracted = sample_bilinear(x, src_y, src_x)
    lighter = refracted + (255.0 - refracted) * 0.35
    out = x + (lighter - x) * inside[..., None]
    for rho, r, active in rims:
        rim_width = tf.maximum(0.07 * r, 0.8)
        dark = tf.exp(-(((rho - 1.0) * r / rim_width) ** 2)) * 0.75 * active
        bright = tf.exp(-(((rho - 0.86) * r / rim_width) ** 2)) * 0.8 * active
        out = _blend(_blend(out, (40, 40, 50), dark), (255, 255, 255), bright)
    return restore(out, images)


def dust(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Dust on the optics: small dark grey specks of 1-5 px (at 128 px), soft-edged.

    Speck density grows with the strength (about 65 specks per 128 px image at 1); 0 is
    identity.
    """
    tf = _tf()
    x = as_float(images)
    place_seed, size_seed, tone_seed = _seeds(seed, 3)
    shape = tf.shape(x)
    s = per_image(strength, x)[:, None, None]
    u = tf.random.stateless_uniform(shape[:3], place_seed)
    centres = tf.cast(u < MAX_DUST_DENSITY * s, tf.float32)
    large = tf.cast(tf.random.stateless_uniform(shape[:3], size_seed) < 0.3, tf.float32)
    sizes = []
    for radius_px, mask in ((0.8, centres * (1 - large)), (2.2, centres * large)):
        r = tf.fill(shape[:1], radius_px) * _scale(x)
        kernel = disk_kernels(r, _max_radius(r + 1, x))
        peak = tf.reduce_max(kernel, axis=[1, 2], keepdims=True)
        spread = convolve_per_image(mask[..., None], kernel / peak)[..., 0]
        sizes.append(spread)
    tone = tf.random.stateless_uniform(shape[:3], tone_seed, 0.6, 0.9)
    alpha = tf.clip_by_value(sizes[0] + sizes[1], 0.0, 1.0) * tone
    return restore(_blend(x, (45, 40, 38), alpha), images)


PRECIPITATE_COLOURS = ((58, 26, 92), (100, 48, 142))
"""Dark violet to blue-purple: the range of dried, precipitated Romanowsky dye."""
FIBRE_COLOUR = (78, 72, 66)
"""Grey-brown of a cellulose or lint fibre seen in transmitted light."""


def _smoothstep(t: tf.Tensor) -> tf.Tensor:
    """0 below 0, 1 above 1, a smooth S in between (zero slope at both ends: soft edges)."""
    tf = _tf()
    t = tf.clip_by_value(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _uniform(seed: Any, batch: tf.Tensor, count: int, low: float, high: float) -> tf.Tensor:
    """Per-image draws [B, count] uniform in [low, high)."""
    tf = _tf()
    return tf.random.stateless_uniform(tf.stack([batch, count]), check_seed(seed), low, high)


def precipitate(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Translucent blotches of precipitated dye with irregular outlines and soft edges.

    The outline is the level set of a three-octave smooth random field (4, 10 and 28 blobs
    across), so it is ragged at every scale; the edge fades over 0.8 field standard
    deviations, and each image's blotches have one opacity (0.55-0.9) and one colour
    between dark violet and blue-purple. The threshold falls with the strength from 2.8 to
    1.1 standard deviations, so the same blotches grow (to about a seventh of the image,
    on average, at 1); 0 is identity. Unlike :func:`stain_deposits` (hard-edged speckled
    spots all over) these are a few large, see-through smears.
    """
    tf = _tf()
    x = as_float(images)
    b = tf.shape(x)[0]
    coarse_seed, mid_seed, fine_seed, opacity_seed, colour_seed = _seeds(seed, 5)
    s = per_image(strength, x)[:, None, None]
    field = (
        _smooth_noise(coarse_seed, x, 4)
        + 0.5 * _smooth_noise(mid_seed, x, 10)
        + 0.25 * _smooth_noise(fine_seed, x, 28)
    )
    mean, var = tf.nn.moments(field, axes=[1, 2], keepdims=True)
    field = (field - mean) / tf.sqrt(var + 1e-6)
    start, end = PRECIPITATE_THRESHOLD
    threshold = start - (start - end) * s
    opacity = _uniform(opacity_seed, b, 1, 0.55, 0.9)[:, :, None]
    alpha = tf.where(s > 0, _smoothstep((field - threshold) / PRECIPITATE_SOFTNESS) * opacity, 0.0)
    t = _uniform(colour_seed, b, 1, 0.0, 1.0)[:, None, None, :]
    dark, light = (tf.constant(c, tf.float32) for c in PRECIPITATE_COLOURS)
    colour = dark + (light - dark) * t
    return restore(x * (1 - alpha[..., None]) + colour * alpha[..., None], images)


def _segment_distance2(yy, xx, start: tuple, end: tuple) -> tf.Tensor:
    """Squared distance [B, H, W] from every pixel to the segment start-end ([B, 1, 1])."""
    tf = _tf()
    (y0, x0), (y1, x1) = start, end
    dy, dx = y1 - y0, x1 - x0
    t = ((yy - y0) * dy + (xx - x0) * dx) / tf.maximum(dy * dy + dx * dx, 1e-6)
    t = tf.clip_by_value(t, 0.0, 1.0)
    return (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2


def _bezier(p0: tuple, p1: tuple, p2: tuple, t: float) -> tuple:
    """Point at ``t`` of the quadratic Bezier curve p0-p1-p2 (each a (y, x) pair)."""
    return tuple(
        (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t**2 * e
        for a, c, e in zip(p0, p1, p2, strict=True)
    )


def _curve_distance2(yy, xx, start: tuple, angle, length, bend) -> tf.Tensor:
    """Squared distance [B, H, W] to a bent fibre: a Bezier curve from ``start`` at ``angle`` (rad)
    to ``length`` px away, its control point ``bend`` px off the chord; all [B, 1, 1]."""
    tf = _tf()
    cos, sin = tf.cos(angle), tf.sin(angle)
    end = (start[0] + length * sin, start[1] + length * cos)
    control = ((start[0] + end[0]) / 2 + bend * cos, (start[1] + end[1]) / 2 - bend * sin)
    points = [_bezier(start, control, end, j / FIBRE_SEGMENTS) for j in range(FIBRE_SEGMENTS + 1)]
    distance2 = _segment_distance2(yy, xx, points[0], points[1])
    for a, e in zip(points[1:-1], points[2:], strict=True):
        distance2 = tf.minimum(distance2, _segment_distance2(yy, xx, a, e))
    return distance2


def fibres(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Thin, curved, translucent fibres or lint lying on the slide.

    Up to four per image (one more for each quarter of strength), each a quadratic Bezier
    curve 30-90 px long (at 128 px), bent by up to a third of its length, 0.5-1.3 px
    thick with a soft Gaussian profile and 0.35-0.7 opacity (times 0.5 + 0.5 x strength);
    0 is identity. Places, shapes and widths depend only on ``seed``.
    """
    tf = _tf()
    x = as_float(images)
    b = tf.shape(x)[0]
    size = tf.cast(tf.shape(x)[1], tf.float32)
    s = per_image(strength, x)
    seeds = _seeds(seed, 7)
    n = MAX_FIBRES
    draws = {
        "y": _uniform(seeds[0], b, n, 0.0, 1.0) * size,
        "x": _uniform(seeds[1], b, n, 0.0, 1.0) * size,
        "angle": _uniform(seeds[2], b, n, 0.0, 2 * math.pi),
        "length": _uniform(seeds[3], b, n, 30.0, 90.0) * _scale(x),
        "bend": _uniform(seeds[4], b, n, -0.33, 0.33),
        "width": _uniform(seeds[5], b, n, 0.5, 1.3) * _scale(x),
        "opacity": _uniform(seeds[6], b, n, 0.35, 0.7) * (0.5 + 0.5 * s[:, None]),
    }
    yy, xx = _coords(x)
    transmitted = tf.ones_like(x[..., 0])
    for k in range(n):
        d = {name: v[:, k, None, None] for name, v in draws.items()}
        distance2 = _curve_distance2(
            yy, xx, (d["y"], d["x"]), d["angle"], d["length"], d["bend"] * d["length"]
        )
        active = tf.cast(s > k / n, tf.float32)[:, None, None]
        alpha = d["opacity"] * tf.exp(-distance2 / d["width"] ** 2) * active
        transmitted = transmitted * (1 - alpha)
    alpha = (1 - transmitted)[..., None]
    return restore(x * (1 - alpha) + tf.constant(FIBRE_COLOUR, tf.float32) * alpha, images)


def defocused_dust(images: Any, strength: Any, seed: Any) -> tf.Tensor:
    """Dust on the condenser or a lens, far out of focus: faint, soft-edged grey discs.

    An out-of-focus absorber spreads its shadow over a disc, so each of up to five discs
    (one more for each fifth of strength) dims the light passing through it by 6-18%
    (times 0.5 + 0.5 x strength), a little more on a rim (the defocus ring), fading out
    over the outer quarter of its 5-16 px radius (at 128 px); neutral, multiplicative, so
    colours keep their hue. 0 is identity.
    """
    tf = _tf()
    x = as_float(images)
    b = tf.shape(x)[0]
    size = tf.cast(tf.shape(x)[1], tf.float32)
    s = per_image(strength, x)
    seeds = _seeds(seed, 3)
    centres = _uniform(seeds[0], b, 2 * MAX_DUST_DISCS, 0.0, 1.0) * size
    radius = _uniform(seeds[1], b, MAX_DUST_DISCS, 5.0, 16.0) * _scale(x)
    dimming = _uniform(seeds[2], b, MAX_DUST_DISCS, 0.06, 0.18) * (0.5 + 0.5 * s[:, None])
    yy, xx = _coords(x)
    transmitted = tf.ones_like(x[..., 0])
    for k in range(MAX_DUST_DISCS):
        cy = centres[:, 2 * k, None, None]
        cx = centres[:, 2 * k + 1, None, None]
        rho = tf.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius[:, k, None, None]
        disc = _smoothstep((1.0 - rho) / 0.25)
        rim = tf.exp(-(((rho - 0.85) / 0.1) ** 2))
        active = tf.cast(s > k / MAX_DUST_DISCS, tf.float32)[:, None, None]
        alpha = dimming[:, k, None, None] * (disc + 0.5 * rim) * active
        transmitted = transmitted * (1 - tf.minimum(alpha, 1.0))
    return restore(x * transmitted[..., None], images)


OPS = {
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "jpeg": jpeg,
    "pixelate": pixelate,
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "stain_shift": stain_shift,
    "stain_vectors": stain_vectors,
    "white_balance": white_balance,
    "stain_deposits": stain_deposits,
    "bubbles": bubbles,
    "dust": dust,
    "precipitate": precipitate,
    "fibres": fibres,
    "defocused_dust": defocused_dust,
}
"""Every op by name."""

SEEDED = frozenset(
    {
        "motion_blur",
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "stain_shift",
        "stain_vectors",
        "white_balance",
        "stain_deposits",
        "bubbles",
        "dust",
        "precipitate",
        "fibres",
        "defocused_dust",
    }
)
"""Ops that take a ``seed`` (the others are deterministic functions of image and strength)."""


def apply(name: str, images: Any, strength: Any, seed: Any = (0, 0)) -> tf.Tensor:
    """Apply the op ``name`` at ``strength``; ``seed`` is passed to the ops that draw randomness."""
    if name not in OPS:
        raise ValueError(f"unknown image op {name!r}; known: {', '.join(sorted(OPS))}")
    if name in SEEDED:
        return OPS[name](images, strength, seed)
    return OPS[name](images, strength)
