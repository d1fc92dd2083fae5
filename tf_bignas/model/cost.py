"""Cost model: MACs and parameters, from an `ArchConfig` alone or from any Keras model.

MACs are multiply-adds of convolution and dense layers, squeeze-excite
included; this is what the BigNAS paper (like most NAS papers) calls FLOPs.
Batch norm, activations, pooling, additions and biases are not counted.

`macs(space, arch)` and `params(space, arch, num_classes)` work from the arch
value without building a model (fast enough to call inside a search loop);
`count_model_macs(model)` walks the layers of any built Keras model. The two
agree exactly on every child sliced by `tf_bignas.model.slicing.extract_child`, and
`params` equals that child's `model.count_params()`.
"""

from __future__ import annotations

import dataclasses

import keras

from tf_bignas.model.netplan import NetPlan, net_plan, plan_ops
from tf_bignas.space import ArchConfig, SearchSpace


@dataclasses.dataclass(frozen=True)
class Cost:
    """MACs and parameters of one child, with a per-stage breakdown.

    Attributes:
        macs: Total multiply-adds.
        params: Total parameters (BN moving statistics included, as Keras counts).
        stage_macs: MACs of stem, each stage, and head+classifier.
        stage_params: Parameters of stem, each stage, and head+classifier.
    """

    macs: int
    params: int
    stage_macs: tuple[int, ...]
    stage_params: tuple[int, ...]


def _plan_cost(plan: NetPlan) -> Cost:
    ops = plan_ops(plan)
    groups = ops[-1].group + 1
    s_macs, s_params = [0] * groups, [0] * groups
    for op in ops:
        s_macs[op.group] += op.macs()
        s_params[op.group] += op.params()
    return Cost(sum(s_macs), sum(s_params), tuple(s_macs), tuple(s_params))


def cost(
    space: SearchSpace,
    arch: ArchConfig,
    num_classes: int = 1000,
    stage_shortcuts: bool = True,
) -> Cost:
    """MACs and parameters of a child, with a per-stage breakdown.

    Args:
        space: The search space.
        arch: The child.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether stage transitions have (costed) shortcut convs.

    Returns:
        The Cost.

    Raises:
        InvalidArchError: If the arch is not in the space.
    """
    space.validate(arch)
    return _plan_cost(net_plan(space, arch, num_classes, stage_shortcuts))


def macs(
    space: SearchSpace,
    arch: ArchConfig,
    num_classes: int = 1000,
    stage_shortcuts: bool = True,
) -> int:
    """Multiply-adds of a child (what the paper calls FLOPs). See `cost`."""
    return cost(space, arch, num_classes, stage_shortcuts).macs


def params(
    space: SearchSpace,
    arch: ArchConfig,
    num_classes: int = 1000,
    stage_shortcuts: bool = True,
) -> int:
    """Parameters of a child, equal to its sliced model's `count_params()`. See `cost`."""
    return cost(space, arch, num_classes, stage_shortcuts).params


def _spatial(shape: tuple[int | None, ...], layer: keras.layers.Layer) -> int:
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ValueError(
            f"layer {layer.name!r} has an undefined spatial output shape {shape}; "
            "build the model with a fixed input resolution to count its MACs"
        )
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _layer_macs(layer: keras.layers.Layer) -> int:
    if isinstance(layer, keras.Model):
        return count_model_macs(layer)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        cin = int(layer.input.shape[-1])
        return _spatial(tuple(layer.output.shape), layer) * kh * kw * cin * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = int(layer.input.shape[-1])
        cout = int(layer.output.shape[-1])
        return _spatial(tuple(layer.output.shape), layer) * kh * kw * cin * cout // layer.groups
    if isinstance(layer, keras.layers.Dense):
        shape = tuple(layer.output.shape)
        positions = 1
        for d in shape[1:-1]:
            positions *= int(d)
        return positions * int(layer.input.shape[-1]) * layer.units
    return 0


def count_model_macs(model: keras.Model) -> int:
    """Counts the MACs of conv and dense layers of a built Keras model.

    Walks `model.layers` (recursing into nested models) and reads each layer's
    input and output shapes, so the model needs a fixed input resolution.

    Args:
        model: A built functional or sequential Keras model.

    Returns:
        The total multiply-adds.

    Raises:
        ValueError: If a counted layer has an undefined spatial shape.
    """
    return sum(_layer_macs(layer) for layer in model.layers)
