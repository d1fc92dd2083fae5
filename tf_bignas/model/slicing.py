"""Slice a child out of the supernet as a standalone Keras model of stock layers.

`build_child_model(space, arch, num_classes)` builds a child straight from its
arch: one stock Keras layer (Conv2D, DepthwiseConv2D, BatchNormalization,
Activation, pooling, Multiply, Add, Dropout, Dense) per op of its plan
(`netplan.plan_ops`), named after the op, with fresh weights.
`extract_child(supernet, arch)` builds the same model and copies in the
child's slice of the supernet's weights: the lowest-index channels, the centre
of each depthwise kernel, the first layers of each stage, and the child's
calibrated BN statistics. The result has no slicing or masking op left: it
saves and loads as `.keras`, converts to TFLite exactly as the directly built
model does, and gives the same outputs as the supernet running that child with
`training=False`.
"""

from __future__ import annotations

import keras
import numpy as np

from tf_bignas.model.bn_stats import BNStats
from tf_bignas.model.layers import keras_activation
from tf_bignas.model.netplan import Op, net_plan, plan_ops
from tf_bignas.model.supernet import Supernet
from tf_bignas.space import ArchConfig, SearchSpace


class UncalibratedChildError(ValueError):
    """A child has no calibrated BN statistics in the supernet's store."""


def _centre(kernel: np.ndarray, k: int) -> np.ndarray:
    start = (kernel.shape[0] - k) // 2
    return kernel[start : start + k, start : start + k]


def _stock_layer(op: Op, bn_epsilon: float, dropout_rate: float) -> keras.layers.Layer | None:
    """The stock Keras layer of an op (None: the op passes its input through)."""
    kind, name = op.kind, op.name
    if kind == "conv":
        return keras.layers.Conv2D(
            op.out_ch, op.kernel, strides=op.stride, padding="same", use_bias=op.bias, name=name
        )
    if kind == "dwconv":
        return keras.layers.DepthwiseConv2D(
            op.kernel, strides=op.stride, padding="same", use_bias=False, name=name
        )
    if kind == "bn":
        return keras.layers.BatchNormalization(epsilon=bn_epsilon, name=name)
    if kind == "act":
        return keras.layers.Activation(keras_activation(op.function), name=name)
    if kind == "sigmoid":
        return keras.layers.Activation("sigmoid", name=name)
    if kind == "se_pool":
        return keras.layers.GlobalAveragePooling2D(keepdims=True, name=name)
    if kind == "global_pool":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if kind == "pool":
        return keras.layers.AveragePooling2D(2, strides=2, padding="same", name=name)
    if kind == "mul":
        return keras.layers.Multiply(name=name)
    if kind == "add":
        return keras.layers.Add(name=name)
    if kind == "dropout":
        return keras.layers.Dropout(dropout_rate, name=name) if dropout_rate > 0 else None
    if kind == "dense":
        return keras.layers.Dense(op.out_ch, name=name)
    raise ValueError(f"op {name!r} has unknown kind {kind!r}")


def _build(
    ops: tuple[Op, ...],
    resolution: int | None,
    bn_epsilon: float,
    dropout_rate: float,
    name: str,
    channels: int = 3,
) -> keras.Model:
    inputs = keras.Input((resolution, resolution, channels), name="image")
    values = {"image": inputs}
    x = inputs
    for op in ops:
        layer = _stock_layer(op, bn_epsilon, dropout_rate)
        args = [values[i] for i in op.inputs]
        if layer is None:
            x = args[0]
        else:
            x = layer(args if len(args) > 1 else args[0])
        values[op.name] = x
    return keras.Model(inputs, x, name=name)


def build_ops_model(
    ops: tuple[Op, ...],
    *,
    bn_epsilon: float = 1e-3,
    dropout_rate: float = 0.0,
    name: str = "ops",
) -> keras.Model:
    """Builds a run of ops (the stem, one block, the head) as a stock Keras model.

    The same layers as `build_child_model` builds for those ops, with fresh
    weights; the input, named "image", has the first op's input shape, and the
    output is the last op's. The latency tables measure each distinct block of
    a space this way (`tf_bignas.latency`).

    Args:
        ops: The ops, the first one taking the input "image" (e.g.
            `netplan.block_ops(block, "image")`).
        bn_epsilon: BN epsilon.
        dropout_rate: Dropout rate of a dropout op (0: none).
        name: Model name.

    Returns:
        The model.
    """
    res, _, channels = ops[0].in_shape
    return _build(ops, res, bn_epsilon, dropout_rate, name, channels=channels)


