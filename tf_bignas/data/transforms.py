"""Decoding and per-example transforms for training and evaluation.

Training (`train_patch`, then `resize_patches` per batch) follows section 3.1
of the BigNAS paper: each image is cropped once, Inception style, and resized
to a base patch; the patch is flipped and augmented; then the same patch is
resized bicubically to every training resolution, so the teacher (largest
child) and the students see the same content.

Evaluation (`eval_image`): a centred square of `crop_fraction` (0.875) of the
shorter side, resized bicubically to the resolution.

Every image leaves these functions as integer-valued pixels in [0, 255] (uint8,
or float32 rounded and clipped after a resize), the same kind of input that a
deployed model receives; `Normalization` is applied afterwards, in one place.

JPEGs are decoded with `tf.io.decode_and_crop_jpeg` when the crop is known
before decoding, which skips most of the work on large images. All decoding
goes through `decode_rgb`'s decoder: JPEG (including CMYK), PNG (grey, grey +
alpha, palette, RGBA, 16 bit), BMP and GIF (first frame) all come out as
uint8 RGB; an alpha channel is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from tf_bignas.data import augment as augment_lib

INTERPOLATION = "bicubic"
DEFAULT_CROP_SCALE = (0.08, 1.0)
DEFAULT_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_EVAL_CROP_FRACTION = 0.875
_MIN_OBJECT_COVERED = 0.1
_CROP_ATTEMPTS = 10


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
    """Decodes an encoded image into uint8 RGB.

    Args:
        contents: Scalar string tensor, the encoded file (JPEG, PNG, BMP, GIF).

    Returns:
        uint8 tensor [H, W, 3].
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _decode_cropped(contents: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decodes the window `window_fn([height, width])` = [y, x, h, w] of an encoded image.

    JPEGs decode only the window (their size comes from the header); other
    formats are decoded once and cropped.
    """

    def jpeg() -> tf.Tensor:
        window = window_fn(tf.io.extract_jpeg_shape(contents)[:2])
        return tf.io.decode_and_crop_jpeg(contents, window, channels=3)

    def other() -> tf.Tensor:
        image = decode_rgb(contents)
        window = window_fn(tf.shape(image)[:2])
        return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def random_crop_window(
    size: tf.Tensor,
    seed: tf.Tensor,
    scale: Sequence[float] = DEFAULT_CROP_SCALE,
    ratio: Sequence[float] = DEFAULT_CROP_RATIO,
) -> tf.Tensor:
    """Samples an Inception-style crop window.

    The window covers a fraction of the image area drawn from `scale` (and at
    least 10% of it) with an aspect ratio drawn from `ratio`; after 10 failed
    attempts it is the whole image.

    Args:
        size: int32 [height, width] of the image.
        seed: Stateless seed, shape [2].
        scale: (min, max) fraction of the image area.
        ratio: (min, max) aspect ratio, width / height.

    Returns:
        int32 tensor [y, x, h, w].
    """
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([tf.cast(size, tf.int32), [3]], axis=0),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=_MIN_OBJECT_COVERED,
        aspect_ratio_range=tuple(ratio),
        area_range=tuple(scale),
        max_attempts=_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])


def center_crop_window(size: tf.Tensor, crop_fraction: float) -> tf.Tensor:
    """The centred square of side `crop_fraction` times the shorter side.

    Args:
        size: int32 [height, width].
        crop_fraction: Fraction of the shorter side, in (0, 1].

    Returns:
        int32 tensor [y, x, h, w].
    """
    size = tf.cast(size, tf.int32)
    side = tf.cast(tf.round(crop_fraction * tf.cast(tf.reduce_min(size), tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, tf.reduce_min(size))
    return tf.stack([(size[0] - side) // 2, (size[1] - side) // 2, side, side])


def resize(images: tf.Tensor, resolution: int) -> tf.Tensor:
    """Bicubic resize to a square, clipped and rounded to valid pixel values.

    Downscaling is antialiased (the kernel widens with the scale, as in PIL),
    so a patch resized in two steps is close to one resized in one step, and a
    low-resolution child sees what a low-resolution camera would.

    Args:
        images: [H, W, 3] or [B, H, W, 3], values in [0, 255], any real or
            integer dtype.
        resolution: Output side.

    Returns:
        float32 images [.., resolution, resolution, 3] with integer values in
        [0, 255].
    """
    x = tf.cast(images, tf.float32)
    x = tf.image.resize(x, [resolution, resolution], method=INTERPOLATION, antialias=True)
    return tf.round(tf.clip_by_value(x, 0.0, 255.0))


def train_patch(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    base_resolution: int,
    kind: str,
    augment: str = "autoaugment",
    crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
    crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
) -> tf.Tensor:
    """Random resized crop to the base patch, horizontal flip, augmentation.

    Args:
        image: A decoded uint8 image [H, W, 3] (kind "pixels"), encoded bytes
            (kind "bytes") or a file path (kind "path").
        seed: Stateless seed, shape [2]; the same seed gives the same patch.
        base_resolution: Side of the patch.
        kind: "pixels", "bytes" or "path".
        augment: One of `augment.AUGMENT_NAMES`.
        crop_scale: (min, max) area fraction of the random crop.
        crop_ratio: (min, max) aspect ratio of the random crop.

    Returns:
        uint8 patch [base_resolution, base_resolution, 3].

    Raises:
        ValueError: If `kind` or `augment` is unknown.
    """
    crop_seed, flip_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    if kind == "pixels":
        window = random_crop_window(tf.shape(image)[:2], crop_seed, crop_scale, crop_ratio)
        crop = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
    elif kind in ("bytes", "path"):
        contents = tf.io.read_file(image) if kind == "path" else image
        crop = _decode_cropped(
            contents, lambda size: random_crop_window(size, crop_seed, crop_scale, crop_ratio)
        )
    else:
        raise ValueError(f"unknown image kind {kind!r}; expected 'pixels', 'bytes' or 'path'")
    patch = tf.cast(resize(crop, base_resolution), tf.uint8)
    patch = tf.image.stateless_random_flip_left_right(patch, flip_seed)
    patch = augment_lib.augment(patch, aug_seed, augment)
    patch.set_shape([base_resolution, base_resolution, 3])
    return patch


def resize_patches(patches: tf.Tensor, resolutions: Sequence[int]) -> dict[int, tf.Tensor]:
    """Resizes one batch of base patches to every resolution (the shared patch).

    Args:
        patches: uint8 or float [B, base, base, 3] with values in [0, 255].
        resolutions: Output sides.

    Returns:
        {resolution: float32 [B, resolution, resolution, 3]}, integer values in
        [0, 255]; a resolution equal to the base side is the patch itself.
    """
    base = patches.shape[1]
    out = {}
    for r in resolutions:
        out[int(r)] = tf.cast(patches, tf.float32) if r == base else resize(patches, int(r))
    return out


def eval_image(
    image: tf.Tensor,
    resolution: int,
    *,
    kind: str,
    crop_fraction: float = DEFAULT_EVAL_CROP_FRACTION,
) -> tf.Tensor:
    """Centre crop of `crop_fraction` of the shorter side, bicubic resize.

    Args:
        image: Decoded uint8 [H, W, 3], encoded bytes or a path (see `kind`).
        resolution: Output side.
        kind: "pixels", "bytes" or "path".
        crop_fraction: Fraction of the shorter side kept, in (0, 1].

    Returns:
        uint8 image [resolution, resolution, 3].

    Raises:
        ValueError: If `kind` is unknown or `crop_fraction` is not in (0, 1].
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    if kind == "pixels":
        window = center_crop_window(tf.shape(image)[:2], crop_fraction)
        crop = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
    elif kind in ("bytes", "path"):
        contents = tf.io.read_file(image) if kind == "path" else image
        crop = _decode_cropped(contents, lambda size: center_crop_window(size, crop_fraction))
    else:
        raise ValueError(f"unknown image kind {kind!r}; expected 'pixels', 'bytes' or 'path'")
    out = tf.cast(resize(crop, resolution), tf.uint8)
    out.set_shape([resolution, resolution, 3])
    return out
