"""Tests of tf_bignas.model.supernet: modes, tracing, XLA, BN statistics, paper switches."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from supernet_testutil import graph_op_types, randomize_weights

from tf_bignas.data import build_train_dataset
from tf_bignas.model import BNStatsStore, Supernet
from tf_bignas.model.layers import (
    DynamicBatchNorm,
    depthwise_conv2d_same,
    pointwise_conv,
    swish_native_grad,
)
from tf_bignas.model.native import native_ops
from tf_bignas.space import InvalidArchError, SearchSpace, StageSpec, get_space


@pytest.fixture(scope="module")
def space():
    return get_space("bignas_tiny")


def _images(res, batch=4, seed=0):
    return tf.random.stateless_normal([batch, res, res, 3], seed=[seed, res])


def test_new_child_never_retraces_only_new_resolution(space):
    net = Supernet(space, num_classes=10)

    @tf.function
    def step(images, arch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(images, arch=arch, training=True)))
        return loss, tape.gradient(loss, net.trainable_variables)

    for seed in range(12):
        arch = space.sample(seed)
        step(_images(arch.resolution), net.encode_arch(arch))
    assert step.experimental_get_tracing_count() == len(space.train_resolutions)


def _stock_and_ours(stock, ours, stride, in_cond):
    """A traced function: (outputs, gradients) of a stock convolution and ours.

    Every shape is dynamic, as in slice mode; with `in_cond` the convolution's
    input is a `tf.cond` branch's input (a block without an expand conv),
    beside a shortcut, as in a skippable block.
    """
    spec = [tf.TensorSpec([None] * 4)] * 3

    @tf.function(input_signature=spec)
    def run(x, w, dy):
        out = {}
        for name, fn in (("stock", stock), ("ours", ours)):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                if in_cond:
                    y = tf.cond(
                        tf.size(x) > 0,
                        lambda fn=fn: fn(x, w) + x[:, ::stride, ::stride, :1],
                        lambda fn=fn: fn(x, w),
                    )
                else:
                    y = fn(x, w)
            out[name] = (y, *tape.gradient(y, [x, w], output_gradients=dy))
        return out

    return run


def _op_types(run):
    """The op types of a `_stock_and_ours` function's graph, its gradients' included."""
    assert native_ops().library is not None, native_ops().reason
    return graph_op_types(run.get_concrete_function())


def _check_gradients(got, stock_dx_exact, same_forward=True):
    (y0, dx0, dw0), (y1, dx1, dw1) = ([t.numpy() for t in got[n]] for n in ("stock", "ours"))
    if same_forward:
        np.testing.assert_array_equal(y1, y0)  # the same forward op
    else:  # the same function, fused or not by Grappler
        np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
    for a, b in ((dx1, dx0), (dw1, dw0)):
        assert a.shape == b.shape and np.abs(b).max() > 0
        if stock_dx_exact and a is dx1:
            np.testing.assert_array_equal(a, b)  # the same op
        else:  # the same sums in another kernel's order
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("in_cond", [False, True])
def test_depthwise_filter_gradient_is_the_stock_one(stride, in_cond):
    run = _stock_and_ours(
        lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], "SAME"),
        lambda x, w: depthwise_conv2d_same(x, w, stride),
        stride,
        in_cond,
    )
    rng = np.random.default_rng(stride)
    for h, w, c, k in [(7, 7, 5, 3), (8, 9, 16, 5), (1, 1, 8, 7), (2, 2, 32, 5), (13, 6, 3, 7)]:
        x = tf.constant(rng.normal(size=(3, h, w, c)), tf.float32)
        kernel = tf.constant(rng.normal(size=(k, k, c, 1)), tf.float32)
        dy = tf.constant(rng.normal(size=(3, -(-h // stride), -(-w // stride), c)), tf.float32)
        _check_gradients(run(x, kernel, dy), stock_dx_exact=True)
    assert "BignasDepthwiseFilterGrad" in _op_types(run)  # the native kernel was checked


@pytest.mark.parametrize("matmul_forward", [False, True])
@pytest.mark.parametrize("in_cond", [False, True])
def test_pointwise_gradients_are_the_stock_ones(in_cond, matmul_forward):
    run = _stock_and_ours(
        lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"),
        lambda x, w: pointwise_conv(x, w, matmul_forward),
        1,
        in_cond,
    )
    rng = np.random.default_rng(0)
    for h, w, c, n in [(7, 7, 5, 3), (8, 9, 16, 40), (1, 1, 8, 7), (2, 2, 96, 24)]:
        x = tf.constant(rng.normal(size=(3, h, w, c)), tf.float32)
        kernel = tf.constant(rng.normal(size=(1, 1, c, n)), tf.float32)
        dy = tf.constant(rng.normal(size=(3, h, w, n)), tf.float32)
        got = run(x, kernel, dy)
        _check_gradients(got, stock_dx_exact=False, same_forward=not matmul_forward)
    alone = tf.function(lambda x, w: pointwise_conv(x, w, matmul_forward))
    forward = graph_op_types(alone.get_concrete_function(x, kernel))
    assert ("Conv2D" in forward) != matmul_forward and ("MatMul" in forward) == matmul_forward


@pytest.mark.parametrize("in_cond", [False, True])
def test_native_swish_gradient_is_the_stock_one(in_cond):
    # The reference is TensorFlow's autodiff of x * sigmoid(x): `tf.nn.silu`'s own
    # custom gradient meets the unfed-placeholder bug in a `tf.cond` branch.
    run = _stock_and_ours(
        lambda x, w: x * tf.sigmoid(x) * w, lambda x, w: swish_native_grad(x) * w, 1, in_cond
    )
    rng = np.random.default_rng(1)
    # The last shape spans several of the kernel's 2048-element blocks and threads.
    for shape in [(3, 7, 7, 5), (3, 1, 1, 8), (2, 33, 31, 96)]:
        x = tf.constant(4 * rng.normal(size=shape), tf.float32)
        scale = tf.constant(rng.normal(size=(1, 1, 1, shape[3])), tf.float32)
        dy = tf.constant(rng.normal(size=shape), tf.float32)
        _check_gradients(run(x, scale, dy), stock_dx_exact=False, same_forward=False)
    assert "BignasSwishGrad" in _op_types(run)


@pytest.mark.parametrize("in_cond", [False, True])
@pytest.mark.parametrize("act", [None, "swish"])
def test_native_batch_norm_is_the_stock_one(in_cond, act):
    # The layer as a training step calls it, with TensorFlow's ops (FusedBatchNormV3,
    # then swish) and on the native kernel; w carries gamma and beta.
    layer = DynamicBatchNorm(160)

    def bn(native):
        def fn(x, w):
            w = tf.reshape(w, [-1])
            weights = {"gamma": w, "beta": tf.sin(3.0 * w)}
            return layer(x, bn_mode="batch", mode="slice", weights=weights, act=act, native=native)

        return fn

    run = _stock_and_ours(bn(False), bn(True), 1, in_cond)
    rng = np.random.default_rng(2)
    # Odd channels and rows; one row per channel; several blocks and row groups.
    for shape, loc in [((3, 7, 5, 13), 0.0), ((4, 1, 1, 24), 0.0), ((8, 17, 19, 160), 5.0)]:
        x = tf.constant(rng.normal(loc, 2.0, size=shape), tf.float32)
        w = tf.constant(rng.normal(size=(1, 1, 1, shape[3])), tf.float32)
        dy = tf.constant(rng.normal(size=shape), tf.float32)
        got = run(x, w, dy)
        for a, b in zip(*([t.numpy() for t in got[n]] for n in ("ours", "stock"))):
            assert a.shape == b.shape and np.abs(b).max() > 0
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * np.abs(b).max())
    ops = _op_types(run)
    assert {"BignasBatchNorm", "BignasBatchNormGrad"} <= ops
    assert "FusedBatchNormV3" in ops  # the stock side is the stock op


def test_mask_mode_under_xla_matches_slice_mode(space):
    sliced = Supernet(space, num_classes=10)
    randomize_weights(sliced, seed=3)
    masked = Supernet(space, num_classes=10, mode="mask")
    masked.set_weights(sliced.get_weights())

    @tf.function(jit_compile=True)
    def xla_step(images, arch):
        with tf.GradientTape() as tape:
            logits = masked(images, arch=arch, training=True)
            loss = tf.reduce_mean(tf.square(logits))
        return logits, tape.gradient(loss, masked.trainable_variables)

    images = _images(32)
    for seed in range(5):
        arch = space.sample(seed, resolutions=[32])
        logits, grads = xla_step(images, masked.encode_arch(arch))
        want = sliced(images, arch=arch, training=True).numpy()
        assert np.max(np.abs(logits.numpy() - want)) < 1e-4
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
        assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0
    assert xla_step.experimental_get_tracing_count() == 1


def test_mask_mode_gradients_vanish_outside_the_child(space):
    net = Supernet(space, num_classes=10, mode="mask")
    randomize_weights(net, seed=4)
    arch = space.smallest(32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(net(_images(32), arch=arch, training=True)))
    grads = dict(
        zip([v.path for v in net.trainable_variables], tape.gradient(loss, net.trainable_variables))
    )
    stem = grads["stem_conv/kernel"].numpy()
    assert (
        np.abs(stem[..., arch.widths[0] :]).max() == 0
        and np.abs(stem[..., : arch.widths[0]]).max() > 0
    )
    # The second layer of each stage is inactive in the smallest child.
    second = [p for p in grads if "l2_project_conv" in p]
    assert second and all(np.abs(grads[p].numpy()).max() == 0 for p in second)


def test_paper_switches(space):
    net = Supernet(space, num_classes=10)
    residual = [b for b in net.blocks if b.plan.residual]
    assert residual and all(np.all(b.project_bn.gamma.numpy() == 0) for b in residual)
    firsts = [b for b in net.blocks if b.plan.index == 0]
    assert all(b.plan.residual and b.plan.shortcut_conv for b in firsts)
    assert [b.plan.shortcut_pool for b in firsts] == [s.stride == 2 for s in space.stages]
    plain = Supernet(space, num_classes=10, zero_init_last_bn=False, stage_shortcuts=False)
    assert all(np.all(b.project_bn.gamma.numpy() == 1) for b in plain.blocks)
    assert not any(b.plan.residual for b in plain.blocks if b.plan.index == 0)
    assert len(plain.weights) < len(net.weights)


def test_calibration_is_an_exact_cumulative_average(space):
    net = Supernet(space, num_classes=10)
    randomize_weights(net, seed=5)
    arch = space.sample(2, resolutions=[16])
    a, b = _images(16, batch=3, seed=1), _images(16, batch=5, seed=2)
    net.reset_calibration()
    net(a, arch=arch, training=False, bn_mode="calibrate")
    net(b, arch=arch, training=False, bn_mode="calibrate")
    stats = net.calibrated_bn_stats(arch)
    # The stem BN sees the stem conv output, whose exact moments we can compute.
    stem_ch = arch.widths[0]
    conv = tf.concat([net.stem_conv(a, out_ch=stem_ch), net.stem_conv(b, out_ch=stem_ch)], axis=0)
    mean, var = tf.nn.moments(conv, axes=[0, 1, 2])
    np.testing.assert_allclose(stats["stem_bn"][0], mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(stats["stem_bn"][1], var.numpy(), rtol=1e-4, atol=1e-5)
    assert set(stats) == set(net.bn_channels(arch))
    assert all(
        m.shape == (ch,) for (m, _), ch in zip(stats.values(), net.bn_channels(arch).values())
    )


def test_bn_stats_store_round_trip_and_use(space, tmp_path):
    net = Supernet(space, num_classes=10)
    randomize_weights(net, seed=6)
    arch = space.sample(9, resolutions=[16])
    images = _images(16)
    net.reset_calibration()
    net(images, arch=arch, bn_mode="calibrate")
    net.bn_stats.put(arch, net.calibrated_bn_stats(arch))
    path = str(tmp_path / "bn_stats.npz")
    net.bn_stats.save(path)
    loaded = BNStatsStore.load(path)
    assert arch in loaded and len(loaded) == 1 and loaded.archs() == [arch]
    for name, (m, v) in net.bn_stats.get(arch).items():
        np.testing.assert_array_equal(loaded.get(arch)[name][0], m)
        np.testing.assert_array_equal(loaded.get(arch)[name][1], v)
    before = net(images, arch=arch, training=False).numpy()
    net.load_bn_stats(arch)
    after = net(images, arch=arch, training=False).numpy()
    batch = net(images, arch=arch, training=True).numpy()
    assert np.max(np.abs(after - before)) > 1e-3
    # Calibrated on this very batch: inference equals batch-statistics mode.
    np.testing.assert_allclose(after, batch, atol=1e-3)
    with pytest.raises(KeyError, match="calibrate it first"):
        net.bn_stats.get(space.largest())


def test_bn_bookkeeping_is_compiled_once_and_touches_only_the_child(space):
    net = Supernet(space, num_classes=10)
    layers = net.bn_layers()
    small, large = space.smallest(16), space.largest(16)
    rng = np.random.default_rng(0)
    for arch in (large, small, large):
        stats = {
            name: (rng.normal(size=ch).astype(np.float32), rng.random(ch).astype(np.float32) + 1)
            for name, ch in net.bn_channels(arch).items()
        }
        before = {n: (b.moving_mean.numpy(), b.moving_variance.numpy()) for n, b in layers.items()}
        net.load_bn_stats(arch, stats)
        for name, layer in layers.items():
            mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
            if name not in stats:  # outside the child: untouched
                np.testing.assert_array_equal(mean, before[name][0])
                np.testing.assert_array_equal(var, before[name][1])
                continue
            ch = len(stats[name][0])
            np.testing.assert_array_equal(mean[:ch], stats[name][0])
            np.testing.assert_array_equal(var[:ch], stats[name][1])
            assert not mean[ch:].any() and np.all(var[ch:] == 1.0)
    assert len(net.bn_channels(small)) < len(net.bn_channels(large))  # both kinds were seen
    net.reset_calibration()
    net(_images(16), arch=small, bn_mode="calibrate")
    net.reset_calibration()
    assert all(not b.calib_count.numpy().any() for b in layers.values())
    fns = net.__dict__["_compiled_fns"]
    assert fns["load_bn_stats"].experimental_get_tracing_count() == 1
    assert fns["reset_calibration"].experimental_get_tracing_count() == 1
    with pytest.raises(KeyError, match="does not have"):
        net.load_bn_stats(small, {"no_such_bn": (np.zeros(1), np.ones(1))})


def test_bad_arch_input(space):
    net = Supernet(space, num_classes=10)
    with pytest.raises(InvalidArchError, match="images are 16x16 but the arch has resolution 32"):
        net(_images(16), arch=space.largest(32))
    with pytest.raises(InvalidArchError, match="ArchConfig or the dict"):
        net(_images(16), arch=[1, 2, 3])
    with pytest.raises(ValueError, match="unknown supernet mode 'fast'"):
        Supernet(space, 10, mode="fast")
    with pytest.raises(ValueError, match="unknown bn_mode"):
        net(_images(16), arch=space.largest(16), bn_mode="running")


def test_dropout_only_when_asked(space):
    net = Supernet(space, num_classes=10, dropout_rate=0.5)
    randomize_weights(net, seed=7)
    arch = space.largest(16)
    images = _images(16)
    plain = net(images, arch=arch, training=True).numpy()
    np.testing.assert_array_equal(plain, net(images, arch=arch, training=True).numpy())
    dropped = net(images, arch=arch, training=True, dropout=True).numpy()
    assert np.max(np.abs(dropped - plain)) > 1e-4
    np.testing.assert_array_equal(
        net(images, arch=arch, training=False, dropout=True).numpy(),
        net(images, arch=arch, training=False).numpy(),
    )


def _deep_space() -> SearchSpace:
    """Stages with two and three blocks after their first: blocks that share a trace."""
    return SearchSpace(
        name="deep_tiny",
        stem_widths=(8, 16),
        stages=(
            StageSpec((8, 16), (1, 2), (3, 5), (1.0, 2.0), stride=2),
            StageSpec((16, 24), (2, 3, 4), (3, 5), (2.0, 4.0), stride=2),
            StageSpec((24, 32), (1, 2, 3), (3, 5), (2.0, 4.0), stride=1, se=False),
        ),
        head_widths=(32, 64),
        train_resolutions=(16,),
        resolutions=(16,),
        stem_stride=1,
    )


def test_blocks_of_one_shape_share_one_trace_with_the_same_loss_and_gradients():
    space = _deep_space()
    net = Supernet(space, 10)
    randomize_weights(net, seed=3)
    batch = next(iter(build_train_dataset("embedded", "train", (16,), 8, augment="none", seed=2)))
    images, labels = batch["images"][16], batch["label"]
    decay = tf.constant(4e-5)
    children = [space.largest(), space.sample(5), space.smallest()]

    def pass_of(share: bool, arch: dict, weight_decay: tf.Tensor | None) -> tuple:
        net.share_block_traces = share

        @tf.function(autograph=False)
        def f(x, a, *decay):
            with tf.GradientTape() as tape:
                logits = net(x, arch=a, training=True, weight_decay=decay[0] if decay else None)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                )
            grads = tape.gradient(
                loss, net.trainable_variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return loss, grads

        return f(images, arch, *([] if weight_decay is None else [weight_decay]))

    for child in children:
        for weight_decay in (None, decay):
            arch = net.encode_arch(child)
            loss, grads = pass_of(True, arch, weight_decay)
            ref_loss, ref_grads = pass_of(False, arch, weight_decay)
            np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=1e-6)
            for g, r, v in zip(grads, ref_grads, net.trainable_variables):
                np.testing.assert_allclose(
                    g.numpy(), r.numpy(), rtol=1e-4, atol=1e-6, err_msg=v.path
                )
    # One function per (stage with shared blocks, with or without decay).
    assert len(net._block_functions.functions) == 4
    largest_grads = pass_of(True, net.encode_arch(space.largest()), None)[1]
    moved = [float(tf.reduce_max(tf.abs(g))) for g in largest_grads]
    assert min(moved) > 0  # every weight of the largest child gets a gradient
