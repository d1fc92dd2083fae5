"""AutoAugment (ImageNet policy) and RandAugment on tf.image and raw TF ops.

Both work on one uint8 RGB image `[H, W, 3]` inside a `tf.data` map and take
an explicit stateless seed (a `[2]` int tensor), so a seeded input pipeline
augments identically on every run.

Operations follow PIL's definitions (the library the policies were searched
with): `Equalize` and `AutoContrast` are per channel as in `PIL.ImageOps`;
`Color`, `Contrast`, `Brightness` and `Sharpness` blend with the degenerate
image of `PIL.ImageEnhance`; geometric operations fill uncovered pixels with
grey (128) and sample with nearest neighbour.

Magnitudes. AutoAugment (Cubuk et al., 2019) discretises each operation's
range into 10 uniform values, m = 0..9; RandAugment (Cubuk et al., 2020) uses a
single magnitude M on a 0..10 scale. Both map to a strength s in [0, 1]
(m / 9, resp. M / 10) and then to the ranges of the AutoAugment paper:

    ShearX/Y    +-0.3 s             Rotate      +-30 s degrees
    TranslateX/Y +-(150/331) s of the image size (150 px at 331 px)
    Color, Contrast, Brightness, Sharpness: factor 0.1 + 1.8 s
    Solarize    threshold 256 (1 - s)         Posterize   8 - round(4 s) bits
    AutoContrast, Equalize, Invert, Identity: no magnitude

Geometric operations take a random sign; the others do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

# Operation names, in the order of the dispatch table below.
OP_NAMES = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)

# AutoAugment's ImageNet policy (Cubuk et al., 2019, appendix): 25 sub-policies
# of two (operation, probability, magnitude 0..9) steps.
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)

# RandAugment's operation set (Cubuk et al., 2020, section 3).
RANDAUGMENT_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)

AUGMENT_NAMES = ("autoaugment", "randaugment", "none")
_FILL_VALUE = 128.0
_MAX_TRANSLATE = 150.0 / 331.0


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL.ImageEnhance: degenerate + factor * (image - degenerate), truncated to uint8."""
    out = degenerate + factor * (image - degenerate)
    # The epsilon absorbs float32 error where the exact result is an integer.
    return tf.cast(tf.clip_by_value(tf.floor(out + 1e-3), 0.0, 255.0), tf.uint8)


def _grey(x: tf.Tensor) -> tf.Tensor:
    """ITU-R 601-2 luma as PIL's convert("L") computes it, shape [H, W, 1]."""
    weights = tf.constant([299.0, 587.0, 114.0], tf.float32) / 1000.0
    return tf.round(tf.reduce_sum(x * weights, axis=-1, keepdims=True))


def _enhance_factor(strength: tf.Tensor) -> tf.Tensor:
    return 0.1 + 1.8 * strength


