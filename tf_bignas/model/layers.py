"""Dynamic layers: each holds the largest weights and runs any smaller slice.

Every layer runs in one of two modes, chosen once per supernet:

- ``"slice"`` (CPU/GPU default): the active channels and kernel are real slices
  of the variables, with sizes given as tensors. A small child then costs what
  a small static model costs.
- ``"mask"`` (XLA/TPU): the full weights always run, and the inactive channels
  and kernel taps are multiplied by zero, so every shape is static and one
  compiled graph serves every child.

In both modes the active channels are the lowest-index ones and a small
depthwise kernel is the centre of the largest one, so both modes compute the
same function (up to float rounding) and the same sliced static model.

Batch norm has three ways to get its statistics (`bn_mode`):
``"batch"`` (supernet training: batch statistics only, nothing stored),
``"stored"`` (inference: the moving statistics, which hold the calibrated
statistics of the active child, see `Supernet.load_bn_stats`), and
``"calibrate"`` (batch statistics for the output, while an exact cumulative
average of the batch moments is accumulated for re-calibration).

On a CPU-only host, slice mode computes three gradients in other forms than
the stock ops (`depthwise_conv2d_same`: the depthwise filter gradient on a
native kernel, `native.native_ops`, or TensorFlow's own kernel, instead of
oneDNN's; `pointwise_conv`: the 1x1 convolution gradients as matrix
products; `swish_native_grad`: the swish gradient as one native kernel
instead of six element-wise ops). With lanes by cost, the first two made the
default space's training step at 64 px 0.79-0.92x as long
(`benchmarks/README.md`, "Convolution gradients in other forms, lanes by
cost"), and the native kernels 0.79-0.82x as long again (in one process,
`python -m benchmarks.sandwich_step --resolution=64 --rounds=6 --warmup=2
--lanes=2 --threads=1 --compare_native`; "Native kernels for the swish and
depthwise filter gradients"). In training (batch statistics) batch norm,
with the swish after it, runs on a native kernel each way
(`batch_norm_native`): oneDNN builds a primitive for every new shape of its
batch norm and swish, and random children bring new shapes at every step
("Fresh shapes" in `benchmarks/README.md`), and the squeeze-excite
product's gradient is one native kernel (`scale_channels`), where the stock
gradient runs two products over the whole tensor and a sum. Inference and
calibration keep the stock forward ops, so a sliced child computes the
supernet's outputs bit for bit.

Initialisation follows EfficientNet (whose recipe BigNAS trains with):
`conv_kernel_initializer()` for every convolution, depthwise ones included,
and `dense_kernel_initializer()` for the classifier, both variance scaling on
the fan-out of the largest weights. Keras computes the fan-out of a kernel
[k, k, in, out] as k*k*out, so a depthwise kernel [k, k, C, 1] gets k*k (its
depth multiplier is 1), not C: a 5x5 depthwise kernel starts with std
sqrt(2/25) = 0.28 whatever its channel count, as in EfficientNet.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import keras
import tensorflow as tf

from tf_bignas.model.native import native_ops

MODES = ("slice", "mask")
BN_MODES = ("batch", "stored", "calibrate")


def conv_kernel_initializer() -> keras.initializers.Initializer:
    """EfficientNet's convolution initialiser: normal, std sqrt(2 / fan_out).

    The same as `conv_kernel_initializer` of the EfficientNet TPU code (an
    untruncated normal on fan_out = k*k*out_channels; k*k for a depthwise
    kernel) and, in std, `CONV_KERNEL_INITIALIZER` of keras.applications.

    Returns:
        A new `VarianceScaling(2.0, "fan_out", "untruncated_normal")`.
    """
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def dense_kernel_initializer() -> keras.initializers.Initializer:
    """EfficientNet's classifier initialiser: uniform on +-1/sqrt(units).

    Returns:
        A new `VarianceScaling(1/3, "fan_out", "uniform")` (limit sqrt(3 * scale / fan_out)).
    """
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


def channel_mask(n: tf.Tensor, size: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Returns a [size] vector of ones for the first n channels, zeros after.

    Args:
        n: Active channels (scalar int tensor).
        size: Total channels.
        dtype: Output dtype.

    Returns:
        The mask.
    """
    return tf.cast(tf.range(size) < tf.cast(n, tf.int32), dtype)


