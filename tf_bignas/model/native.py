"""Native CPU kernels that TensorFlow lacks, built once per machine on first use.

Native kernels (`native_kernels.cc`), all used by a slice-mode supernet's
training step on a CPU-only host (`layers.swish_native_grad`,
`layers.depthwise_conv2d_same`, `layers.batch_norm_native`):

- `BignasSwish` and `BignasSwishGrad`: swish (SiLU), the same kernel op by op
  and compiled (Grappler turns `tf.nn.silu` into oneDNN's swish, which rounds
  apart from its two ops), and its gradient in one pass over its input and
  the incoming gradient, where TensorFlow's own gradient of `tf.nn.silu`
  runs six element-wise ops;
- `BignasDepthwiseFilterGrad`: the depthwise filter gradient of a "SAME"
  convolution, with no padded copy of the input, summed in a fixed order;
- `BignasBatchNorm` and `BignasBatchNormGrad`: batch-statistics batch norm
  with the swish after it, forward and backward, with no per-shape setup
  (oneDNN builds a primitive for each new shape, and random children bring
  new shapes at every step), sums in a fixed order;
- `BignasScaleChannelsGrad`: the gradient of the squeeze-excite product
  x * s (s one value per sample and channel) for x and s in one pass,
  sums in a fixed order (`layers.scale_channels`).

The kernels are compiled against the installed TensorFlow with the machine's
C++ compiler (``$CXX``, else ``c++``) for the machine's own CPU (``-march=``
``$TF_BIGNAS_NATIVE_MARCH``, else ``native``: e.g. ``x86-64-v3`` builds the
AVX2 code that an AVX2-only machine runs, to measure it on a newer one) the
first time a slice-mode layer that may use them is traced on a CPU-only
host, about 10 s, and the shared library is kept in a cache folder
(``$XDG_CACHE_HOME/tf_bignas/native``, else ``~/.cache/tf_bignas/native``)
under a digest of the source, TensorFlow's version and build flags, the
compiler's version and the CPU's features, so later processes load it in
milliseconds and a changed machine or TensorFlow builds anew. A library is
written to a temporary name and renamed, so processes that build at once
never load half a file. Before use, the loaded kernels are checked against
TensorFlow's own ops (`self_check`); a library that fails the check, a
missing compiler or a failed build leaves `NativeOps.library` None, with the
reason, and the callers use TensorFlow's ops (the same functions, in another
rounding).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import types

import numpy as np
import tensorflow as tf

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native_kernels.cc")
# Largest allowed difference from TensorFlow's ops in the self-check, relative
# to the largest magnitude of their result (float32 sums in another order).
SELF_CHECK_TOLERANCE = 1e-5
BUILD_TIMEOUT_S = 600
# The Python names of the library's ops.
OPS = (
    "bignas_swish",
    "bignas_swish_grad",
    "bignas_depthwise_filter_grad",
    "bignas_batch_norm",
    "bignas_batch_norm_grad",
    "bignas_scale_channels_grad",
)


@dataclasses.dataclass(frozen=True)
class NativeOps:
    """The loaded native kernels, or why there are none.

    Attributes:
        library: The module `tf.load_op_library` returned (its ops:
            `bignas_swish(x)`, `bignas_swish_grad(dy, x)`,
            `bignas_depthwise_filter_grad(x, dy, kernel_size, stride=)`,
            `bignas_batch_norm(x, gamma, beta, epsilon=, swish=)` -> (y, mean,
            inv_std), `bignas_batch_norm_grad(dy, x, gamma, beta, mean,
            inv_std, swish=)` -> (dx, dgamma, dbeta),
            `bignas_scale_channels_grad(dy, x, s)` -> (dx, ds)), or None.
        path: The shared library's path ("" if none was built).
        reason: Why `library` is None ("" when it is loaded).
        built: Whether this call compiled the library (False: from the cache).
    """

    library: types.ModuleType | None
    path: str
    reason: str
    built: bool = False


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/tf_bignas/native``, else ``~/.cache/tf_bignas/native``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "tf_bignas", "native")


def _cpu_features() -> str:
    """The CPU's feature flags (the library is built for them), or the machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def target_arch() -> str:
    """The compiler's ``-march``: ``$TF_BIGNAS_NATIVE_MARCH``, else ``native``."""
    return os.environ.get("TF_BIGNAS_NATIVE_MARCH") or "native"