def build_child_model(
    space: SearchSpace,
    arch: ArchConfig,
    num_classes: int,
    *,
    stage_shortcuts: bool = True,
    dropout_rate: float = 0.0,
    bn_epsilon: float = 1e-3,
    fixed_resolution: bool = True,
    name: str = "child",
) -> keras.Model:
    """Builds a child straight from its arch, with fresh weights (no supernet).

    Args:
        space: The search space.
        arch: The child.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether stage transitions have shortcuts.
        dropout_rate: Dropout before the classifier (0: no Dropout layer).
        bn_epsilon: BN epsilon.
        fixed_resolution: Input shape (R, R, 3) (needed for MAC counting and
            fixed-shape TFLite); else (None, None, 3).
        name: Model name.

    Returns:
        The child model, producing logits.

    Raises:
        InvalidArchError: If the arch is not in the space.
    """
    space.validate(arch)
    ops = plan_ops(net_plan(space, arch, num_classes, stage_shortcuts))
    res = arch.resolution if fixed_resolution else None
    return _build(ops, res, bn_epsilon, dropout_rate, name)


def _sliced_weights(op: Op, src: keras.layers.Layer, bn_stats: BNStats) -> list[np.ndarray]:
    c = op.out_ch
    if op.kind == "conv":
        w = [src.kernel.numpy()[:, :, : op.in_ch, :c]]
        return w + [src.bias.numpy()[:c]] if op.bias else w
    if op.kind == "dwconv":
        return [_centre(src.kernel.numpy(), op.kernel)[:, :, :c, :]]
    if op.kind == "bn":
        mean, var = bn_stats[op.name]
        return [src.gamma.numpy()[:c], src.beta.numpy()[:c], mean, var]
    if op.kind == "dense":
        return [src.kernel.numpy()[: op.in_ch, :c], src.bias.numpy()[:c]]
    return []


def extract_child(
    supernet: Supernet,
    arch: ArchConfig,
    bn_stats: BNStats | None = None,
    fixed_resolution: bool = True,
    name: str | None = None,
    allow_uncalibrated: bool = False,
) -> keras.Model:
    """Builds a child as a standalone Keras model with its weights copied in.

    Args:
        supernet: The trained supernet.
        arch: The child.
        bn_stats: BN statistics to use; by default the supernet's stored,
            calibrated statistics for this child.
        fixed_resolution: Build with input shape (R, R, 3) (needed for MAC
            counting and fixed-shape TFLite); else (None, None, 3).
        name: Model name (default "child").
        allow_uncalibrated: Use the BN moving statistics as they are when the
            child has no calibrated statistics (another child's, or 0/1).

    Returns:
        The child model, producing logits.

    Raises:
        InvalidArchError: If the arch is not in the supernet's space.
        UncalibratedChildError: If the child has no calibrated statistics, no
            `bn_stats` are given and `allow_uncalibrated` is False.
    """
    space = supernet.space
    space.validate(arch)
    if bn_stats is None:
        if arch in supernet.bn_stats:
            bn_stats = supernet.bn_stats.get(arch)
        elif allow_uncalibrated:
            bn_stats = supernet.current_bn_stats(arch)
        else:
            raise UncalibratedChildError(
                f"child {arch.to_paper_notation()!r} has no calibrated BN statistics "
                f"({len(supernet.bn_stats)} children are calibrated): calibrate it first "
                "(tf_bignas.run.evaluator.ChildEvaluator.calibrate, or the search, which "
                "calibrates every child it evaluates), pass bn_stats, or "
                "allow_uncalibrated=True to use the BN statistics as they are"
            )
    ops = plan_ops(net_plan(space, arch, supernet.num_classes, supernet.stage_shortcuts))
    res = arch.resolution if fixed_resolution else None
    model = _build(ops, res, supernet.bn_epsilon, supernet.dropout_rate, name or "child")
    blocks = {blk.plan.name: blk for blk in supernet.blocks}
    for op in ops:
        if op.kind not in ("conv", "dwconv", "bn", "dense"):
            continue
        block = blocks.get(op.name.split("_", 1)[0])
        src = block.op_layer(op.name) if block is not None else supernet.op_layer(op.name)
        model.get_layer(op.name).set_weights(_sliced_weights(op, src, bn_stats))
    return model