def cpu_gradients(mode: str) -> bool:
    """Whether layers in `mode` use this module's own gradients: slice mode with no GPU visible."""
    return mode == "slice" and not tf.config.list_physical_devices("GPU")


def activation(
    x: tf.Tensor, name: str, native_grad: bool = False, native_forward: bool = False
) -> tf.Tensor:
    """Applies "swish", "relu" or "hswish" (x * relu6(x + 3) / 6).

    Args:
        x: Input tensor.
        name: Activation name.
        native_grad: Swish only: its gradient from `swish_native_grad`.
        native_forward: Swish with `native_grad` only: its forward pass on the
            native kernel too (training's, so that a step run op by op
            computes the compiled step's bits; inference keeps `tf.nn.silu`,
            as an exported child computes it).

    Returns:
        The activated tensor.

    Raises:
        ValueError: For an unknown activation.
    """
    if name == "swish":
        return swish_native_grad(x, native_forward) if native_grad else tf.nn.silu(x)
    if name == "relu":
        return tf.nn.relu(x)
    if name == "hswish":
        return x * tf.nn.relu6(x + 3.0) / 6.0
    raise ValueError(f"unknown activation {name!r}; allowed: swish, relu, hswish")


def native_library(x: tf.Tensor, native: bool = True) -> types.ModuleType | None:
    """The loaded native kernels for an op (or its gradient) on float32 `x`, or None for TensorFlow's ops.

    Loaded (or built) when this is called, while the forward pass is traced,
    not in the gradient function: the gradient's form is settled before any
    gradient is traced, and a build never happens inside a gradient's trace.

    Args:
        x: The forward op's input (the kernels take float32 only).
        native: False: None, whatever this machine builds.

    Returns:
        `native.native_ops().library` (None where the kernels do not build).
    """
    return native_ops().library if native and x.dtype == tf.float32 else None


def swish_native_grad(x: tf.Tensor, native_forward: bool = False) -> tf.Tensor:
    """`tf.nn.silu(x)` whose gradient (and forward pass) are native kernels where this machine builds them.

    The gradient, dy * s * (1 + x * (1 - s)) with s = sigmoid(x), is
    `BignasSwishGrad` (`native.native_ops`: one pass over x and dy) for
    float32. With `native_forward` (training), the forward pass is
    `BignasSwish`, the same kernel op by op and in a compiled step, where
    `tf.nn.silu`'s Sigmoid and Mul are one oneDNN swish in a graph (Grappler's
    remapper) and two ops op by op, which round apart: a first step run op by
    op (`SandwichStep.run_eagerly`) would not compute the compiled step's
    losses bit for bit. Else the forward pass is `tf.nn.silu`. Where the
    kernels do not build: `tf.nn.silu` and TensorFlow's ops in the order its
    gradient uses.

    Args:
        x: Input tensor.
        native_forward: The forward pass on `BignasSwish` too.

    Returns:
        x * sigmoid(x).
    """

    library = native_library(x)

    @tf.custom_gradient
    def swish(x: tf.Tensor):
        x = tf.identity(x)  # See `depthwise_conv2d_same`.

        def grad(dy: tf.Tensor) -> tf.Tensor:
            if library is not None:
                return library.bignas_swish_grad(dy, x)
            s = tf.sigmoid(x)
            return dy * (s * (1.0 + x * (1.0 - s)))

        if library is not None and native_forward:
            return library.bignas_swish(x), grad
        return tf.nn.silu(x), grad

    return swish(x)


def batch_norm_native(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    epsilon: float,
    swish: bool,
    library: types.ModuleType,
) -> tf.Tensor:
    """Batch-statistics batch norm over the last axis (then swish) on one native kernel each way.

    The forward pass is `BignasBatchNorm` (statistics, normalisation and
    swish in two passes over x, with no shape-specific setup: oneDNN's batch
    norm builds a primitive for every new shape, which a sandwich step of
    random children meets all the time); the gradient is
    `BignasBatchNormGrad` (dz through swish, recomputed from x, and the batch
    norm gradient in two passes). Both compute what `FusedBatchNormV3`
    (is_training) and `tf.nn.silu` compute, in another rounding
    (`native.self_check`).

    Args:
        x: [..., C] float32 input.
        gamma: [C] scale.
        beta: [C] offset.
        epsilon: Variance epsilon.
        swish: Apply swish after the normalisation.
        library: `native.native_ops().library` (see `native_library`).

    Returns:
        The normalised (and activated) tensor, shaped as x.
    """

    @tf.custom_gradient
    def batch_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor):
        x = tf.identity(x)  # See `depthwise_conv2d_same`.
        y, mean, inv_std = library.bignas_batch_norm(x, gamma, beta, epsilon=epsilon, swish=swish)

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            return tuple(
                library.bignas_batch_norm_grad(dy, x, gamma, beta, mean, inv_std, swish=swish)
            )

        return y, grad

    return batch_norm(x, gamma, beta)


