"""The most important test: a sliced child gives the supernet's outputs."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from supernet_testutil import randomize_weights

from tf_bignas.model import Supernet, cost
from tf_bignas.model.cost import count_model_macs
from tf_bignas.model.slicing import UncalibratedChildError, build_child_model, extract_child
from tf_bignas.space import InvalidArchError, bignas_mobilenetv2, get_space


def _children(space, resolution, num_random=20):
    archs = [space.largest(resolution), space.smallest(resolution)]
    archs += [space.sample((resolution, s), resolutions=[resolution]) for s in range(num_random)]
    return archs


@pytest.fixture(scope="module")
def cifar_net():
    space = get_space("bignas_cifar")
    net = Supernet(space, num_classes=10)
    randomize_weights(net, seed=1)
    return net


@pytest.mark.parametrize("resolution", [24, 32])
def test_child_matches_supernet_for_22_children(cifar_net, resolution):
    space = cifar_net.space
    images = tf.random.stateless_normal([2, resolution, resolution, 3], seed=[resolution, 0])
    worst = 0.0
    for arch in _children(space, resolution):
        child = extract_child(cifar_net, arch, allow_uncalibrated=True)
        want = cifar_net(images, arch=arch, training=False).numpy()
        got = child(images, training=False).numpy()
        worst = max(worst, float(np.max(np.abs(want - got))))
        assert np.abs(want).max() > 1e-3  # a real signal, not all zeros
    assert worst <= 1e-5


def test_default_space_extremes_match_and_round_trip_keras(tmp_path):
    space = bignas_mobilenetv2().with_resolutions([64, 96])
    net = Supernet(space, num_classes=1000)
    randomize_weights(net, seed=2)
    for resolution in (64, 96):
        images = tf.random.stateless_normal([2, resolution, resolution, 3], seed=[1, resolution])
        for arch in (space.largest(resolution), space.smallest(resolution)):
            child = extract_child(net, arch, allow_uncalibrated=True)
            want = net(images, arch=arch).numpy()
            assert np.max(np.abs(want - child(images).numpy())) <= 1e-5
    path = os.path.join(tmp_path, "child.keras")
    child.save(path)
    loaded = keras.models.load_model(path)
    assert np.max(np.abs(loaded(images).numpy() - want)) <= 1e-5
    assert {type(layer).__module__.split(".")[0] for layer in loaded.layers} == {"keras"}


def test_child_uses_stored_calibrated_stats(cifar_net):
    space = cifar_net.space
    arch = space.sample(5, resolutions=[32])
    images = tf.random.stateless_normal([2, 32, 32, 3], seed=[3, 3])
    rng = np.random.default_rng(0)
    stats = {
        name: (rng.normal(size=ch).astype(np.float32), rng.uniform(0.5, 2, ch).astype(np.float32))
        for name, ch in cifar_net.bn_channels(arch).items()
    }
    cifar_net.bn_stats.put(arch, stats)
    child = extract_child(cifar_net, arch)
    saved = [v.numpy() for v in cifar_net.weights]
    cifar_net.load_bn_stats(arch)
    want = cifar_net(images, arch=arch).numpy()
    for v, value in zip(cifar_net.weights, saved):
        v.assign(value)
    assert np.max(np.abs(child(images).numpy() - want)) <= 1e-5
    bn = child.get_layer("stem_bn")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), stats["stem_bn"][0])


def test_extract_rejects_invalid_arch(cifar_net):
    import dataclasses

    arch = dataclasses.replace(cifar_net.space.largest(), depths=(2, 2, 3, 4))
    with pytest.raises(InvalidArchError, match=r"depths\[3\] \(stage4\) = 4"):
        extract_child(cifar_net, arch)


def test_extract_refuses_an_uncalibrated_child_unless_asked(cifar_net):
    arch = cifar_net.space.sample(11, resolutions=[24])
    assert arch not in cifar_net.bn_stats
    with pytest.raises(UncalibratedChildError, match=r"no calibrated BN statistics.*calibrate it"):
        extract_child(cifar_net, arch)
    assert extract_child(cifar_net, arch, allow_uncalibrated=True).count_params() > 0


def test_built_child_has_the_sliced_childs_layers_and_costs(cifar_net):
    space = cifar_net.space
    for arch in (space.largest(32), space.smallest(24), space.sample(4, resolutions=[32])):
        sliced = extract_child(cifar_net, arch, allow_uncalibrated=True)
        built = build_child_model(space, arch, 10, dropout_rate=cifar_net.dropout_rate)
        assert [(type(a), a.name) for a in sliced.layers] == [
            (type(b), b.name) for b in built.layers
        ]
        assert built.count_params() == sliced.count_params() == cost.params(space, arch, 10)
        assert count_model_macs(built) == cost.macs(space, arch, 10)