def _command(compiler: str, output: str) -> list[str]:
    """The compile-and-link command of `SOURCE` into `output`."""
    return [
        compiler,
        "-shared",
        "-fPIC",
        "-O3",
        f"-march={target_arch()}",
        SOURCE,
        "-o",
        output,
        *tf.sysconfig.get_compile_flags(),
        *tf.sysconfig.get_link_flags(),
    ]


def _compiler_version(compiler: str) -> str:
    """`compiler --version`'s first line; raises OSError if it does not run."""
    out = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.splitlines()[0] if out.stdout else ""


def self_check(library: types.ModuleType) -> float:
    """Largest difference between the native kernels and TensorFlow's own ops.

    Swish and its gradient: 4,099 values of x in [-30, 30] (0 and both ends
    included) with random incoming gradients. Depthwise: random inputs of odd and even
    sizes, 5 to 37 channels, kernels 1, 3, 5 and 7, strides 1 and 2. Batch
    norm: output and the three gradients, with swish (13 channels) and
    without (40 channels, mean 4 against spread 2), against
    `FusedBatchNormV3` and `tf.nn.silu`. Channel scale: both gradients of
    x * s over 4-D and 3-D x (1 to 70 pixels, 1 to 40 channels).

    Args:
        library: A loaded library of `native_kernels.cc`.

    Returns:
        The largest max |native - stock| / max |stock| over the cases.
    """
    # In a thread of its own, which starts eager and outside any graph that
    # the caller is tracing (`tf.init_scope` would also pause gradient tapes).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_self_check, library).result()