def scale_channels(x: tf.Tensor, s: tf.Tensor, native: bool = True) -> tf.Tensor:
    """`x * s`, s one value per sample and channel (squeeze-excite's product), with a native gradient.

    The gradient, dx = dy * s and ds = the sum of dy * x over each sample's
    pixels, is `BignasScaleChannelsGrad` (one pass over dy and x, where
    TensorFlow's gradient of the product runs two products over the whole
    tensor and a sum); dx has the stock gradient's bits, ds another rounding
    of the same sum. The forward pass is the stock product. Where the kernels
    do not build, or without `native`: `x * s` and its stock gradient.

    Args:
        x: [N, ..., C] float32 tensor.
        s: [N, 1, ..., 1, C] scales.
        native: The native gradient where it builds.

    Returns:
        x * s.
    """
    library = native_library(x, native)
    if library is None:
        return x * s

    @tf.custom_gradient
    def scale(x: tf.Tensor, s: tf.Tensor):
        x = tf.identity(x)  # See `depthwise_conv2d_same`.

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tuple(library.bignas_scale_channels_grad(dy, x, s))

        return x * s, grad

    return scale(x, s)


def keras_activation(name: str) -> str:
    """The stock Keras activation name equal to `activation(x, name)`."""
    return {"swish": "silu", "relu": "relu", "hswish": "hard_silu"}[name]


def take(variable: tf.Variable | tf.Tensor, begin: list, size: list) -> tf.Tensor:
    """Slices a weight with `tf.slice` (size -1 keeps a whole axis).

    `tf.slice` rather than strided slicing: its gradient is a single
    multi-threaded `tf.pad`, which is markedly cheaper than `StridedSliceGrad`
    for the 4-D kernels here.

    Args:
        variable: The full weight.
        begin: Start per axis (ints or scalar tensors).
        size: Size per axis (ints or scalar tensors, -1 for all).

    Returns:
        The slice.
    """
    return tf.slice(variable, _index_vector(begin), _index_vector(size))


def pointwise_conv(x: tf.Tensor, w: tf.Tensor, matmul_forward: bool = False) -> tf.Tensor:
    """`tf.nn.conv2d(x, w, 1, "SAME")` for a 1x1 kernel, with its gradients as matrix products.

    The forward pass is the stock convolution (so a sliced child computes the
    supernet's outputs bit for bit), or with `matmul_forward` one matrix
    product over the pixels (training does not use it: the step gained 8-9%
    with it in two of three interleaved runs at 128 px and lost 2% in the
    third; `python -m benchmarks.fresh_shapes
    --compare=pointwise_forward`, "Fresh shapes" in `benchmarks/README.md`). Its two
    gradients are the same sums as the stock ones, each one matrix product
    over the pixels (dx = dy w^T, dw = x^T dy), which oneDNN runs faster than
    its 1x1 convolution gradients on one thread per op
    (`benchmarks/conv_kernels.py`).

    Args:
        x: [B, H, W, C] input.
        w: [1, 1, C, N] kernel.
        matmul_forward: The forward pass as a matrix product (the same sums
            in another order).

    Returns:
        [B, H, W, N].
    """

    @tf.custom_gradient
    def conv(x: tf.Tensor, w: tf.Tensor):
        x = tf.identity(x)  # See `depthwise_conv2d_same`.

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            xs, ws = tf.shape(x), tf.shape(w)
            # Reshapes, not w[0, 0]: their gradients are free.
            dy2 = tf.reshape(dy, [-1, ws[3]])
            dx = tf.matmul(dy2, tf.reshape(w, ws[2:]), transpose_b=True)
            dw = tf.matmul(tf.reshape(x, [-1, xs[3]]), dy2, transpose_a=True)
            return tf.reshape(dx, xs), tf.reshape(dw, ws)

        if not matmul_forward:
            return tf.nn.conv2d(x, w, 1, "SAME"), grad
        xs, ws = tf.shape(x), tf.shape(w)
        y = tf.matmul(tf.reshape(x, [-1, xs[3]]), tf.reshape(w, ws[2:]))
        return tf.reshape(y, tf.concat([xs[:3], ws[3:]], 0)), grad

    return conv(x, w)


