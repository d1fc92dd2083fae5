"""The native kernels: build, cache, check, results, and every way they can be missing."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from supernet_testutil import graph_op_types, randomize_weights

from tf_bignas.model import Supernet, layers, native
from tf_bignas.space import get_space

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BUILD = (
    "import json, sys\n"
    "from tf_bignas.model import native\n"
    "ops = native.build_native_ops(cache_dir=sys.argv[1])\n"
    "check = native.self_check(ops.library) if ops.library else None\n"
    "print(json.dumps([ops.path, ops.reason, ops.built, check]))\n"
)


def _python(script, *args):
    """`script`'s standard output, run by a fresh Python in the repository's root."""
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=_ROOT,
    ).stdout


def _build_in_a_new_process(cache):
    """`build_native_ops(cache)` in a fresh process: TensorFlow registers an op once per process."""
    return json.loads(_python(_BUILD, cache).splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fresh build into an empty cache folder, and this process's library."""
    cache = str(tmp_path_factory.mktemp("native_cache"))
    return cache, _build_in_a_new_process(cache), native.native_ops().library


def _stock_grad(x, dy):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.nn.silu(x)
    return tape.gradient(y, x, output_gradients=dy)


def test_a_build_into_an_empty_cache_compiles_and_passes_its_check(built):
    cache, (path, reason, was_built, check), _ = built
    assert reason == "" and was_built
    assert os.path.dirname(path) == cache and os.path.isfile(path)
    # Only the library: the temporary file it was written under is gone.
    assert os.listdir(cache) == [os.path.basename(path)]
    assert check <= native.SELF_CHECK_TOLERANCE


def test_this_process_has_the_kernels_and_their_check_passes(built):
    ops = native.native_ops()
    assert ops.library is not None, ops.reason
    assert native.self_check(ops.library) <= native.SELF_CHECK_TOLERANCE


def test_a_second_file_of_the_same_ops_is_refused_with_the_reason(built):
    cache, (path, _, _, _), _ = built
    assert path != native.native_ops().path  # the test build is a copy of its own
    script = (
        "import sys\n"
        "from tf_bignas.model import native\n"
        "assert native.native_ops().library is not None\n"
        "print(native.build_native_ops(cache_dir=sys.argv[1]).reason)\n"
    )
    assert "another file registered them in this process" in _python(script, cache)


def test_the_kernel_computes_the_stock_gradient(built):
    library = built[2]
    rng = np.random.default_rng(0)
    # Empty, one element, a part block, several blocks and threads.
    for shape in [(0, 3), (1,), (5, 7), (4, 33, 29, 40)]:
        x = tf.constant(6 * rng.normal(size=shape), tf.float32)
        dy = tf.constant(rng.normal(size=shape), tf.float32)
        got = library.bignas_swish_grad(dy, x).numpy()
        want = _stock_grad(x, dy).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    # Saturated inputs: the gradient is dy above, 0 below.
    x = tf.constant([-200.0, -88.0, 88.0, 200.0])
    np.testing.assert_allclose(
        library.bignas_swish_grad(tf.ones(4), x).numpy(), [0, 0, 1, 1], atol=1e-6
    )


def test_the_kernel_rejects_mismatched_shapes(built):
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        built[2].bignas_swish_grad(tf.ones([2, 3]), tf.ones([3, 2]))


