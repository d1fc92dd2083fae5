"""The device half of the input pipeline: uint8 transport and the device resize of the patch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_bignas.data import (
    build_train_dataset,
    network_images,
    network_input,
    transforms,
)
from tf_bignas.data.device import resize_matrix, resize_on_device
from tf_bignas.model import Supernet
from tf_bignas.space import get_space
from tf_bignas.train.step import SandwichOptions, SandwichStep, sample_children

RES = (16, 24, 32)


def _batch(transport: str, seed: int = 0, batch: int = 16) -> dict:
    ds = build_train_dataset(
        "embedded", "train", RES, batch, augment="randaugment", seed=seed, transport=transport
    )
    return next(iter(ds))


def test_transports_carry_the_same_images_in_fewer_bytes():
    as_float, as_uint8, as_patch = (_batch(t) for t in ("float", "uint8", "patch"))
    assert set(as_patch) == {"patch", "label"} and as_patch["patch"].dtype == tf.uint8
    assert as_patch["patch"].shape == (16, 32, 32, 3)
    for r in RES:
        assert as_uint8["images"][r].dtype == tf.uint8
        np.testing.assert_allclose(
            network_input(as_uint8["images"][r]).numpy(), as_float["images"][r].numpy(), atol=1e-6
        )
    np.testing.assert_array_equal(as_uint8["label"], as_patch["label"])
    # The patch is the largest resolution here (base = max(RES)).
    np.testing.assert_array_equal(as_uint8["images"][32], as_patch["patch"])
    nbytes = {
        "float": sum(4 * r * r * 3 for r in RES),
        "uint8": sum(r * r * 3 for r in RES),
        "patch": 32 * 32 * 3,
    }
    assert nbytes["uint8"] * 4 == nbytes["float"] and nbytes["patch"] < nbytes["uint8"]
    with pytest.raises(ValueError, match="unknown transport 'bf16'"):
        build_train_dataset("embedded", "train", RES, 16, transport="bf16")
    with pytest.raises(ValueError, match="needs 'images' or 'patch'"):
        network_images({"label": as_patch["label"]}, RES)
    with pytest.raises(ValueError, match=r"no images at resolutions \[48\]"):
        network_images(as_uint8, (16, 48))


def test_device_resize_equals_the_host_resize_also_under_xla():
    patch = _batch("patch", seed=3, batch=32)["patch"]
    # Real digits, then texture, on a larger patch, as ImageNet's 224 -> 192/288/320.
    big = transforms.resize(patch, 56)
    noise = tf.random.stateless_uniform(big.shape, (1, 2), -30.0, 30.0)
    big = tf.cast(tf.clip_by_value(tf.round(big + noise), 0.0, 255.0), tf.uint8)
    xla = tf.function(resize_on_device, jit_compile=True, reduce_retracing=False)
    for r in (24, 48, 56, 80):
        host = transforms.resize(big, r).numpy()
        for device in (resize_on_device(big, r).numpy(), xla(big, r).numpy()):
            diff = np.abs(device - host)
            assert diff.max() <= 1.0  # float rounding at a .5 tie, at most one level
            assert np.mean(diff > 0) < 1e-3
            assert device.shape == host.shape == (32, r, r, 3)
    # Each row of a resampling matrix sums to one (a flat image stays flat).
    np.testing.assert_allclose(resize_matrix(56, 24).sum(axis=1), 1.0, atol=1e-5)


def test_the_step_trains_the_same_from_a_patch_as_from_float_images():
    space = get_space("bignas_tiny")
    losses = {}
    for transport in ("float", "patch"):
        keras.utils.set_random_seed(0)
        net = Supernet(space, num_classes=10)
        options = SandwichOptions(num_random=0, seed=0)  # largest and smallest: a short trace
        step = SandwichStep(net, keras.optimizers.SGD(0.05), options, 16)
        losses[transport] = step(_batch(transport), sample_children(net, 0, options), 0)["losses"]
    np.testing.assert_allclose(losses["patch"], losses["float"], rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(losses["float"]))