def _same_padding(size: tf.Tensor, kernel: tf.Tensor, stride: int) -> tuple[tf.Tensor, tf.Tensor]:
    """TensorFlow's "SAME" padding (before, after) of one spatial axis."""
    out = (size + stride - 1) // stride
    total = tf.maximum((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_conv2d_same(
    x: tf.Tensor, w: tf.Tensor, stride: int, native: bool = True
) -> tf.Tensor:
    """`tf.nn.depthwise_conv2d(x, w, stride, "SAME")` whose filter gradient runs another CPU kernel.

    The forward pass and the input gradient are the stock ops (oneDNN's
    kernels on x86). Only the filter gradient changes: oneDNN runs a
    depthwise filter gradient with a kernel larger than 3x3 (and small maps
    with many channels) as a grouped convolution on dense 16x16 channel
    blocks, several times slower on one thread than the alternatives. Where
    this machine builds them (`native.native_ops`), the gradient is
    `BignasDepthwiseFilterGrad`, which reads the input in place (no padded
    copy) and sums each output row's products in vector registers. Else it
    is TensorFlow's own depthwise kernel, which the op selects when its
    padding is given as "EXPLICIT" (oneDNN's rewrite leaves that form
    alone): the input is padded here as "SAME" pads it and the op runs with
    explicit zero padding. Either way the same sums, in another order. Per
    layer of the default space: `benchmarks/conv_kernels.py`.

    Args:
        x: [B, H, W, C] input.
        w: [k, k, C, 1] kernel.
        stride: Stride of both spatial axes.
        native: Use the native kernel where it builds; False: TensorFlow's.

    Returns:
        [B, ceil(H / stride), ceil(W / stride), C].
    """
    strides = [1, stride, stride, 1]
    library = native_library(x, native)

    @tf.custom_gradient
    def conv(x: tf.Tensor, w: tf.Tensor):
        # The gradient refers to a tensor of this function's graph: when x is a
        # `tf.cond` branch's input (a block without an expand conv), a gradient
        # that captured it directly was left with an unfed placeholder (TF 2.21).
        x = tf.identity(x)

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=strides, padding="SAME"
            )
            xs, ws = tf.shape(x), tf.shape(w)
            if library is not None:
                dw = library.bignas_depthwise_filter_grad(x, dy, ws[0], stride=stride)
                return dx, tf.reshape(dw, ws)
            top, bottom = _same_padding(xs[1], ws[0], stride)
            left, right = _same_padding(xs[2], ws[1], stride)
            padded = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            dw = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
                input=padded,
                filter_sizes=ws,
                out_backprop=dy,
                strides=strides,
                padding="EXPLICIT",
                explicit_paddings=[0] * 8,
            )
            return dx, dw

        return tf.nn.depthwise_conv2d(x, w, strides, "SAME"), grad

    return conv(x, w)


def decayed(weight: tf.Tensor, rate: tf.Tensor | None) -> tf.Tensor:
    """`weight` unchanged, with `rate * weight` added to its gradient: L2 decay of this slice.

    The gradient of `rate / 2 * sum(weight ** 2)` for exactly the weights a
    child uses (the slice it took), so a child's weight decay falls on its own
    weights only (`sandwich.regularize_all_children`), not on the whole
    supernet.

    Args:
        weight: A (sliced) kernel.
        rate: The decay rate (scalar tensor), or None for no decay.

    Returns:
        The same values.
    """
    if rate is None:
        return weight

    @tf.custom_gradient
    def own_decay(w: tf.Tensor) -> tuple[tf.Tensor, object]:
        return tf.identity(w), lambda dy: dy + tf.cast(rate, w.dtype) * w

    return own_decay(weight)


def _index_vector(values: list) -> tf.Tensor:
    """A 1-D int32 vector: one constant when every entry is an int, else a stack.

    A single constant keeps the traced graph small (the training step slices
    hundreds of weights per child, and each `tf.stack` of constants is a node
    more to trace and to optimise).
    """
    if all(isinstance(v, int) for v in values):
        return tf.constant(values, tf.int32)
    return tf.stack(values)