def _stock_filter_grad(x, dy, k, stride):
    return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x,
        filter_sizes=[k, k, x.shape[3], 1],
        out_backprop=dy,
        strides=[1, stride, stride, 1],
        padding="SAME",
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_the_depthwise_kernel_computes_the_stock_filter_gradient(built, stride):
    library = built[2]
    rng = np.random.default_rng(stride)
    # Channels: every vector width (16, 8, 4, 1) and their sums; maps: 1x1 to
    # 17x17, odd and even, wider than tall; kernels 3, 5, 7 and the generic path.
    for h, w, c in [(1, 1, 3), (2, 2, 40), (5, 7, 21), (8, 8, 16), (17, 12, 29), (4, 4, 150)]:
        for k in (1, 3, 5, 7, 9):
            x = tf.constant(rng.normal(size=(3, h, w, c)), tf.float32)
            dy = tf.constant(rng.normal(size=(3, -(-h // stride), -(-w // stride), c)), tf.float32)
            got = library.bignas_depthwise_filter_grad(x, dy, k, stride=stride).numpy()
            want = _stock_filter_grad(x, dy, k, stride).numpy()
            assert got.shape == want.shape == (k, k, c, 1)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_the_depthwise_kernel_gives_the_same_bits_on_one_thread_and_two(built):
    """Its rows are summed in fixed groups: a resumed run on another thread count matches."""
    script = (
        "import hashlib, sys, numpy as np, tensorflow as tf\n"
        "tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))\n"
        "lib = tf.load_op_library(sys.argv[2])\n"
        "rng = np.random.default_rng(0)\n"
        "x = tf.constant(rng.normal(size=(8, 32, 32, 40)), tf.float32)\n"
        "dy = tf.constant(rng.normal(size=(8, 32, 32, 40)), tf.float32)\n"
        "print(hashlib.sha256(lib.bignas_depthwise_filter_grad(x, dy, 5, stride=1)"
        ".numpy().tobytes()).hexdigest())\n"
    )
    digests = [_python(script, threads, native.native_ops().path).split()[-1] for threads in (1, 2)]
    assert digests[0] == digests[1]


def test_the_depthwise_kernel_rejects_a_dy_of_another_geometry(built):
    x = tf.ones([2, 8, 8, 4])
    with pytest.raises(tf.errors.InvalidArgumentError, match='is not the "SAME" output'):
        built[2].bignas_depthwise_filter_grad(x, tf.ones([2, 8, 8, 4]), 3, stride=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="stride must be >= 1"):
        built[2].bignas_depthwise_filter_grad(x, tf.ones([2, 8, 8, 4]), 3, stride=0)


def _stock_batch_norm(x, gamma, beta, swish, dy):
    """FusedBatchNormV3 (batch statistics), then swish: y and d(x, gamma, beta)."""
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.zeros([0]),
            variance=tf.zeros([0]),
            epsilon=1e-3,
            exponential_avg_factor=1.0,
            is_training=True,
        )
        if swish:
            y = tf.nn.silu(y)
    return [y, *tape.gradient(y, [x, gamma, beta], output_gradients=dy)]


@pytest.mark.parametrize("swish", [False, True])
def test_the_batch_norm_kernels_compute_fused_batch_norm_and_swish(built, swish):
    library = built[2]
    rng = np.random.default_rng(int(swish))
    # One channel; one row per channel (zero variance); odd channels; several
    # blocks of rows and row groups; a mean 100 times the spread.
    for shape, loc, scale in [
        ((3, 7, 5, 1), 0.0, 1.0),
        ((4, 1, 1, 24), 0.0, 1.0),
        ((2, 3, 3, 17), 1.0, 3.0),
        ((8, 16, 16, 150), 0.0, 2.0),
        ((4, 9, 11, 40), 50.0, 0.5),
    ]:
        c = shape[-1]
        x = tf.constant(rng.normal(loc, scale, size=shape), tf.float32)
        gamma = tf.constant(rng.normal(size=c), tf.float32)
        beta = tf.constant(rng.normal(size=c), tf.float32)
        dy = tf.constant(rng.normal(size=shape), tf.float32)
        y, mean, inv_std = library.bignas_batch_norm(x, gamma, beta, epsilon=1e-3, swish=swish)
        grads = library.bignas_batch_norm_grad(dy, x, gamma, beta, mean, inv_std, swish=swish)
        want_mean, want_var = tf.nn.moments(tf.cast(x, tf.float64), axes=[0, 1, 2])
        np.testing.assert_allclose(mean.numpy(), want_mean.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(inv_std.numpy(), 1 / np.sqrt(want_var.numpy() + 1e-3), rtol=1e-5)
        for got, want in zip([y, *grads], _stock_batch_norm(x, gamma, beta, swish, dy)):
            assert got.shape == want.shape
            want = want.numpy()
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=2e-5 * np.abs(want).max())


def test_the_swish_kernel_computes_silu_and_the_same_bits_op_by_op_and_compiled(built):
    library = built[2]
    rng = np.random.default_rng(5)
    # Empty, one element, a part block, several blocks.
    for shape in [(0, 3), (1,), (5, 7), (4, 33, 29, 40)]:
        x = tf.constant(6 * rng.normal(size=shape), tf.float32)
        got = library.bignas_swish(x).numpy()
        np.testing.assert_allclose(got, tf.nn.silu(x).numpy(), rtol=1e-6, atol=1e-7)
        # One kernel either way; tf.nn.silu is two ops op by op and, in a graph,
        # the one swish of Grappler's remapper, which need not agree.
        compiled = tf.function(layers.swish_native_grad)(x, True).numpy()
        np.testing.assert_array_equal(layers.swish_native_grad(x, True).numpy(), compiled)
        np.testing.assert_array_equal(got, compiled)
    x = tf.constant([-200.0, -88.0, 0.0, 88.0, 200.0])
    np.testing.assert_allclose(library.bignas_swish(x).numpy(), [0, 0, 0, 88, 200], atol=1e-6)


def test_the_batch_norm_kernels_take_a_batch_of_no_values(built):
    """As FusedBatchNormV3: an empty output, undefined statistics, zero gradients of gamma and beta."""
    library = built[2]
    x, ones = tf.zeros([0, 4, 4, 3]), tf.ones([3])
    y, mean, inv_std = library.bignas_batch_norm(x, ones, ones, epsilon=1e-3, swish=True)
    assert y.shape == (0, 4, 4, 3) and np.isnan(mean.numpy()).all()
    dx, dgamma, dbeta = library.bignas_batch_norm_grad(x, x, ones, ones, mean, inv_std, swish=True)
    assert dx.shape == (0, 4, 4, 3)
    np.testing.assert_array_equal(dgamma.numpy(), 0)
    np.testing.assert_array_equal(dbeta.numpy(), 0)


def test_the_batch_norm_swish_and_scale_kernels_give_the_same_bits_on_one_thread_and_two(built):
    script = (
        "import hashlib, sys, numpy as np, tensorflow as tf\n"
        "tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))\n"
        "lib = tf.load_op_library(sys.argv[2])\n"
        "rng = np.random.default_rng(0)\n"
        "x, dy = (tf.constant(rng.normal(size=(8, 32, 32, 40)), tf.float32) for _ in 'ab')\n"
        "g, b = (tf.constant(rng.normal(size=40), tf.float32) for _ in 'ab')\n"
        "y, m, s = lib.bignas_batch_norm(x, g, b, epsilon=1e-3, swish=True)\n"
        "out = [y, m, s, *lib.bignas_batch_norm_grad(dy, x, g, b, m, s, swish=True)]\n"
        "out += [lib.bignas_swish(x), lib.bignas_swish_grad(dy, x)]\n"
        "out += lib.bignas_scale_channels_grad(dy, x, tf.reduce_mean(x, [1, 2], keepdims=True))\n"
        "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in out)).hexdigest())\n"
    )
    digests = [_python(script, threads, native.native_ops().path).split()[-1] for threads in (1, 2)]
    assert digests[0] == digests[1]


def test_the_batch_norm_kernels_reject_mismatched_shapes(built):
    library, x, three = built[2], tf.ones([2, 4, 4, 3]), tf.ones([3])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"needs gamma and beta \[C\]"):
        library.bignas_batch_norm(x, tf.ones([4]), three, epsilon=1e-3, swish=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="epsilon must be >= 0"):
        library.bignas_batch_norm(x, three, three, epsilon=-1.0, swish=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        library.bignas_batch_norm_grad(
            tf.ones([2, 4, 4, 2]), x, three, three, three, three, swish=False
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="mean and inv_std must be"):
        library.bignas_batch_norm_grad(x, x, three, three, tf.ones([2]), three, swish=False)


def test_the_scale_channels_kernel_computes_both_stock_gradients(built):
    library = built[2]
    rng = np.random.default_rng(6)
    # No pixels, one pixel, part of a block, several blocks; 3-D and 4-D.
    for shape in [(2, 0, 3, 5), (3, 1, 1, 7), (2, 5, 9, 13), (4, 33, 29, 40), (3, 200, 17)]:
        x = tf.constant(rng.normal(size=shape), tf.float32)
        dy = tf.constant(rng.normal(size=shape), tf.float32)
        s = tf.constant(rng.normal(size=(shape[0], *[1] * (len(shape) - 2), shape[-1])), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch([x, s])
            y = x * s
        want_dx, want_ds = tape.gradient(y, [x, s], output_gradients=dy)
        dx, ds = library.bignas_scale_channels_grad(dy, x, s)
        assert dx.shape == x.shape and ds.shape == s.shape
        np.testing.assert_array_equal(dx.numpy(), want_dx.numpy())  # one product: the same bits
        want = want_ds.numpy()
        np.testing.assert_allclose(ds.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # Through `layers.scale_channels`, op by op and compiled: the same bits,
    # and the native gradient only where asked for.
    x, s = tf.constant(rng.normal(size=(2, 6, 6, 8)), tf.float32), tf.ones([2, 1, 1, 8])

    def grads(x, s, native):
        with tf.GradientTape() as tape:
            tape.watch([x, s])
            y = layers.scale_channels(x, s, native)
        return tape.gradient(y, [x, s], output_gradients=x)

    compiled = tf.function(grads)
    for a, b in zip(grads(x, s, True), compiled(x, s, True)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert "BignasScaleChannelsGrad" in graph_op_types(compiled.get_concrete_function(x, s, True))
    assert "BignasScaleChannelsGrad" not in graph_op_types(
        compiled.get_concrete_function(x, s, False)
    )


def test_the_scale_channels_kernel_rejects_mismatched_shapes(built):
    library, x = built[2], tf.ones([2, 4, 4, 3])
    for dy, s in [
        (tf.ones([2, 4, 4, 2]), tf.ones([2, 1, 1, 3])),  # dy is not x's shape
        (x, tf.ones([2, 1, 1, 4])),  # another channel count
        (x, tf.ones([1, 1, 1, 3])),  # another batch
        (x, tf.ones([2, 4, 1, 3])),  # not one value per sample and channel
        (x, tf.ones([2, 3])),  # another rank
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"need s \[N, 1, ..., 1, C\]"):
            library.bignas_scale_channels_grad(dy, x, s)


def test_a_second_process_loads_the_cached_library_without_building(built):
    cache, (path, _, _, _), _ = built
    mtime = os.stat(path).st_mtime_ns
    again_path, reason, again_built, check = _build_in_a_new_process(cache)
    assert reason == "" and not again_built and check <= native.SELF_CHECK_TOLERANCE
    assert again_path == path and os.stat(path).st_mtime_ns == mtime


def test_no_compiler_leaves_no_library_and_says_why(tmp_path):
    ops = native.build_native_ops(cache_dir=str(tmp_path), compiler="/nonexistent/c++")
    assert ops.library is None
    assert "no working C++ compiler '/nonexistent/c++'" in ops.reason
    assert os.listdir(tmp_path) == []


def test_a_failed_build_names_the_compiler_error_and_leaves_nothing(tmp_path):
    fake = tmp_path / "fake-c++"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fake 1.0"; exit 0; fi\n'
        'echo "native_kernels.cc:1: error: no such header" >&2\nexit 3\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    cache = tmp_path / "cache"
    ops = native.build_native_ops(cache_dir=str(cache), compiler=str(fake))
    assert ops.library is None
    assert "exit 3" in ops.reason and "no such header" in ops.reason
    assert os.listdir(cache) == []  # no half-written library under any name


def test_the_target_arch_is_the_compilers_march_and_a_build_of_its_own(tmp_path, monkeypatch):
    fake = tmp_path / "fake-c++"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fake 1.0"; exit 0; fi\n'
        'echo "args: $*" >&2\nexit 3\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("TF_BIGNAS_NATIVE_MARCH", raising=False)
    assert native.target_arch() == "native"
    monkeypatch.setenv("TF_BIGNAS_NATIVE_MARCH", "x86-64-v3")
    ops = native.build_native_ops(cache_dir=str(tmp_path / "cache"), compiler=str(fake))
    assert " -march=x86-64-v3 " in ops.reason and "-march=native" not in ops.reason


@pytest.mark.skipif(
    "avx2" not in native._cpu_features().split(), reason="builds AVX2 code: x86 with AVX2 only"
)
def test_an_avx2_build_is_cached_apart_passes_its_check_and_gives_the_same_filter_grads(
    built, tmp_path, monkeypatch
):
    native_path = built[1][0]
    monkeypatch.setenv("TF_BIGNAS_NATIVE_MARCH", "x86-64-v3")
    path, reason, was_built, check = _build_in_a_new_process(tmp_path)
    assert reason == "" and was_built
    assert os.path.basename(path) != os.path.basename(native_path)  # another cache entry
    assert check <= native.SELF_CHECK_TOLERANCE
    # The depthwise filter gradient sums each channel in the same order with
    # 8-lane vectors (AVX2) as with 16 (AVX-512): the same bits.
    rng = np.random.default_rng(1)
    cases = [((4, 17, 17, 40), 3, 1), ((3, 16, 16, 37), 5, 2), ((2, 8, 8, 72), 7, 1)]
    inputs = {}
    for i, (shape, _, stride) in enumerate(cases):
        out = [shape[0], -(-shape[1] // stride), -(-shape[2] // stride), shape[3]]
        inputs[f"x{i}"] = rng.normal(size=shape).astype(np.float32)
        inputs[f"dy{i}"] = rng.normal(size=out).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", **inputs)
    _python(
        "import sys\n"
        "import numpy as np\n"
        "from tf_bignas.model import native\n"
        "lib = native.build_native_ops(cache_dir=sys.argv[1]).library\n"
        "a = np.load(sys.argv[2])\n"
        f"cases = {[(k, s) for _, k, s in cases]}\n"
        "np.savez(sys.argv[3], *[lib.bignas_depthwise_filter_grad(\n"
        "    a[f'x{i}'], a[f'dy{i}'], k, stride=s).numpy() for i, (k, s) in enumerate(cases)])\n",
        tmp_path,
        tmp_path / "inputs.npz",
        tmp_path / "avx2.npz",
    )
    avx2 = np.load(tmp_path / "avx2.npz")
    library = built[2]
    for i, (_, k, stride) in enumerate(cases):
        ours = library.bignas_depthwise_filter_grad(
            inputs[f"x{i}"], inputs[f"dy{i}"], k, stride=stride
        ).numpy()
        np.testing.assert_array_equal(avx2[f"arr_{i}"], ours)


def test_a_corrupt_cached_library_is_reported_not_loaded(built, tmp_path):
    name = os.path.basename(built[1][0])
    (tmp_path / name).write_bytes(b"not a shared library")
    ops = native.build_native_ops(cache_dir=str(tmp_path))
    assert ops.library is None and not ops.built
    assert "could not load" in ops.reason and "delete it to rebuild" in ops.reason


def test_without_the_kernel_the_swish_gradient_is_tensorflows_own(monkeypatch):
    monkeypatch.setattr(
        layers, "native_ops", lambda: native.NativeOps(None, "", "no compiler (test)")
    )
    rng = np.random.default_rng(2)
    x = tf.constant(4 * rng.normal(size=(3, 5, 5, 8)), tf.float32)
    dy = tf.constant(rng.normal(size=(3, 5, 5, 8)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layers.swish_native_grad(x)
    np.testing.assert_array_equal(y.numpy(), tf.nn.silu(x).numpy())
    # The same ops in the same order as tf.nn.silu's gradient: the same bits.
    np.testing.assert_array_equal(
        tape.gradient(y, x, output_gradients=dy).numpy(), _stock_grad(x, dy).numpy()
    )


def test_without_the_kernel_the_depthwise_filter_gradient_is_tensorflows_kernel(monkeypatch):
    monkeypatch.setattr(
        layers, "native_ops", lambda: native.NativeOps(None, "", "no compiler (test)")
    )
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 9, 9, 24)), tf.float32)
    kernel = tf.constant(rng.normal(size=(5, 5, 24, 1)), tf.float32)
    dy = tf.constant(rng.normal(size=(2, 5, 5, 24)), tf.float32)

    @tf.function
    def filter_grad(x, kernel, dy):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            y = layers.depthwise_conv2d_same(x, kernel, 2)
        return tape.gradient(y, kernel, output_gradients=dy)

    got = filter_grad(x, kernel, dy)
    graph_ops = graph_op_types(filter_grad.get_concrete_function(x, kernel, dy))
    # The explicit-padding form of TensorFlow's op, not the native one.
    assert "DepthwiseConv2dNativeBackpropFilter" in graph_ops
    assert "BignasDepthwiseFilterGrad" not in graph_ops
    want = _stock_filter_grad(x, dy, 5, 2).numpy()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_supernet_without_native_kernels_computes_the_same_gradients_with_tensorflows_ops():
    space = get_space("bignas_tiny")
    nets = {flag: Supernet(space, num_classes=10, native_kernels=flag) for flag in (True, False)}
    randomize_weights(nets[True], seed=3)
    nets[False].set_weights(nets[True].get_weights())
    arch = space.largest()
    images = tf.random.stateless_normal([4, arch.resolution, arch.resolution, 3], seed=[1, 2])
    grads, types = {}, {}
    for flag, net in nets.items():

        @tf.function
        def step(images, arch, net=net):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(net(images, arch=arch, training=True)))
            return tape.gradient(loss, net.trainable_variables)

        encoded = net.encode_arch(arch)
        grads[flag] = [g.numpy() for g in step(images, encoded)]
        types[flag] = graph_op_types(step.get_concrete_function(images, encoded))
    native = {"BignasSwish", "BignasSwishGrad", "BignasDepthwiseFilterGrad", "BignasBatchNorm"}
    assert native | {"BignasBatchNormGrad", "BignasScaleChannelsGrad"} <= types[True]
    assert not native & types[False]
    assert nets[False].get_config()["native_kernels"] is False
    for a, b in zip(grads[True], grads[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(np.abs(b).max(), 1e-3))
