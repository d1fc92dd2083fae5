"""The concrete layer-by-layer plan of a child network.

`net_plan(space, arch)` turns an `ArchConfig` into plain numbers: the channels,
kernel, stride and shortcut of every active block. The supernet is built from
the plan of the largest child (every dimension at its maximum), the slicer
builds a static Keras model from a child's plan, and the cost model counts MACs
and parameters from it without building anything, so the three agree by
construction.
"""

from __future__ import annotations

import dataclasses
import math

from tf_bignas.space import ArchConfig, SearchSpace


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channels to a multiple of `divisor`, never below 90% of `value`.

    Args:
        value: The unrounded channel count.
        divisor: The multiple.

    Returns:
        The rounded channel count.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """One MBConv block with concrete dimensions.

    Attributes:
        stage: Stage index (0-based).
        index: Layer index within the stage (0-based).
        in_ch: Input channels.
        mid_ch: Expanded (depthwise) channels.
        out_ch: Output channels.
        se_ch: Squeeze-excite bottleneck channels (0 when the stage has no SE).
        kernel: Depthwise kernel size.
        stride: Depthwise stride.
        expand: Whether the block has a 1x1 expansion conv (False for MBConv1).
        activation: Activation name.
        residual: Whether the block adds a shortcut to its output.
        shortcut_pool: Whether the shortcut has 2x2 average pooling (stride 2).
        shortcut_conv: Whether the shortcut has a 1x1 conv + BN (channels differ).
        in_res: Spatial size of the block input.
        out_res: Spatial size of the block output.
    """

    stage: int
    index: int
    in_ch: int
    mid_ch: int
    out_ch: int
    se_ch: int
    kernel: int
    stride: int
    expand: bool
    activation: str
    residual: bool
    shortcut_pool: bool
    shortcut_conv: bool
    in_res: int
    out_res: int

    @property
    def name(self) -> str:
        return f"s{self.stage + 1}l{self.index + 1}"


@dataclasses.dataclass(frozen=True)
class NetPlan:
    """A whole child network with concrete dimensions."""

    resolution: int
    stem_ch: int
    stem_kernel: int
    stem_stride: int
    stem_res: int
    activation: str
    blocks: tuple[BlockPlan, ...]
    head_ch: int
    head_res: int
    num_classes: int


def _out_res(res: int, stride: int) -> int:
    return math.ceil(res / stride)


def shortcut_structure(
    space: SearchSpace, stage: int, stage_shortcuts: bool
) -> tuple[bool, bool, bool]:
    """Structural shortcut of the first block of a stage (fixed for the whole supernet).

    The first block of a stage changes resolution (stride 2) and/or channels.
    With `stage_shortcuts` (the paper's section 3.1) it gets a residual through
    2x2 average pooling and/or a 1x1 conv; without, it has a residual only when
    nothing changes (stride 1 and the same width choices).

    Args:
        space: The search space.
        stage: Stage index.
        stage_shortcuts: Whether transition shortcuts are enabled.

    Returns:
        (residual, pool, conv) flags.
    """
    in_choices = space.width_choices()[stage]
    out_choices = space.stages[stage].widths
    pool = space.stages[stage].stride == 2
    # Widths are independent stage-wise choices, so a child's channels can
    # differ at the transition unless both sides are the same single width.
    conv = not (len(in_choices) == 1 and in_choices == out_choices)
    if not pool and not conv:
        return True, False, False
    if stage_shortcuts:
        return True, pool, conv
    return False, False, False


def net_plan(
    space: SearchSpace,
    arch: ArchConfig,
    num_classes: int = 1000,
    stage_shortcuts: bool = True,
) -> NetPlan:
    """Computes the concrete plan of a child.

    Args:
        space: The search space.
        arch: The child (assumed valid; call `space.validate` first).
        num_classes: Classifier outputs.
        stage_shortcuts: Whether stage transitions have shortcuts.

    Returns:
        The NetPlan of the child's active layers.
    """
    res = _out_res(arch.resolution, space.stem_stride)
    stem_res = res
    in_ch = arch.widths[0]
    blocks = []
    for s, stage in enumerate(space.stages):
        out_ch = arch.widths[s + 1]
        expand = max(stage.expand_ratios) != 1.0
        for j in range(arch.depths[s]):
            stride = stage.stride if j == 0 else 1
            e = arch.expand_ratios[s][j]
            mid = make_divisible(in_ch * e) if expand else in_ch
            se = max(1, int(in_ch * space.se_ratio)) if stage.se else 0
            if j == 0:
                residual, pool, conv = shortcut_structure(space, s, stage_shortcuts)
            else:
                residual, pool, conv = True, False, False
            out_res = _out_res(res, stride)
            blocks.append(
                BlockPlan(
                    stage=s,
                    index=j,
                    in_ch=in_ch,
                    mid_ch=mid,
                    out_ch=out_ch,
                    se_ch=se,
                    kernel=arch.kernels[s][j],
                    stride=stride,
                    expand=expand,
                    activation=stage.activation,
                    residual=residual,
                    shortcut_pool=pool,
                    shortcut_conv=conv,
                    in_res=res,
                    out_res=out_res,
                )
            )
            res = out_res
            in_ch = out_ch
    return NetPlan(
        resolution=arch.resolution,
        stem_ch=arch.widths[0],
        stem_kernel=space.stem_kernel,
        stem_stride=space.stem_stride,
        stem_res=stem_res,
        activation=space.stem_activation,
        blocks=tuple(blocks),
        head_ch=arch.widths[-1],
        head_res=res,
        num_classes=num_classes,
    )
