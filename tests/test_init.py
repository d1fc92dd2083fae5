"""The supernet starts from EfficientNet's initialisation (variance scaling on fan-out)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_bignas.model import Supernet
from tf_bignas.model.layers import DynamicConv2D, DynamicDense, DynamicDepthwiseConv2D
from tf_bignas.space import get_space


def _expected_std(path: str, shape: tuple[int, ...]) -> float:
    """The std EfficientNet's initialisers give a kernel of this shape."""
    if path.endswith("depthwise_kernel"):
        k, _, _, multiplier = shape
        return float(np.sqrt(2.0 / (k * k * multiplier)))
    if len(shape) == 4:
        k, _, _, out = shape
        return float(np.sqrt(2.0 / (k * k * out)))
    return float(1.0 / np.sqrt(3.0 * shape[1]))  # uniform on +-1/sqrt(units)


def test_depthwise_std_is_set_by_the_kernel_taps_not_the_channels():
    # The default space's widest depthwise layer: 5x5 over 2,112 channels. With
    # C taken as the fan (he_normal) it started at std 0.006.
    wide = DynamicDepthwiseConv2D(2112, 5).kernel.numpy()
    narrow = DynamicDepthwiseConv2D(24, 5).kernel.numpy()
    assert wide.std() == pytest.approx(np.sqrt(2.0 / 25.0), rel=0.03)  # 0.283
    assert narrow.std() == pytest.approx(np.sqrt(2.0 / 25.0), rel=0.1)
    small = DynamicDepthwiseConv2D(2112, 3).kernel.numpy()
    assert small.std() == pytest.approx(np.sqrt(2.0 / 9.0), rel=0.03)  # 0.471
    # Untruncated normal, as EfficientNet's conv_kernel_initializer.
    assert np.abs(wide).max() > 3.5 * wide.std()


def test_conv_and_dense_std_follow_the_fan_out():
    expand = DynamicConv2D(352, 2112).kernel.numpy()
    assert expand.std() == pytest.approx(np.sqrt(2.0 / 2112), rel=0.02)  # 0.031
    stem = DynamicConv2D(3, 40, kernel_size=3, strides=2).kernel.numpy()
    assert stem.std() == pytest.approx(np.sqrt(2.0 / (9 * 40)), rel=0.1)  # 0.075
    dense = DynamicDense(1408, 1000).kernel.numpy()
    assert np.abs(dense).max() <= 1.0 / np.sqrt(1000)
    assert np.abs(dense).max() > 0.99 / np.sqrt(1000)
    assert dense.std() == pytest.approx(1.0 / np.sqrt(3000), rel=0.02)  # 0.018
    bias = DynamicConv2D(8, 32, use_bias=True).bias.numpy()
    np.testing.assert_array_equal(bias, 0.0)


def test_every_supernet_kernel_starts_as_efficientnet():
    keras.utils.set_random_seed(0)
    net = Supernet(get_space("bignas_tiny"), num_classes=10)
    pooled: dict[str, list[np.ndarray]] = {}
    for v in net.trainable_variables:
        name = v.path.rsplit("/", 1)[-1]
        if name not in ("kernel", "depthwise_kernel"):
            continue
        w = v.numpy()
        layer = v.path.rsplit("/", 2)[-2]
        kind = "dense" if w.ndim == 2 else name if "_se_" not in layer else layer.rsplit("_")[-1]
        want = _expected_std(v.path, w.shape)
        # Loose per kernel (the smallest hold tens of values) ...
        assert w.std() == pytest.approx(want, rel=0.1 if w.size >= 2000 else 0.35), v.path
        pooled.setdefault(kind, []).append((w / want).ravel())
    # ... and tight per kind, over all its kernels scaled to unit std (four
    # standard errors of the sample RMS): fan-in or he_normal on a depthwise
    # kernel would be off by 2x or more.
    assert set(pooled) == {"kernel", "depthwise_kernel", "reduce", "expand", "dense"}
    for kind, values in pooled.items():
        values = np.concatenate(values)
        tol = max(0.03, 4.0 / np.sqrt(2.0 * values.size))
        assert np.sqrt(np.mean(values**2)) == pytest.approx(1.0, rel=tol), (kind, values.size)
