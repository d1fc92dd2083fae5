"""The weight-sharing supernet: one Keras model that holds the largest weights
and runs any child of a `SearchSpace`.

Usage:
    >>> space = bignas_tiny()
    >>> net = Supernet(space, num_classes=10)
    >>> arch = space.sample(seed=0)
    >>> logits = net(images, arch=net.encode_arch(arch), training=True)

Design.

The architecture travels into compiled functions as a small dict of int32
tensors (`encode_arch`): widths, depths, and per-layer kernel sizes, expanded
and squeeze-excite channels. Its shapes depend only on the space, so a
`tf.function` that takes it is traced once per input resolution and every new
child reuses that trace. Passing an `ArchConfig` works too (it is encoded on
the fly), but inside a `tf.function` a Python value in the signature retraces
per child, so training and calibration loops pass the encoded tensors.

Two execution modes, chosen per supernet (`mode=`):

- ``"slice"``, the default on CPU and GPU: every layer slices its variables to
  the active channels and kernel with tensor-valued sizes, and inactive layers
  are skipped with `tf.cond`. Convolutions then run on exactly the child's
  shapes, so a small child costs about what its static model costs (see
  `benchmarks/supernet_vs_static.py`). Shapes inside the graph are dynamic,
  which XLA cannot compile. Inside a compiled training step, the blocks after
  the first of a stage (same ops, same weight shapes) run through one
  `tf.function` that takes their weights as arguments, traced once per stage
  with its backward (`share_block_traces`): a shorter trace, the same ops and
  values.
- ``"mask"``, for XLA and TPUs (`jit_compile=True`): the full weights always
  run; inactive channels, kernel taps and layers are multiplied by zero masks,
  so every shape is static and one compiled program serves every child. Its
  cost is that of the largest child, which is what a TPU pays anyway for static
  shapes.

Both modes compute the same function, and `tf_bignas.model.slicing.extract_child`
turns any child into a stock Keras model with the same outputs.

Following the paper (section 3.1): the gamma of the last BN of every residual
block starts at zero (`zero_init_last_bn`), and each stage transition that
changes resolution or channels gets a shortcut of 2x2 average pooling and/or a
1x1 conv + BN (`stage_shortcuts`); both can be switched off for ablations.

Batch norm uses batch statistics during supernet training and keeps no running
averages. For inference each child needs its own calibrated statistics; the
supernet stores them per child in `bn_stats` (a `BNStatsStore` keyed by the
arch, resolution included) and `load_bn_stats(arch)` puts a child's statistics
into the BN layers' moving variables, which `training=False` then uses.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from tf_bignas.model.bn_stats import BNStats, BNStatsStore
from tf_bignas.model.layers import (
    BN_MODES,
    MODES,
    DynamicBatchNorm,
    DynamicConv2D,
    DynamicDense,
    DynamicDepthwiseConv2D,
    activation,
    cpu_gradients,
    scale_channels,
)
from tf_bignas.model.netplan import (
    BlockPlan,
    NetPlan,
    Op,
    block_ops,
    head_ops,
    net_plan,
    plan_ops,
    stem_ops,
)
from tf_bignas.space import ArchConfig, InvalidArchError, SearchSpace

ArchTensors = Mapping[str, tf.Tensor]

# Ops whose layer holds weights a block function takes as arguments.
WEIGHTED_KINDS = ("conv", "dwconv", "bn")


class _BlockFunctions:
    """One compiled function per block shape, shared by the blocks of that shape.

    The blocks after the first of a stage have the same ops and weight shapes;
    their training pass (forward and, through the tape, backward) is traced
    once with the weights as arguments instead of once per block, which
    shortens the training step's trace. Not a Keras-tracked attribute.
    """

    def __init__(self) -> None:
        # key -> (the function, the block it was traced with)
        self.functions: dict[tuple, tuple[Callable[..., tf.Tensor], MBConvBlock]] = {}


def _dynamic_layer(
    op: Op, max_kernel: int, zero_init_last_bn: bool, synchronized_bn: bool, bn_epsilon: float
) -> keras.layers.Layer | None:
    """The dynamic layer of a weighted op at its largest size (None for the rest)."""
    if op.kind == "conv":
        # Every conv, squeeze-excite ones included, starts as in EfficientNet
        # (`conv_kernel_initializer`, the layer's default).
        return DynamicConv2D(
            op.in_ch, op.out_ch, op.kernel, op.stride, use_bias=op.bias, name=op.name
        )
    if op.kind == "dwconv":
        return DynamicDepthwiseConv2D(op.out_ch, max_kernel, op.stride, name=op.name)
    if op.kind == "bn":
        return DynamicBatchNorm(
            op.out_ch,
            bn_epsilon,
            zero_gamma=zero_init_last_bn and op.branch_end,
            synchronized=synchronized_bn,
            name=op.name,
        )
    if op.kind == "dense":
        return DynamicDense(op.in_ch, op.out_ch, name=op.name)
    return None


def run_ops(
    ops: tuple[Op, ...],
    layers: Callable[[str], keras.layers.Layer],
    x: tf.Tensor,
    widths: Mapping[str, tf.Tensor],
    kernel: tf.Tensor | None,
    bn_mode: str,
    mode: str,
    active: tf.Tensor | None = None,
    decay: tf.Tensor | None = None,
    weights: Callable[[str], Mapping[str, tf.Tensor]] | None = None,
    native: bool = True,
) -> tf.Tensor:
    """Runs a list of ops (a block, the stem, the head up to pooling) for one child.

    Args:
        ops: The ops at the supernet's largest size (`netplan`).
        layers: Op name -> its dynamic layer.
        x: The input of the first op.
        widths: Active channels per `Op.width` ("mid", "se", "out", ...).
        kernel: Active depthwise kernel size (blocks).
        bn_mode: BN statistics mode.
        mode: "slice" or "mask".
        active: Mask mode only: 1.0 if the block is active, 0.0 to skip its
            residual branch.
        decay: Slice mode: weight decay of the convolution kernel slices used
            (`layers.decayed`), or None.
        weights: Slice mode: op name -> the full weights its layer uses
            instead of its own (`Supernet` traces a block once for every
            block of the same shape); None for the layers' own.
        native: Slice mode on a CPU-only host: the depthwise filter and swish
            gradients, batch-statistics BN (with the swish after it) and, in
            training, the squeeze-excite product's gradient, on the native
            kernels where they build (`native`).

    Returns:
        The output of the last op.
    """
    # A BN whose only reader is an activation applies it itself (one native
    # kernel each way for BN + swish; `DynamicBatchNorm.call`).
    readers = collections.Counter(name for op in ops for name in op.inputs)
    act_of = {
        op.name: nxt.function
        for op, nxt in zip(ops, ops[1:])
        if op.kind == "bn" and nxt.kind == "act" and nxt.inputs == (op.name,)
        if readers[op.name] == 1
    }
    native = native and cpu_gradients(mode)
    # Training's (batch statistics) forward ops on native kernels too: its
    # swish forward (`activation`) and its squeeze-excite product's gradient.
    native_training = native and bn_mode == "batch"
    values = {ops[0].inputs[0]: x}
    # Active channels of each value, where a width sets them (None: read the
    # tensor's shape); the layers slice with these instead of new shape ops.
    chans: dict[str, tf.Tensor | None] = {ops[0].inputs[0]: None}
    y = x
    for op in ops:
        h = values[op.inputs[0]]
        kind = op.kind
        in_ch = chans[op.inputs[0]]
        chans[op.name] = in_ch if op.width == "same" else widths[op.width]
        own = None if weights is None or kind not in WEIGHTED_KINDS else weights(op.name)
        if kind == "conv":
            y = layers(op.name)(
                h,
                widths[op.width],
                mode=mode,
                in_ch=in_ch,
                decay=decay,
                weights=own,
            )
        elif kind == "dwconv":
            y = layers(op.name)(
                h, kernel, mode=mode, in_ch=in_ch, decay=decay, weights=own, native=native
            )
        elif kind == "bn":
            y = layers(op.name)(
                h,
                bn_mode=bn_mode,
                mode=mode,
                ch=widths[op.width],
                weights=own,
                act=act_of.get(op.name),
                native=native,
            )
        elif kind == "act":
            # Applied by the BN before it, or here.
            y = (
                h
                if op.inputs[0] in act_of
                else activation(h, op.function, native_grad=native, native_forward=native_training)
            )
        elif kind == "se_pool":
            y = tf.reduce_mean(h, axis=[1, 2], keepdims=True)
        elif kind == "global_pool":
            y = tf.reduce_mean(h, axis=[1, 2])
        elif kind == "sigmoid":
            y = tf.sigmoid(h)
        elif kind == "mul":
            y = scale_channels(h, values[op.inputs[1]], native_training)
        elif kind == "pool":
            y = tf.nn.avg_pool2d(h, 2, 2, "SAME")
        elif kind == "add":
            branch = values[op.inputs[1]]
            y = h + (branch if active is None else branch * active)
        else:
            raise ValueError(f"op {op.name!r}: kind {kind!r} does not run in a supernet block")
        values[op.name] = y
    return y


class MBConvBlock(keras.layers.Layer):
    """A dynamic MBConv block: [expand 1x1] -> depthwise -> [SE] -> project 1x1.

    Its layers and their order come from `netplan.block_ops`; each weighted op's
    layer is an attribute named after the op without the block prefix
    (`expand_conv`, `dw_bn`, ...), which is also its checkpoint name.

    Args:
        plan: The block at its largest dimensions.
        max_kernel: Largest depthwise kernel.
        zero_init_last_bn: Zero-init the project BN gamma if the block is residual.
        synchronized_bn: Cross-replica batch statistics.
        bn_epsilon: BN epsilon.
        **kwargs: Base layer arguments.
    """

    def __init__(
        self,
        plan: BlockPlan,
        max_kernel: int,
        zero_init_last_bn: bool,
        synchronized_bn: bool,
        bn_epsilon: float,
        **kwargs,
    ) -> None:
        super().__init__(name=plan.name, **kwargs)
        self.plan = plan
        self.ops = block_ops(plan, "block_input")
        prefix = len(plan.name) + 1
        for op in self.ops:
            layer = _dynamic_layer(op, max_kernel, zero_init_last_bn, synchronized_bn, bn_epsilon)
            if layer is not None:
                setattr(self, op.name[prefix:], layer)
        self.built = True

    def op_layer(self, name: str) -> keras.layers.Layer:
        """The dynamic layer of one of the block's ops, by op name."""
        return getattr(self, name[len(self.plan.name) + 1 :])

    def weighted_ops(self) -> tuple[Op, ...]:
        """The ops whose layers hold weights, in the block's order."""
        return tuple(op for op in self.ops if op.kind in WEIGHTED_KINDS)

    def call(
        self,
        x: tf.Tensor,
        kernel: tf.Tensor,
        mid_ch: tf.Tensor,
        se_ch: tf.Tensor,
        out_ch: tf.Tensor,
        bn_mode: str,
        mode: str,
        active: tf.Tensor | None = None,
        decay: tf.Tensor | None = None,
        native: bool = True,
    ) -> tf.Tensor:
        """Runs the block for one child.

        Args:
            x: Block input.
            kernel: Depthwise kernel size.
            mid_ch: Expanded channels.
            se_ch: Squeeze-excite channels.
            out_ch: Output channels.
            bn_mode: BN statistics mode.
            mode: "slice" or "mask".
            active: Mask mode only: 1.0 if the layer is active, 0.0 to skip it.
            decay: Slice mode: weight decay of the kernel slices used, or None.
            native: The native kernels where they build (`run_ops`).

        Returns:
            The block output.
        """
        widths = {"mid": mid_ch, "se": se_ch, "out": out_ch}
        return run_ops(
            self.ops, self.op_layer, x, widths, kernel, bn_mode, mode, active, decay, native=native
        )