def active_channels(x: tf.Tensor, known: tf.Tensor | None) -> tf.Tensor:
    """The channels of a slice-mode input: `known` when the caller holds them, else x's.

    The caller's width (`supernet.run_ops` tracks one per value) saves a shape
    op per layer in the traced graph.
    """
    return tf.shape(x)[-1] if known is None else known


class DynamicConv2D(keras.layers.Layer):
    """A dense (groups=1) convolution whose input and output channels can shrink.

    Args:
        max_in: Largest input channels.
        max_out: Largest output channels.
        kernel_size: Square kernel size.
        strides: Stride.
        use_bias: Whether to add a bias.
        kernel_initializer: Kernel initializer; `conv_kernel_initializer()` if None.
        **kwargs: Base layer arguments (e.g. name).
    """

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_size: int = 1,
        strides: int = 1,
        use_bias: bool = False,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.max_in, self.max_out = max_in, max_out
        self.kernel_size, self.strides, self.use_bias = kernel_size, strides, use_bias
        k = kernel_size
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k, k, max_in, max_out),
            initializer=kernel_initializer or conv_kernel_initializer(),
        )
        self.bias = (
            self.add_weight(name="bias", shape=(max_out,), initializer="zeros")
            if use_bias
            else None
        )
        self.built = True

    def call(
        self,
        x: tf.Tensor,
        out_ch: tf.Tensor,
        mode: str = "slice",
        in_ch: tf.Tensor | None = None,
        decay: tf.Tensor | None = None,
        weights: Mapping[str, tf.Tensor] | None = None,
        matmul_forward: bool = False,
    ) -> tf.Tensor:
        """Convolves with the first `out_ch` filters over the input's channels.

        Args:
            x: [B, H, W, C] input (C active channels in slice mode, max_in in mask mode).
            out_ch: Active output channels (scalar int tensor).
            mode: "slice" or "mask".
            in_ch: C when the caller knows it (slice mode); read from x if None.
            decay: Slice mode: weight decay of the used kernel slice (`decayed`).
            weights: Slice mode: the full "kernel" (and "bias") to use instead
                of this layer's own (a block traced once for several blocks).
            matmul_forward: A 1x1 kernel on a CPU-only host in slice mode: the
                forward pass as a matrix product (`pointwise_conv`).

        Returns:
            [B, H', W', out_ch] (slice) or [B, H', W', max_out] masked (mask).
        """
        if mode == "slice":
            own = weights or self.full_weights()
            w = take(own["kernel"], [0, 0, 0, 0], [-1, -1, active_channels(x, in_ch), out_ch])
            w = decayed(w, decay)
            b = take(own["bias"], [0], [out_ch]) if self.use_bias else None
        else:
            w, b = self.kernel, self.bias
        if self.kernel_size == 1 and self.strides == 1 and cpu_gradients(mode):
            y = pointwise_conv(x, w, matmul_forward)
        else:
            y = tf.nn.conv2d(x, w, self.strides, "SAME")
        if b is not None:
            y = y + b
        if mode == "mask":
            y = y * channel_mask(out_ch, self.max_out, y.dtype)
        return y

    def full_weights(self) -> dict[str, keras.Variable]:
        """The full weights a slice-mode call slices, by the names `call(weights=)` takes."""
        return {"kernel": self.kernel, **({"bias": self.bias} if self.use_bias else {})}


