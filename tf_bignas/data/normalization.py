"""Input normalisation: the one place that defines what the network expects.

Every image that reaches the supernet, a sliced child or an exported TFLite
model goes through the same `Normalization`: float32 RGB pixels in [0, 255],
NHWC, minus a per-channel mean, divided by a per-channel std. The input
pipeline calls `apply`; export either bakes `keras_layer()` into the model or
writes `to_dict()` into the model's metadata, so the deployed model documents
exactly the input it was trained on.

Example:
    >>> norm = DEFAULT_NORMALIZATION
    >>> x = norm.apply(tf.fill([1, 2, 2, 3], 255.0))
    >>> norm.to_dict()["input_range"]
    [0.0, 255.0]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel normalisation of RGB images with pixel values in [0, 255].

    Attributes:
        mean: Per-channel mean (R, G, B) on the [0, 255] scale.
        std: Per-channel standard deviation (R, G, B) on the [0, 255] scale.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN_RGB
    std: tuple[float, float, float] = IMAGENET_STD_RGB

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"Normalization.{name} must have 3 values (R, G, B), got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"Normalization.std must be positive, got {self.std}")

    def apply(self, images: tf.Tensor) -> tf.Tensor:
        """Normalises images.

        Args:
            images: RGB images, any real or integer dtype, values in [0, 255],
                channels last.

        Returns:
            float32 tensor of the same shape: `(images - mean) / std`.
        """
        x = tf.cast(images, tf.float32)
        return (x - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    def invert(self, images: tf.Tensor) -> tf.Tensor:
        """Undoes `apply`.

        Args:
            images: Normalised float images, channels last.

        Returns:
            float32 images on the [0, 255] scale.
        """
        x = tf.cast(images, tf.float32)
        return x * tf.constant(self.std, tf.float32) + tf.constant(self.mean, tf.float32)

    def keras_layer(self, name: str = "input_normalization") -> keras.layers.Layer:
        """A Keras layer computing `apply`, to bake into an exported model.

        Args:
            name: Layer name.

        Returns:
            A `keras.layers.Normalization` with this mean and variance (std squared).
        """
        return keras.layers.Normalization(
            axis=-1,
            mean=list(self.mean),
            variance=list(float(s) ** 2 for s in self.std),
            name=name,
        )

    def to_dict(self) -> dict[str, Any]:
        """The input contract as JSON-able metadata for exported models.

        Returns:
            A dict with the colour order, layout, dtype, input range, mean, std
            and the formula.
        """
        return {
            "color_order": "RGB",
            "layout": "NHWC",
            "dtype": "float32",
            "input_range": [0.0, 255.0],
            "mean": list(self.mean),
            "std": list(self.std),
            "formula": "(pixel - mean) / std",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Reads the metadata written by `to_dict`.

        Args:
            data: A dict with at least "mean" and "std".

        Returns:
            The Normalization.

        Raises:
            ValueError: If "mean" or "std" is missing.
        """
        missing = [k for k in ("mean", "std") if k not in data]
        if missing:
            raise ValueError(f"normalization metadata lacks {missing}; got keys {sorted(data)}")
        return cls(mean=tuple(data["mean"]), std=tuple(data["std"]))

    def apply_numpy(self, images: np.ndarray) -> np.ndarray:
        """NumPy twin of `apply`, for host-side preprocessing (e.g. TFLite).

        Args:
            images: RGB images in [0, 255], channels last.

        Returns:
            float32 normalised images.
        """
        x = np.asarray(images, dtype=np.float32)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


DEFAULT_NORMALIZATION = Normalization()