def identity(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Returns the image unchanged."""
    del strength, sign
    return tf.identity(image)


def auto_contrast(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Stretches each channel to [0, 255] (PIL.ImageOps.autocontrast, cutoff 0)."""
    del strength, sign
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    # PIL: lut[i] = int(i * scale + offset) clipped; channels with hi <= lo stay.
    stretched = tf.clip_by_value(tf.floor((x - lo) * scale), 0.0, 255.0)
    return tf.cast(tf.where(hi > lo, stretched, x), tf.uint8)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """PIL.ImageOps.equalize on one uint8 channel [H, W]."""
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    # lut[i] = (step // 2 + sum(hist[:i])) // step
    exclusive = tf.cumsum(hist, exclusive=True)
    lut = tf.minimum((safe_step // 2 + exclusive) // safe_step, 255)
    equalized = tf.gather(lut, values)
    return tf.cast(tf.where(step > 0, equalized, values), tf.uint8)


def equalize(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Equalises each channel's histogram (PIL.ImageOps.equalize)."""
    del strength, sign
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def invert(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """255 - image."""
    del strength, sign
    return 255 - image


def posterize(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Keeps the 8 - round(4 s) high bits of each pixel."""
    del sign
    shift = tf.cast(tf.round(4.0 * strength), tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Inverts pixels at or above the threshold 256 (1 - s)."""
    del sign
    threshold = 256.0 * (1.0 - strength)
    x = tf.cast(image, tf.float32)
    return tf.where(x < threshold, image, 255 - image)


def color(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Blends with the greyscale image (PIL.ImageEnhance.Color)."""
    del sign
    x = tf.cast(image, tf.float32)
    return _blend(tf.broadcast_to(_grey(x), tf.shape(x)), x, _enhance_factor(strength))


def contrast(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Blends with the mean grey level (PIL.ImageEnhance.Contrast)."""
    del sign
    x = tf.cast(image, tf.float32)
    mean = tf.floor(tf.reduce_mean(_grey(x)) + 0.5)
    return _blend(tf.fill(tf.shape(x), mean), x, _enhance_factor(strength))


def brightness(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Blends with black (PIL.ImageEnhance.Brightness)."""
    del sign
    x = tf.cast(image, tf.float32)
    return _blend(tf.zeros_like(x), x, _enhance_factor(strength))


def sharpness(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Blends with PIL's SMOOTH-filtered image, borders kept (PIL.ImageEnhance.Sharpness)."""
    del sign
    x = tf.cast(image, tf.float32)
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.round(smooth)
    padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    interior = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior, padded, x)
    return _blend(degenerate, x, _enhance_factor(strength))


def _project(image: tf.Tensor, transform: list[tf.Tensor]) -> tf.Tensor:
    """Samples image at transform(output pixel), nearest neighbour, grey fill."""
    matrix = tf.reshape(tf.stack([tf.cast(t, tf.float32) for t in transform]), [1, 8])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=matrix,
        output_shape=tf.shape(image)[:2],
        fill_value=_FILL_VALUE,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    return out[0]


def rotate(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Rotates counter-clockwise about the centre by sign * 30 s degrees (as PIL's rotate)."""
    theta = -sign * strength * (30.0 * math.pi / 180.0)
    size = tf.cast(tf.shape(image), tf.float32)
    cy, cx = (size[0] - 1.0) / 2.0, (size[1] - 1.0) / 2.0
    c, s = tf.cos(theta), tf.sin(theta)
    zero = tf.constant(0.0)
    return _project(image, [c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy, zero, zero])


def shear_x(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """x_in = x + sign * 0.3 s * y, on pixel centres (as PIL's affine transform)."""
    shear = sign * 0.3 * strength
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return _project(image, [one, shear, 0.5 * shear, zero, one, zero, zero, zero])


def shear_y(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """y_in = y + sign * 0.3 s * x, on pixel centres (as PIL's affine transform)."""
    shear = sign * 0.3 * strength
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return _project(image, [one, zero, zero, shear, one, 0.5 * shear, zero, zero])


def translate_x(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Shifts horizontally by sign * (150/331) s of the width, rounded to pixels."""
    shift = tf.round(sign * strength * _MAX_TRANSLATE * tf.cast(tf.shape(image)[1], tf.float32))
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return _project(image, [one, zero, -shift, zero, one, zero, zero, zero])


def translate_y(image: tf.Tensor, strength: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Shifts vertically by sign * (150/331) s of the height, rounded to pixels."""
    shift = tf.round(sign * strength * _MAX_TRANSLATE * tf.cast(tf.shape(image)[0], tf.float32))
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return _project(image, [one, zero, zero, zero, one, -shift, zero, zero])


_OPS: tuple[Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor], ...] = (
    identity,
    auto_contrast,
    equalize,
    invert,
    rotate,
    posterize,
    solarize,
    color,
    contrast,
    brightness,
    sharpness,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
)
assert len(_OPS) == len(OP_NAMES)


def op_index(name: str) -> int:
    """Index of an operation in `OP_NAMES`.

    Args:
        name: Operation name, e.g. "Rotate".

    Returns:
        Its index.

    Raises:
        ValueError: If the name is unknown.
    """
    if name not in OP_NAMES:
        raise ValueError(f"unknown augmentation op {name!r}; known ops: {list(OP_NAMES)}")
    return OP_NAMES.index(name)


def apply_op(
    image: tf.Tensor, op: tf.Tensor | int, strength: tf.Tensor | float, sign: tf.Tensor | float
) -> tf.Tensor:
    """Applies the operation with index `op` (a scalar, possibly a tensor).

    Args:
        image: uint8 RGB image [H, W, 3].
        op: Index into `OP_NAMES`.
        strength: Magnitude as a strength in [0, 1].
        sign: +1.0 or -1.0, the direction of geometric operations.

    Returns:
        The uint8 image, same shape.
    """
    image = tf.convert_to_tensor(image)
    strength = tf.cast(strength, tf.float32)
    sign = tf.cast(sign, tf.float32)
    branches = [lambda fn=fn: fn(image, strength, sign) for fn in _OPS]
    out = tf.switch_case(tf.cast(op, tf.int32), branches)
    out.set_shape(image.shape)
    return out


def _random_sign(seed: tf.Tensor) -> tf.Tensor:
    u = tf.random.stateless_uniform([], seed=seed)
    return tf.where(u < 0.5, -1.0, 1.0)


def auto_augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """AutoAugment with the ImageNet policy: one random sub-policy per image.

    Args:
        image: uint8 RGB image [H, W, 3] (H, W >= 3).
        seed: int32/int64 tensor of shape [2], a stateless seed.

    Returns:
        The augmented uint8 image, same shape.
    """
    ops = tf.constant([[op_index(n) for n, _, _ in sub] for sub in IMAGENET_POLICY], tf.int32)
    probs = tf.constant([[p for _, p, _ in sub] for sub in IMAGENET_POLICY], tf.float32)
    mags = tf.constant([[m / 9.0 for _, _, m in sub] for sub in IMAGENET_POLICY], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=1 + 2 * 2)
    choice = tf.random.stateless_uniform(
        [], seed=seeds[0], maxval=len(IMAGENET_POLICY), dtype=tf.int32
    )
    for step in range(2):
        u = tf.random.stateless_uniform([], seed=seeds[1 + 2 * step])
        op = tf.where(u < probs[choice, step], ops[choice, step], 0)
        image = apply_op(image, op, mags[choice, step], _random_sign(seeds[2 + 2 * step]))
    return image


def rand_augment(
    image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2, magnitude: float = 9.0
) -> tf.Tensor:
    """RandAugment: `num_layers` operations drawn uniformly, all at one magnitude.

    Args:
        image: uint8 RGB image [H, W, 3] (H, W >= 3).
        seed: int32/int64 tensor of shape [2], a stateless seed.
        num_layers: Operations applied in sequence (N in the paper).
        magnitude: Magnitude M on the 0..10 scale.

    Returns:
        The augmented uint8 image, same shape.

    Raises:
        ValueError: If num_layers < 0 or magnitude is outside [0, 10].
    """
    if num_layers < 0:
        raise ValueError(f"RandAugment num_layers must be >= 0, got {num_layers}")
    if not 0.0 <= magnitude <= 10.0:
        raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
    table = tf.constant([op_index(n) for n in RANDAUGMENT_OPS], tf.int32)
    seeds = tf.random.experimental.stateless_split(seed, num=2 * max(num_layers, 1))
    for layer in range(num_layers):
        pick = tf.random.stateless_uniform(
            [], seed=seeds[2 * layer], maxval=len(RANDAUGMENT_OPS), dtype=tf.int32
        )
        image = apply_op(image, table[pick], magnitude / 10.0, _random_sign(seeds[2 * layer + 1]))
    return image


def augment(image: tf.Tensor, seed: tf.Tensor, name: str) -> tf.Tensor:
    """Applies the augmentation called `name`.

    Args:
        image: uint8 RGB image [H, W, 3].
        seed: Stateless seed, shape [2].
        name: One of `AUGMENT_NAMES`.

    Returns:
        The augmented uint8 image.

    Raises:
        ValueError: If the name is unknown.
    """
    check_augment_name(name)
    if name == "autoaugment":
        return auto_augment(image, seed)
    if name == "randaugment":
        return rand_augment(image, seed)
    return image


def check_augment_name(name: str) -> None:
    """Raises ValueError naming the known augmentations if `name` is not one."""
    if name not in AUGMENT_NAMES:
        raise ValueError(f"unknown augment {name!r}; expected one of {list(AUGMENT_NAMES)}")
