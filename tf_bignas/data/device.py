"""The device half of the input pipeline: what runs inside the compiled step.

The host sends training batches in one of three transports (`TRANSPORTS`,
chosen with `build_train_dataset(transport=...)`):

- ``"float"``: `{"images": {res: float32 normalised}}`, everything done on the
  host (4 bytes per channel per resolution);
- ``"uint8"``: `{"images": {res: uint8}}`, resized on the host, normalised on
  the device (a quarter of the bytes);
- ``"patch"``: `{"patch": uint8 [B, base, base, 3]}`, only the shared base
  patch; the device resizes it to every training resolution and normalises.

`network_images` turns any of them into the normalised float32 images the
supernet takes, with the same `Normalization` as the host would have used.

The device resize is the host's antialiased bicubic resize
(`transforms.resize`: `tf.image.resize(..., "bicubic", antialias=True)`,
rounded and clipped to pixel values) applied one image axis at a time with
the host's own weights: the resampling matrices are the host resize of an
identity image, and each output pixel sums its few (4-5) taps in float32. It
runs under XLA (TPU), where `tf.image.resize` with antialiasing does not (its
ScaleAndTranslate op has no XLA kernel). The result equals the host resize
except where float rounding in the sums tips a value at a .5 tie: by one
level, in a few values per million (measured in `benchmarks/data_pipeline.py`,
tested in tests/test_data_device.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization
from tf_bignas.data.transforms import INTERPOLATION

TRANSPORTS = ("float", "uint8", "patch")


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """The [size_out, size_in] matrix of the host's antialiased bicubic resize along one axis.

    Computed eagerly (also when called while tracing), so that it enters a
    compiled function as a constant.

    Args:
        size_in: Input side.
        size_out: Output side.

    Returns:
        float32 weights: row i holds the input weights of output pixel i.
    """
    with tf.init_scope():
        eye = tf.eye(size_in, dtype=tf.float32)[None, :, :, None]
        weights = tf.image.resize(eye, [size_out, size_in], method=INTERPOLATION, antialias=True)
        return weights[0, :, :, 0].numpy()


def _band(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A resampling matrix as taps: (input index [out, K], weight [out, K]), K the widest band."""
    nonzero = matrix != 0
    first = nonzero.argmax(axis=1)
    last = matrix.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1)
    taps = int((last - first).max()) + 1
    index = np.minimum(first[:, None] + np.arange(taps)[None, :], matrix.shape[1] - 1)
    weight = np.take_along_axis(matrix, index, axis=1)
    weight[first[:, None] + np.arange(taps)[None, :] > last[:, None]] = 0.0  # past the band
    return index.astype(np.int32), weight.astype(np.float32)


def _resample(x: tf.Tensor, matrix: np.ndarray, axis: int) -> tf.Tensor:
    """`matrix` applied along `axis` of x, as K shifted gathers times weights (exact float32)."""
    index, weight = _band(matrix)
    shape = [1] * len(x.shape)
    shape[axis] = matrix.shape[0]
    out = None
    for k in range(index.shape[1]):
        term = tf.gather(x, index[:, k], axis=axis) * tf.constant(weight[:, k].reshape(shape))
        out = term if out is None else out + term
    return out


def resize_on_device(patches: tf.Tensor, resolution: int) -> tf.Tensor:
    """`transforms.resize` of a batch of square patches, in ops that XLA compiles.

    Each axis is resampled with the host resize's own weights (`resize_matrix`),
    as a few (4-5 for ImageNet sizes) gathers times weights, summed in float32
    on the vector units: no matrix unit, whose reduced-precision passes on TPUs
    (bfloat16) and GPUs (TF32) would round the weights.

    Args:
        patches: [B, S, S, 3] pixels in [0, 255] (uint8 or float), static S.
        resolution: Output side.

    Returns:
        float32 [B, resolution, resolution, 3], integer values in [0, 255].
    """
    x = tf.cast(patches, tf.float32)
    side = patches.shape[1]
    if side == resolution:
        return x
    matrix = resize_matrix(side, resolution)
    x = _resample(_resample(x, matrix, axis=1), matrix, axis=2)
    return tf.round(tf.clip_by_value(x, 0.0, 255.0))


def network_input(
    images: tf.Tensor, normalization: Normalization = DEFAULT_NORMALIZATION
) -> tf.Tensor:
    """What the network takes: uint8 pixels are normalised, float images pass as they are.

    Float images are taken to be normalised already (the float transport and
    `build_eval_dataset`'s default); uint8 images are pixels in [0, 255].

    Args:
        images: uint8 pixels or normalised float images, NHWC.
        normalization: The input normalisation.

    Returns:
        float32 normalised images.
    """
    if images.dtype == tf.uint8:
        return normalization.apply(images)
    return images


def network_images(
    batch: Mapping[str, Any],
    resolutions: Sequence[int],
    normalization: Normalization = DEFAULT_NORMALIZATION,
) -> dict[int, tf.Tensor]:
    """The normalised float32 images at every training resolution, from any transport.

    Args:
        batch: A training batch of `build_train_dataset` (any transport).
        resolutions: The training resolutions.
        normalization: The input normalisation.

    Returns:
        {resolution: float32 [B, r, r, 3]}.

    Raises:
        ValueError: If the batch has neither "images" nor "patch", or lacks a resolution.
    """
    if "patch" in batch:
        patch = batch["patch"]
        return {int(r): normalization.apply(resize_on_device(patch, int(r))) for r in resolutions}
    if "images" not in batch:
        raise ValueError(f"a training batch needs 'images' or 'patch', got keys {sorted(batch)}")
    images = batch["images"]
    missing = [r for r in resolutions if r not in images]
    if missing:
        raise ValueError(f"the batch has no images at resolutions {missing}; has {sorted(images)}")
    return {int(r): network_input(images[r], normalization) for r in resolutions}