class Supernet(keras.Model):
    """The weight-sharing supernet of a search space.

    Args:
        space: The search space.
        num_classes: Classifier outputs.
        mode: "slice" (CPU/GPU) or "mask" (XLA/TPU); see the module docstring.
        zero_init_last_bn: Zero-init the last BN gamma of every residual block.
        stage_shortcuts: Shortcuts (pool and/or 1x1 conv) at stage transitions.
        synchronized_bn: Batch statistics over all replicas.
        dropout_rate: Dropout before the classifier, applied when `dropout=True`.
        bn_epsilon: BN epsilon.
        native_kernels: Slice mode on a CPU-only host: the depthwise filter and
            swish gradients, and training's batch norm with the swish after
            it, on native kernels (`tf_bignas.model.native`; built on first
            use, TensorFlow's ops where they do not build); False:
            TensorFlow's ops always.
        name: Model name.

    Raises:
        ValueError: For an unknown mode.
    """

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        *,
        mode: str = "slice",
        zero_init_last_bn: bool = True,
        stage_shortcuts: bool = True,
        synchronized_bn: bool = False,
        dropout_rate: float = 0.2,
        bn_epsilon: float = 1e-3,
        native_kernels: bool = True,
        name: str = "supernet",
    ) -> None:
        super().__init__(name=name)
        if mode not in MODES:
            raise ValueError(f"unknown supernet mode {mode!r}; allowed: {list(MODES)}")
        self.space = space
        self.num_classes = num_classes
        self.mode = mode
        self.zero_init_last_bn = zero_init_last_bn
        self.stage_shortcuts = stage_shortcuts
        self.synchronized_bn = synchronized_bn
        self.dropout_rate = dropout_rate
        self.bn_epsilon = bn_epsilon
        self.native_kernels = native_kernels
        self.bn_stats = BNStatsStore()
        self.max_plan: NetPlan = net_plan(space, space.largest(), num_classes, stage_shortcuts)
        mp = self.max_plan
        self.stem_ops = stem_ops(mp)
        self.head_ops = head_ops(mp, mp.blocks[-1].name + "_out")

        def add_layers(ops: tuple[Op, ...]) -> None:
            for op in ops:
                layer = _dynamic_layer(op, 1, False, synchronized_bn, bn_epsilon)
                if layer is not None:
                    setattr(self, op.name, layer)

        add_layers(self.stem_ops)
        self.blocks = [
            MBConvBlock(
                b, space.stages[b.stage].max_kernel, zero_init_last_bn, synchronized_bn, bn_epsilon
            )
            for b in mp.blocks
        ]
        # Keras 3 does not hand list attributes to tf.train.Checkpoint: without
        # this, a training checkpoint reaches the block weights only through the
        # optimizer, and a model-only restore (an unfinished workdir opened for
        # export) would silently leave every block at its initial weights.
        for blk in self.blocks:
            self._track_trackable(blk, name=blk.name)
        add_layers(self.head_ops)
        self._block_functions = _BlockFunctions()
        # Trace the repeated blocks of a stage once (`_shared_block`); False
        # traces every block on its own (the same ops and values).
        self.share_block_traces = True
        self.built = True

    # ---- architecture encoding ------------------------------------------------
    def encode_arch(self, arch: ArchConfig) -> dict[str, np.ndarray]:
        """Encodes a child as fixed-shape int32 arrays for compiled functions.

        Args:
            arch: The child.

        Returns:
            {"widths": [S+2], "depths": [S], "kernels": [L], "mids": [L], "ses": [L]}
            where L is the number of supernet layers; inactive layers are padded.

        Raises:
            InvalidArchError: If the arch is not in the space.
        """
        self.space.validate(arch)
        plan = net_plan(self.space, arch, self.num_classes, self.stage_shortcuts)
        by_pos = {(b.stage, b.index): b for b in plan.blocks}
        kernels, mids, ses = [], [], []
        for mb in self.max_plan.blocks:
            b = by_pos.get((mb.stage, mb.index), mb)
            kernels.append(b.kernel)
            mids.append(b.mid_ch)
            ses.append(b.se_ch)
        i32 = np.int32
        return {
            "widths": np.asarray(arch.widths, i32),
            "depths": np.asarray(arch.depths, i32),
            "kernels": np.asarray(kernels, i32),
            "mids": np.asarray(mids, i32),
            "ses": np.asarray(ses, i32),
        }

    def _arch_tensors(self, arch: ArchConfig | ArchTensors, images: tf.Tensor) -> ArchTensors:
        if isinstance(arch, ArchConfig):
            res = images.shape[1]
            if res is not None and res != arch.resolution:
                raise InvalidArchError(
                    f"images are {res}x{images.shape[2]} but the arch has resolution "
                    f"{arch.resolution}; resize the images or use arch.with_resolution({res})"
                )
            arch = self.encode_arch(arch)
        if not isinstance(arch, Mapping):
            raise InvalidArchError(
                f"arch must be an ArchConfig or the dict from encode_arch, got {type(arch).__name__}"
            )
        return {k: tf.convert_to_tensor(v, tf.int32) for k, v in arch.items()}

    # ---- forward ----------------------------------------------------------------
    def call(
        self,
        images: tf.Tensor,
        arch: ArchConfig | ArchTensors | None = None,
        training: bool = False,
        bn_mode: str | None = None,
        dropout: bool | tf.Tensor = False,
        dropout_seed: tf.Tensor | None = None,
        weight_decay: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Runs one child.

        Args:
            images: [B, R, R, 3] normalised images at the child's resolution.
            arch: The child, as an ArchConfig or `encode_arch` tensors (default: largest).
            training: Training mode (BN batch statistics unless `bn_mode` says otherwise).
            bn_mode: "batch", "stored" or "calibrate"; default "batch" when training,
                else "stored".
            dropout: Apply dropout before the classifier (only when training); a
                bool, or a 0/1 float tensor (needs `dropout_seed`) so that one
                trace serves children with and without dropout.
            dropout_seed: Optional [2] int seed for stateless (reproducible,
                resumable) dropout; stateful dropout if None.
            weight_decay: Slice mode: this child's own weight decay (scalar
                tensor), added to the gradient of every convolution and dense
                kernel slice it uses (`layers.decayed`); None for none.

        Returns:
            [B, num_classes] logits.

        Raises:
            InvalidArchError: If the arch is invalid or mismatches the images.
            ValueError: For an unknown bn_mode, or weight_decay in mask mode.
        """
        if arch is None:
            arch = self.space.largest(resolution=images.shape[1])
        a = self._arch_tensors(arch, images)
        bn_mode = bn_mode or ("batch" if training else "stored")
        if bn_mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {list(BN_MODES)}")
        mode = self.mode
        if weight_decay is not None and mode != "slice":
            raise ValueError(
                "a child's own weight_decay needs mode='slice' (mask mode uses every weight); "
                f"this supernet has mode={mode!r}"
            )
        decay = weight_decay
        # BN statistics summed across replicas (synchronized BN, calibration)
        # cannot sit inside `tf.cond` under MirroredStrategy (its all-reduce is
        # a merge_call), so inactive layers are then gated by multiplication.
        ctx = tf.distribute.get_replica_context()
        cross_replica = (
            ctx is not None
            and ctx.num_replicas_in_sync > 1
            and (bn_mode == "calibrate" or (bn_mode == "batch" and self.synchronized_bn))
        )
        widths, depths = a["widths"], a["depths"]
        # Inside a compiled function (the training step), the blocks after the
        # first of a stage share one traced function (`_shared_block`) when
        # the stage has two or more of them; eager calls run the layers directly.
        shared = (
            self.share_block_traces
            and mode == "slice"
            and bn_mode == "batch"
            and not cross_replica
            and not self.synchronized_bn
            and not tf.executing_eagerly()
        )
        stem_widths = {"stem": widths[0]}
        native = self.native_kernels
        x = run_ops(
            self.stem_ops,
            self.op_layer,
            images,
            stem_widths,
            None,
            bn_mode,
            mode,
            decay=decay,
            native=native,
        )
        for i, blk in enumerate(self.blocks):
            p = blk.plan
            kwargs = dict(
                kernel=a["kernels"][i],
                mid_ch=a["mids"][i],
                se_ch=a["ses"][i],
                out_ch=widths[p.stage + 1],
                bn_mode=bn_mode,
                mode=mode,
                decay=decay,
                native=native,
            )
            if shared and p.index > 0 and max(self.space.stages[p.stage].depths) > 2:
                run = lambda x, blk=blk, kw=kwargs: self._shared_block(blk, x, kw)  # noqa: E731
            else:
                run = lambda x, blk=blk, kw=kwargs: blk(x, **kw)  # noqa: E731
            if p.index < min(self.space.stages[p.stage].depths):
                # In every child of the space: no gate (an idle `tf.cond` costs
                # its gradient's trace and its intermediates' plumbing).
                x = run(x)
            elif mode == "slice" and not cross_replica:
                x = tf.cond(p.index < depths[p.stage], lambda run=run, x=x: run(x), lambda x=x: x)
            else:
                active = tf.cast(p.index < depths[p.stage], x.dtype)
                x = blk(x, active=active, **kwargs)
        pooled = [op for op in self.head_ops if op.kind not in ("dropout", "dense")]
        x = run_ops(
            tuple(pooled),
            self.op_layer,
            x,
            {"head": widths[-1]},
            None,
            bn_mode,
            mode,
            decay=decay,
            native=native,
        )
        if isinstance(dropout, tf.Tensor) and training and self.dropout_rate > 0:
            if dropout_seed is None:
                raise ValueError("a tensor-valued dropout switch needs dropout_seed")
            rate = self.dropout_rate * tf.cast(dropout, x.dtype)
            x = tf.nn.experimental.stateless_dropout(x, rate=rate, seed=dropout_seed)
        elif (
            not isinstance(dropout, tf.Tensor)
            and bool(dropout)
            and training
            and self.dropout_rate > 0
        ):
            if dropout_seed is None:
                x = tf.nn.dropout(x, rate=self.dropout_rate)
            else:
                x = tf.nn.experimental.stateless_dropout(
                    x, rate=self.dropout_rate, seed=dropout_seed
                )
        return self.classifier(x, decay=decay)

    def _shared_block(self, blk: MBConvBlock, x: tf.Tensor, kwargs: dict) -> tf.Tensor:
        """Runs a block through the one traced function of its shape (slice mode, batch BN).

        Same ops, weights and results as `blk(x, **kwargs)`; the function takes
        the block's full weights as arguments, so every block of the same
        shape (the blocks after the first of a stage) reuses its trace, and
        the tape's backward function of it.
        """
        p = blk.plan
        decay = kwargs["decay"]
        key = (p.stage, decay is None)
        fns = self._block_functions.functions
        if key not in fns:
            template = blk

            def body(x, kernel, mid, se, out, decay, weights):
                by_name = {op.name: w for op, w in zip(template.weighted_ops(), weights)}
                return run_ops(
                    template.ops,
                    template.op_layer,
                    x,
                    {"mid": mid, "se": se, "out": out},
                    kernel,
                    "batch",
                    "slice",
                    decay=decay,
                    weights=by_name.__getitem__,
                    native=self.native_kernels,
                )

            fns[key] = (tf.function(body, autograph=False, reduce_retracing=True), blk)
        function, template = fns[key]
        weights = tuple(
            {k: tf.convert_to_tensor(v) for k, v in blk.op_layer(op.name).full_weights().items()}
            for op in blk.weighted_ops()
        )
        if template is not blk:
            want = [[tuple(v.shape) for v in template.op_layer(op.name).full_weights().values()]
                    for op in template.weighted_ops()]  # fmt: skip
            have = [[tuple(t.shape) for t in w.values()] for w in weights]
            if want != have:
                raise AssertionError(f"block {p.name} differs in shape from {template.plan.name}")
        return function(
            x, kwargs["kernel"], kwargs["mid_ch"], kwargs["se_ch"], kwargs["out_ch"], decay, weights
        )

    # ---- per-child BN statistics ----------------------------------------------
    def op_layer(self, name: str) -> keras.layers.Layer:
        """The dynamic layer of a stem or head op, by op name."""
        return getattr(self, name)

    def bn_layers(self) -> dict[str, DynamicBatchNorm]:
        """All BN layers by name."""
        out = {}
        for op in self.stem_ops + self.head_ops:
            if op.kind == "bn":
                out[op.name] = self.op_layer(op.name)
        for blk in self.blocks:
            for op in blk.ops:
                if op.kind == "bn":
                    out[op.name] = blk.op_layer(op.name)
        return out

    def bn_channels(self, arch: ArchConfig) -> dict[str, int]:
        """Active channels of every BN layer used by a child (inactive layers omitted)."""
        plan = net_plan(self.space, arch, self.num_classes, self.stage_shortcuts)
        return {op.name: op.out_ch for op in plan_ops(plan) if op.kind == "bn"}

    def current_bn_stats(self, arch: ArchConfig) -> BNStats:
        """The moving statistics now in the BN layers, sliced to a child's channels."""
        layers = self.bn_layers()
        return {
            name: (
                layers[name].moving_mean.numpy()[:ch],
                layers[name].moving_variance.numpy()[:ch],
            )
            for name, ch in self.bn_channels(arch).items()
        }

    def _compiled(self, key: str, fn: Callable[..., None]) -> Callable[..., None]:
        """`fn` as a `tf.function`, built once per supernet (not tracked by Keras).

        Per-child BN bookkeeping is a few hundred variable assignments; eager, they
        cost about 24 ms per child, a tenth of scoring a small child (measured in
        benchmarks/README.md, "Architecture search"). Compiled, they are one call.
        """
        cache = self.__dict__.get("_compiled_fns")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_compiled_fns", cache)
        if key not in cache:
            cache[key] = tf.function(fn, autograph=False)
        return cache[key]

    def reset_calibration(self) -> None:
        """Zeroes every BN layer's calibration accumulators (one compiled call)."""
        layers = list(self.bn_layers().values())

        def reset() -> None:
            for layer in layers:
                layer.reset_calibration()

        self._compiled("reset_calibration", reset)()

    def calibrated_bn_stats(self, arch: ArchConfig) -> BNStats:
        """Statistics accumulated since `reset_calibration`, sliced to a child's channels."""
        layers = self.bn_layers()
        out = {}
        for name, ch in self.bn_channels(arch).items():
            mean, var = layers[name].calibrated_stats()
            out[name] = (mean.numpy()[:ch], var.numpy()[:ch])
        return out

    def load_bn_stats(self, arch: ArchConfig, stats: BNStats | None = None) -> None:
        """Puts a child's statistics into the BN moving variables for `training=False`.

        Args:
            arch: The child.
            stats: Statistics to load; the stored ones (`bn_stats`) if None.

        Raises:
            KeyError: If no statistics are given or stored for the child.
        """
        stats = self.bn_stats.get(arch) if stats is None else stats
        layers = self.bn_layers()
        unknown = sorted(set(stats) - set(layers))
        if unknown:
            raise KeyError(f"statistics for BN layers the supernet does not have: {unknown[:5]}")
        names = list(layers)
        # Every layer gets a value of its full width, and a flag: layers outside
        # the child keep theirs. Fixed shapes, so one trace for every child.
        loaded, means, variances = [], [], []
        for name in names:
            layer = layers[name]
            mean, var = stats.get(name, (np.zeros(0), np.zeros(0)))
            pad = layer.max_ch - len(mean)
            loaded.append(name in stats)
            means.append(np.pad(np.asarray(mean, np.float32), (0, pad)))
            variances.append(np.pad(np.asarray(var, np.float32), (0, pad), constant_values=1.0))

        def load(flags: tf.Tensor, new_means: list, new_variances: list) -> None:
            for i, name in enumerate(names):
                layer = layers[name]
                layer.moving_mean.assign(tf.where(flags[i], new_means[i], layer.moving_mean))
                layer.moving_variance.assign(
                    tf.where(flags[i], new_variances[i], layer.moving_variance)
                )

        self._compiled("load_bn_stats", load)(tf.constant(loaded), means, variances)

    def get_config(self) -> dict:
        """Constructor arguments, the whole space included (resolution overrides too)."""
        return {
            "space": self.space.to_dict(),
            "num_classes": self.num_classes,
            "mode": self.mode,
            "zero_init_last_bn": self.zero_init_last_bn,
            "stage_shortcuts": self.stage_shortcuts,
            "synchronized_bn": self.synchronized_bn,
            "dropout_rate": self.dropout_rate,
            "bn_epsilon": self.bn_epsilon,
            "native_kernels": self.native_kernels,
        }

    @classmethod
    def from_config(cls, config: dict) -> Supernet:
        """Rebuilds a supernet from `get_config` output.

        Args:
            config: The dict; its "space" is the space as data (`SearchSpace.to_dict`).

        Returns:
            A new Supernet with fresh weights.
        """
        config = dict(config)
        space = SearchSpace.from_dict(config.pop("space"))
        num_classes = config.pop("num_classes")
        return cls(space, num_classes, **config)