def _self_check(library: types.ModuleType) -> float:
    rng = np.random.default_rng(0)
    x = tf.constant(np.concatenate([np.linspace(-30, 30, 4096), [0.0, -1.2785, 1e-3]]), tf.float32)
    dy = tf.constant(rng.normal(size=x.shape), tf.float32)
    # tf.nn.silu's own gradient, op for op.
    s = tf.sigmoid(x)
    cases = [
        (x * s, library.bignas_swish(x)),
        (dy * (s * (1.0 + x * (1.0 - s))), library.bignas_swish_grad(dy, x)),
    ]
    for shape, k, stride in [
        ((2, 7, 6, 21), 3, 1),
        ((2, 9, 9, 37), 5, 2),
        ((1, 4, 5, 16), 7, 1),
        ((3, 8, 8, 5), 3, 2),
        ((2, 5, 5, 12), 1, 1),
    ]:
        x = tf.constant(rng.normal(size=shape), tf.float32)
        out = [shape[0], -(-shape[1] // stride), -(-shape[2] // stride), shape[3]]
        dy = tf.constant(rng.normal(size=out), tf.float32)
        stock = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=x,
            filter_sizes=[k, k, shape[3], 1],
            out_backprop=dy,
            strides=[1, stride, stride, 1],
            padding="SAME",
        )
        cases.append((stock, library.bignas_depthwise_filter_grad(x, dy, k, stride=stride)))
    for shape, swish, loc in [((2, 5, 7, 13), True, 0.0), ((3, 4, 4, 40), False, 4.0)]:
        x = tf.constant(rng.normal(loc, 2.0, size=shape), tf.float32)
        gamma = tf.constant(rng.normal(size=shape[-1]), tf.float32)
        beta = tf.constant(rng.normal(size=shape[-1]), tf.float32)
        dy = tf.constant(rng.normal(size=shape), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            stock, *_ = tf.raw_ops.FusedBatchNormV3(
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
                stock = tf.nn.silu(stock)
        y, mean, inv_std = library.bignas_batch_norm(x, gamma, beta, epsilon=1e-3, swish=swish)
        grads = library.bignas_batch_norm_grad(dy, x, gamma, beta, mean, inv_std, swish=swish)
        cases += zip([stock, *tape.gradient(stock, [x, gamma, beta], dy)], [y, *grads])
    for shape in [(2, 5, 6, 13), (3, 70, 40), (1, 9, 9, 1)]:
        x = tf.constant(rng.normal(size=shape), tf.float32)
        dy = tf.constant(rng.normal(size=shape), tf.float32)
        s = tf.constant(rng.normal(size=[shape[0], *[1] * (len(shape) - 2), shape[-1]]), tf.float32)
        axes = list(range(1, len(shape) - 1))
        stock = [dy * s, tf.reduce_sum(dy * x, axis=axes, keepdims=True)]
        cases += zip(stock, library.bignas_scale_channels_grad(dy, x, s))
    return max(
        float(tf.reduce_max(tf.abs(got - want)) / tf.reduce_max(tf.abs(want)))
        for want, got in cases
    )


def build_native_ops(cache_dir: str | None = None, compiler: str | None = None) -> NativeOps:
    """Loads the native kernels from the cache, building them first if they are not there.

    Never raises for a machine that cannot build or load them: the result
    then says why.

    Args:
        cache_dir: Folder of built libraries (None: `default_cache_dir()`).
        compiler: C++ compiler (None: ``$CXX``, else ``c++``).

    Returns:
        The kernels, or the reason there are none.
    """
    compiler = compiler or os.environ.get("CXX") or "c++"
    cache_dir = cache_dir or default_cache_dir()
    try:
        version = _compiler_version(compiler)
    except (OSError, subprocess.SubprocessError) as e:
        return NativeOps(None, "", f"no working C++ compiler {compiler!r} ({e})")
    with open(SOURCE, "rb") as f:
        source = f.read()
    digest = hashlib.sha256(source)
    for part in (
        tf.__version__,
        tf.__git_version__,
        version,
        # The flags, not the source's path: another checkout of the same code hits.
        " ".join(arg for arg in _command(compiler, "OUT") if arg != SOURCE),
        platform.machine(),
        _cpu_features(),
    ):
        digest.update(b"\0" + part.encode())
    path = os.path.join(cache_dir, f"native-{digest.hexdigest()[:20]}.so")
    built = False
    if not os.path.exists(path):
        try:
            os.makedirs(cache_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=cache_dir)
            os.close(fd)
        except OSError as e:
            return NativeOps(None, "", f"cache folder {cache_dir!r} is not writable ({e})")
        try:
            run = subprocess.run(
                _command(compiler, tmp), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
            )
            if run.returncode != 0:
                tail = "\n".join(run.stderr.strip().splitlines()[-5:])
                return NativeOps(
                    None, "", f"{compiler} could not build {SOURCE} (exit {run.returncode}): {tail}"
                )
            os.replace(tmp, path)
            built = True
        except (OSError, subprocess.SubprocessError) as e:
            return NativeOps(None, "", f"{compiler} could not build {SOURCE} ({e})")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    try:
        library = tf.load_op_library(path)
    except (tf.errors.OpError, OSError) as e:
        return NativeOps(None, path, f"could not load {path} ({e}); delete it to rebuild")
    missing = [name for name in OPS if not hasattr(library, name)]
    if missing:  # TensorFlow registers an op name once per process
        return NativeOps(
            None, path, f"{path} has no {missing}: another file registered them in this process"
        )
    error = self_check(library)
    if not error <= SELF_CHECK_TOLERANCE:
        return NativeOps(
            None, path, f"{path} fails its check: {error:.2e} from TensorFlow's ops; delete it"
        )
    return NativeOps(library, path, "", built)


@functools.cache
def native_ops() -> NativeOps:
    """This process's native kernels: `build_native_ops()` on the first call, then the same.

    Logs the reason once when there are none.
    """
    from absl import logging

    ops = build_native_ops()
    if ops.library is None:
        logging.warning(
            "tf_bignas native kernels unavailable, using TensorFlow's ops: %s", ops.reason
        )
    return ops