class DynamicDepthwiseConv2D(keras.layers.Layer):
    """A depthwise convolution whose channels and (centred) kernel can shrink.

    Args:
        max_ch: Largest channels.
        max_kernel: Largest (odd) kernel size.
        strides: Stride.
        **kwargs: Base layer arguments.
    """

    def __init__(self, max_ch: int, max_kernel: int, strides: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_ch, self.max_kernel, self.strides = max_ch, max_kernel, strides
        self.kernel = self.add_weight(
            name="depthwise_kernel",
            shape=(max_kernel, max_kernel, max_ch, 1),
            initializer=conv_kernel_initializer(),
        )
        self.built = True

    def call(
        self,
        x: tf.Tensor,
        kernel_size: tf.Tensor,
        mode: str = "slice",
        in_ch: tf.Tensor | None = None,
        decay: tf.Tensor | None = None,
        weights: Mapping[str, tf.Tensor] | None = None,
        native: bool = True,
    ) -> tf.Tensor:
        """Applies the centre `kernel_size` x `kernel_size` taps to the input's channels.

        Args:
            x: [B, H, W, C] input.
            kernel_size: Active kernel size (scalar int tensor, odd).
            mode: "slice" or "mask".
            in_ch: C when the caller knows it (slice mode); read from x if None.
            decay: Slice mode: weight decay of the used kernel slice (`decayed`).
            weights: Slice mode: the full "kernel" to use instead of this layer's own.
            native: Slice mode on a CPU-only host: the filter gradient on the
                native kernel where it builds (`depthwise_conv2d_same`).

        Returns:
            [B, H', W', C].
        """
        big = self.max_kernel
        if mode == "slice":
            start = (big - kernel_size) // 2
            c = active_channels(x, in_ch)
            full = (weights or self.full_weights())["kernel"]
            w = decayed(take(full, [start, start, 0, 0], [kernel_size, kernel_size, c, -1]), decay)
        else:
            taps = tf.cast(
                tf.abs(tf.range(big) - big // 2) <= tf.cast(kernel_size, tf.int32) // 2,
                self.kernel.dtype,
            )
            w = self.kernel * (taps[:, None, None, None] * taps[None, :, None, None])
        if cpu_gradients(mode):
            return depthwise_conv2d_same(x, w, self.strides, native=native)
        return tf.nn.depthwise_conv2d(x, w, [1, self.strides, self.strides, 1], "SAME")

    def full_weights(self) -> dict[str, keras.Variable]:
        """The full weights a slice-mode call slices, by the names `call(weights=)` takes."""
        return {"kernel": self.kernel}


class DynamicBatchNorm(keras.layers.Layer):
    """Batch norm over the active channels, with calibration accumulators.

    Args:
        max_ch: Largest channels.
        epsilon: Variance epsilon (the same as the sliced `BatchNormalization`).
        zero_gamma: Initialise gamma to zero (last BN of a residual block).
        synchronized: Compute batch statistics across all replicas.
        **kwargs: Base layer arguments.
    """

    def __init__(
        self,
        max_ch: int,
        epsilon: float = 1e-3,
        zero_gamma: bool = False,
        synchronized: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.max_ch, self.epsilon, self.synchronized = max_ch, epsilon, synchronized
        self.gamma = self.add_weight(
            name="gamma", shape=(max_ch,), initializer="zeros" if zero_gamma else "ones"
        )
        self.beta = self.add_weight(name="beta", shape=(max_ch,), initializer="zeros")
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(max_ch,), initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(max_ch,), initializer="ones", trainable=False
        )
        # Exact cumulative sums for calibration: sum of x, sum of x^2, count. They
        # are accumulated from all-reduced sums, so every replica holds the same.
        self.calib_sum = self.add_weight(
            name="calib_sum",
            shape=(max_ch,),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.calib_sqsum = self.add_weight(
            name="calib_sqsum",
            shape=(max_ch,),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.calib_count = self.add_weight(
            name="calib_count",
            shape=(),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.built = True

    def _batch_sums(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Per-channel sum, sum of squares and count, summed over all replicas."""
        s = tf.reduce_sum(x, axis=[0, 1, 2])
        sq = tf.reduce_sum(tf.square(x), axis=[0, 1, 2])
        shape = tf.shape(x)
        n = tf.cast(shape[0] * shape[1] * shape[2], x.dtype)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            s, sq, n = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [s, sq, n])
        return s, sq, n

    def _fused_batch_norm(
        self, x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Batch-statistics BN with the fused kernel: (y, mean, unbiased variance)."""
        y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.zeros([0], x.dtype),
            variance=tf.zeros([0], x.dtype),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        return y, mean, unbiased

    def reset_calibration(self) -> None:
        """Zeroes the calibration accumulators."""
        for v in (self.calib_sum, self.calib_sqsum, self.calib_count):
            v.assign(tf.zeros_like(v))

    def full_weights(self) -> dict[str, keras.Variable]:
        """The full weights a call slices, by the names `call(weights=)` takes."""
        return {"gamma": self.gamma, "beta": self.beta}

    def calibrated_stats(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Mean and (biased) variance over everything accumulated since the reset."""
        n = tf.maximum(self.calib_count, 1.0)
        mean = self.calib_sum / n
        var = tf.maximum(self.calib_sqsum / n - tf.square(mean), 0.0)
        return mean, var

    def call(
        self,
        x: tf.Tensor,
        bn_mode: str = "batch",
        mode: str = "slice",
        ch: tf.Tensor | None = None,
        weights: Mapping[str, tf.Tensor] | None = None,
        act: str | None = None,
        native: bool = False,
    ) -> tf.Tensor:
        """Normalises the active channels (and applies the activation that follows).

        Args:
            x: [B, H, W, C] input.
            bn_mode: "batch", "stored" or "calibrate".
            mode: "slice" or "mask".
            ch: Active channels: needed in mask mode to zero the rest; in
                slice mode (x has exactly `ch` channels) it saves a shape op.
            weights: The full "gamma" and "beta" to use instead of this
                layer's own (a block traced once for several blocks).
            act: The activation applied to the result (`activation`), or None.
            native: Slice mode on a CPU-only host (`cpu_gradients`): batch
                statistics (not synchronised) with no activation or swish run
                on `batch_norm_native` where the kernels build, and a swish
                otherwise takes `swish_native_grad`.

        Returns:
            The normalised (and activated) tensor, same shape as x.
        """
        # In slice mode the input has exactly `ch` channels.
        c = active_channels(x, ch if mode == "slice" else None)
        own = weights or self.full_weights()
        gamma, beta = take(own["gamma"], [0], [c]), take(own["beta"], [0], [c])
        fusable = bn_mode == "batch" and not self.synchronized and act in (None, "swish")
        library = native_library(x, native and mode == "slice" and fusable)
        if library is not None:
            return batch_norm_native(x, gamma, beta, self.epsilon, act == "swish", library)
        if bn_mode == "stored":
            mean, var = self.moving_mean[:c], self.moving_variance[:c]
            y = tf.nn.batch_normalization(x, mean, var, beta, gamma, self.epsilon)
        elif bn_mode in ("batch", "calibrate"):
            if self.synchronized:
                total, sq_total, n = self._batch_sums(x)
                mean = total / n
                var = tf.maximum(sq_total / n - tf.square(mean), 0.0)
                y = tf.nn.batch_normalization(x, mean, var, beta, gamma, self.epsilon)
            else:
                # One fused kernel for statistics and normalisation (forward and
                # backward): markedly cheaper than moments + batch_normalization.
                # Only calibration needs the statistics; a training step
                # leaves them out of its graph.
                y, mean, unbiased = self._fused_batch_norm(x, gamma, beta)
                if bn_mode == "calibrate":
                    shape = tf.shape(x)
                    n = tf.cast(shape[0] * shape[1] * shape[2], x.dtype)
                    var = unbiased * (n - 1.0) / tf.maximum(n, 2.0)
                    total, sq_total = mean * n, (var + tf.square(mean)) * n
                    ctx = tf.distribute.get_replica_context()
                    if ctx is not None and ctx.num_replicas_in_sync > 1:
                        total, sq_total, n = ctx.all_reduce(
                            tf.distribute.ReduceOp.SUM, [total, sq_total, n]
                        )
            if bn_mode == "calibrate":
                pad = [[0, self.max_ch - c]]
                self.calib_sum.assign_add(tf.pad(total, pad))
                self.calib_sqsum.assign_add(tf.pad(sq_total, pad))
                self.calib_count.assign_add(n)
        else:
            raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {BN_MODES}")
        if mode == "mask" and ch is not None:
            y = y * channel_mask(ch, self.max_ch, y.dtype)
        if act is None:
            return y
        return activation(y, act, native_grad=native, native_forward=native and bn_mode == "batch")


class DynamicDense(keras.layers.Layer):
    """A classifier whose input features can shrink.

    Args:
        max_in: Largest input features.
        units: Outputs.
        **kwargs: Base layer arguments.
    """

    def __init__(self, max_in: int, units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_in, self.units = max_in, units
        self.kernel = self.add_weight(
            name="kernel", shape=(max_in, units), initializer=dense_kernel_initializer()
        )
        self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros")
        self.built = True

    def call(self, x: tf.Tensor, decay: tf.Tensor | None = None) -> tf.Tensor:
        """[B, C] -> [B, units] with the first C rows of the kernel.

        Args:
            x: [B, C] features.
            decay: Weight decay of the used kernel rows (`decayed`), or None.

        Returns:
            [B, units] logits.
        """
        kernel = decayed(take(self.kernel, [0, 0], [tf.shape(x)[-1], -1]), decay)
        return tf.matmul(x, kernel) + self.bias
