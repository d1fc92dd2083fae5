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
  which XLA cannot compile.
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

from collections.abc import Mapping

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
)
from tf_bignas.model.netplan import BlockPlan, NetPlan, net_plan
from tf_bignas.space import ArchConfig, InvalidArchError, SearchSpace

ArchTensors = Mapping[str, tf.Tensor]


class MBConvBlock(keras.layers.Layer):
    """A dynamic MBConv block: [expand 1x1] -> depthwise -> [SE] -> project 1x1.

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
        p = plan
        n = p.name

        def bn(ch: int, suffix: str, zero: bool = False) -> DynamicBatchNorm:
            return DynamicBatchNorm(
                ch, bn_epsilon, zero_gamma=zero, synchronized=synchronized_bn, name=f"{n}_{suffix}"
            )

        if p.expand:
            self.expand_conv = DynamicConv2D(p.in_ch, p.mid_ch, name=f"{n}_expand_conv")
            self.expand_bn = bn(p.mid_ch, "expand_bn")
        self.dw_conv = DynamicDepthwiseConv2D(p.mid_ch, max_kernel, p.stride, name=f"{n}_dw_conv")
        self.dw_bn = bn(p.mid_ch, "dw_bn")
        if p.se_ch:
            self.se_reduce = DynamicConv2D(p.mid_ch, p.se_ch, use_bias=True, name=f"{n}_se_reduce")
            # Every conv, squeeze-excite ones included, starts as in EfficientNet
            # (`conv_kernel_initializer`, the layer's default).
            self.se_expand = DynamicConv2D(p.se_ch, p.mid_ch, use_bias=True, name=f"{n}_se_expand")
        self.project_conv = DynamicConv2D(p.mid_ch, p.out_ch, name=f"{n}_project_conv")
        self.project_bn = bn(p.out_ch, "project_bn", zero=zero_init_last_bn and p.residual)
        if p.shortcut_conv:
            self.shortcut_conv = DynamicConv2D(p.in_ch, p.out_ch, name=f"{n}_shortcut_conv")
            self.shortcut_bn = bn(p.out_ch, "shortcut_bn")
        self.built = True

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

        Returns:
            The block output.
        """
        p = self.plan
        h = x
        if p.expand:
            h = self.expand_conv(h, mid_ch, mode=mode)
            h = activation(self.expand_bn(h, bn_mode=bn_mode, mode=mode, ch=mid_ch), p.activation)
        h = self.dw_conv(h, kernel, mode=mode)
        h = activation(self.dw_bn(h, bn_mode=bn_mode, mode=mode, ch=mid_ch), p.activation)
        if p.se_ch:
            s = tf.reduce_mean(h, axis=[1, 2], keepdims=True)
            s = activation(self.se_reduce(s, se_ch, mode=mode), p.activation)
            h = h * tf.sigmoid(self.se_expand(s, mid_ch, mode=mode))
        h = self.project_bn(
            self.project_conv(h, out_ch, mode=mode), bn_mode=bn_mode, mode=mode, ch=out_ch
        )
        if not p.residual:
            return h
        shortcut = x
        if p.shortcut_pool:
            shortcut = tf.nn.avg_pool2d(shortcut, 2, 2, "SAME")
        if p.shortcut_conv:
            shortcut = self.shortcut_conv(shortcut, out_ch, mode=mode)
            shortcut = self.shortcut_bn(shortcut, bn_mode=bn_mode, mode=mode, ch=out_ch)
        if active is not None:
            h = h * active
        return shortcut + h


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
        self.bn_stats = BNStatsStore()
        self.max_plan: NetPlan = net_plan(space, space.largest(), num_classes, stage_shortcuts)
        mp = self.max_plan

        def bn(ch: int, name: str) -> DynamicBatchNorm:
            return DynamicBatchNorm(ch, bn_epsilon, synchronized=synchronized_bn, name=name)

        self.stem_conv = DynamicConv2D(
            3, mp.stem_ch, mp.stem_kernel, mp.stem_stride, name="stem_conv"
        )
        self.stem_bn = bn(mp.stem_ch, "stem_bn")
        self.blocks = [
            MBConvBlock(
                b, space.stages[b.stage].max_kernel, zero_init_last_bn, synchronized_bn, bn_epsilon
            )
            for b in mp.blocks
        ]
        last = mp.blocks[-1].out_ch
        self.head_conv = DynamicConv2D(last, mp.head_ch, name="head_conv")
        self.head_bn = bn(mp.head_ch, "head_bn")
        self.classifier = DynamicDense(mp.head_ch, num_classes, name="classifier")
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

        Returns:
            [B, num_classes] logits.

        Raises:
            InvalidArchError: If the arch is invalid or mismatches the images.
            ValueError: For an unknown bn_mode.
        """
        if arch is None:
            arch = self.space.largest(resolution=images.shape[1])
        a = self._arch_tensors(arch, images)
        bn_mode = bn_mode or ("batch" if training else "stored")
        if bn_mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {bn_mode!r}; allowed: {list(BN_MODES)}")
        mode = self.mode
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
        x = self.stem_conv(images, widths[0], mode=mode)
        x = activation(
            self.stem_bn(x, bn_mode=bn_mode, mode=mode, ch=widths[0]), self.max_plan.activation
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
            )
            if p.index == 0:
                x = blk(x, **kwargs)
            elif mode == "slice" and not cross_replica:
                x = tf.cond(
                    p.index < depths[p.stage],
                    lambda blk=blk, x=x, kw=kwargs: blk(x, **kw),
                    lambda x=x: x,
                )
            else:
                active = tf.cast(p.index < depths[p.stage], x.dtype)
                x = blk(x, active=active, **kwargs)
        head = widths[-1]
        x = self.head_conv(x, head, mode=mode)
        x = activation(
            self.head_bn(x, bn_mode=bn_mode, mode=mode, ch=head), self.max_plan.activation
        )
        x = tf.reduce_mean(x, axis=[1, 2])
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
        return self.classifier(x)

    # ---- per-child BN statistics ----------------------------------------------
    def bn_layers(self) -> dict[str, DynamicBatchNorm]:
        """All BN layers by name."""
        out = {"stem_bn": self.stem_bn, "head_bn": self.head_bn}
        for blk in self.blocks:
            for attr in ("expand_bn", "dw_bn", "project_bn", "shortcut_bn"):
                layer = getattr(blk, attr, None)
                if layer is not None:
                    out[layer.name] = layer
        return out

    def bn_channels(self, arch: ArchConfig) -> dict[str, int]:
        """Active channels of every BN layer used by a child (inactive layers omitted)."""
        plan = net_plan(self.space, arch, self.num_classes, self.stage_shortcuts)
        out = {"stem_bn": plan.stem_ch, "head_bn": plan.head_ch}
        for b in plan.blocks:
            if b.expand:
                out[f"{b.name}_expand_bn"] = b.mid_ch
            out[f"{b.name}_dw_bn"] = b.mid_ch
            out[f"{b.name}_project_bn"] = b.out_ch
            if b.shortcut_conv:
                out[f"{b.name}_shortcut_bn"] = b.out_ch
        return out

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

    def reset_calibration(self) -> None:
        """Zeroes every BN layer's calibration accumulators."""
        for layer in self.bn_layers().values():
            layer.reset_calibration()

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
        for name, (mean, var) in stats.items():
            layer = layers[name]
            pad = layer.max_ch - len(mean)
            layer.moving_mean.assign(np.pad(np.asarray(mean, np.float32), (0, pad)))
            layer.moving_variance.assign(
                np.pad(np.asarray(var, np.float32), (0, pad), constant_values=1.0)
            )

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
