"""The concrete plan of a child network, down to every operation.

`net_plan(space, arch)` turns an `ArchConfig` into plain numbers: the channels,
kernel, stride and shortcut of every active block (`BlockPlan`). `plan_ops`
(and `block_ops`, `stem_ops`, `head_ops`) spell that out as the list of the
child's operations (`Op`): name, kind, inputs, input and output shape, kernel,
stride, which architecture choice sets its channels. That list is the one
description of what a block is:

- the supernet creates its dynamic layers from the ops of the largest child
  and runs a block by walking its ops (`tf_bignas.model.supernet`);
- the slicer builds a stock Keras layer per op of a child and copies the
  supernet's slice of the weights of the op of the same name
  (`tf_bignas.model.slicing`);
- the BN-channel map is the BN ops' output channels;
- the cost model sums each op's MACs and parameters (`tf_bignas.model.cost`);
- a latency table keys its entries on a block's description (`BlockPlan.key`).

Op kinds: "conv" (dense 2-D convolution), "dwconv" (depthwise), "bn", "act"
(`function` names the activation), "se_pool" (spatial mean, kept 1x1),
"sigmoid", "mul", "pool" (2x2 average, stride 2), "add", "global_pool"
(spatial mean to a vector), "dropout", "dense".
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

    def key(self) -> dict[str, int | str | bool]:
        """The block's description without its position: what its cost depends on."""
        out = dataclasses.asdict(self)
        del out["stage"], out["index"]
        return out


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


# Which architecture choice sets an op's output channels (`Op.width`).
WIDTHS = ("stem", "mid", "se", "out", "head", "classes", "same")
OP_KINDS = (
    "conv", "dwconv", "bn", "act", "se_pool", "sigmoid", "mul", "pool", "add",
    "global_pool", "dropout", "dense",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Op:
    """One operation of a child, with concrete shapes.

    Attributes:
        name: Layer name, unique in the network (the supernet's, the sliced
            model's and the latency table's name for it).
        kind: One of `OP_KINDS`.
        inputs: Names of the ops whose outputs it takes ("image" for the input).
        in_shape: (height, width, channels) of its (first) input.
        out_shape: (height, width, channels) of its output ((1, 1, C) for vectors).
        group: 0 for the stem, 1..S for the stages, S + 1 for the head.
        kernel: Kernel size (conv, dwconv).
        stride: Stride (conv, dwconv, pool).
        bias: Whether it has a bias (conv, dense).
        function: Activation name (act).
        width: Which choice sets its output channels (one of `WIDTHS`; "same"
            when it keeps its input's channels).
        branch_end: The last BN of a residual branch (zero-initialised gamma
            with the paper's zero-init option).
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    group: int
    kernel: int = 1
    stride: int = 1
    bias: bool = False
    function: str = ""
    width: str = "same"
    branch_end: bool = False

    @property
    def in_ch(self) -> int:
        return self.in_shape[-1]

    @property
    def out_ch(self) -> int:
        return self.out_shape[-1]

    def macs(self) -> int:
        """Multiply-adds (conv, dwconv and dense; 0 for the rest)."""
        h, w, c = self.out_shape
        if self.kind == "conv":
            return h * w * self.kernel**2 * self.in_ch * c
        if self.kind == "dwconv":
            return h * w * self.kernel**2 * c
        if self.kind == "dense":
            return self.in_ch * c
        return 0

    def params(self) -> int:
        """Parameters, as Keras counts them (BN's moving statistics included)."""
        c = self.out_ch
        if self.kind == "conv":
            return self.kernel**2 * self.in_ch * c + (c if self.bias else 0)
        if self.kind == "dwconv":
            return self.kernel**2 * c
        if self.kind == "bn":
            return 4 * c
        if self.kind == "dense":
            return self.in_ch * c + (c if self.bias else 0)
        return 0


class _OpList:
    """Appends ops, each taking the previous op's output unless told otherwise."""

    def __init__(self, last: str, shape: tuple[int, int, int], group: int) -> None:
        self.ops: list[Op] = []
        self.last, self.shape, self.group = last, shape, group
        self.shapes = {last: shape}

    def add(
        self,
        name: str,
        kind: str,
        out_ch: int | None = None,
        res: int | None = None,
        inputs: tuple[str, ...] | None = None,
        **fields,
    ) -> str:
        inputs = inputs or (self.last,)
        in_shape = self.shapes[inputs[0]]
        h = in_shape[0] if res is None else res
        out_shape = (h, h, in_shape[2] if out_ch is None else out_ch)
        self.ops.append(Op(name, kind, inputs, in_shape, out_shape, self.group, **fields))
        self.shapes[name] = out_shape
        self.last = name
        return name


def stem_ops(plan: NetPlan) -> tuple[Op, ...]:
    """The stem: conv, BN, activation."""
    r = plan.resolution
    ops = _OpList("image", (r, r, 3), 0)
    ops.add("stem_conv", "conv", plan.stem_ch, plan.stem_res, kernel=plan.stem_kernel,
            stride=plan.stem_stride, width="stem")  # fmt: skip
    ops.add("stem_bn", "bn", width="stem")
    ops.add("stem_act", "act", function=plan.activation)
    return tuple(ops.ops)


def block_ops(b: BlockPlan, input_name: str) -> tuple[Op, ...]:
    """One MBConv block: [expand 1x1] -> depthwise -> [SE] -> project 1x1 [+ shortcut].

    Args:
        b: The block.
        input_name: Name of the op whose output the block takes.

    Returns:
        The block's ops in execution order.
    """
    n, act = b.name, b.activation
    ops = _OpList(input_name, (b.in_res, b.in_res, b.in_ch), b.stage + 1)
    if b.expand:
        ops.add(f"{n}_expand_conv", "conv", b.mid_ch, width="mid")
        ops.add(f"{n}_expand_bn", "bn", width="mid")
        ops.add(f"{n}_expand_act", "act", function=act)
    ops.add(f"{n}_dw_conv", "dwconv", b.mid_ch, b.out_res, kernel=b.kernel, stride=b.stride,
            width="mid")  # fmt: skip
    ops.add(f"{n}_dw_bn", "bn", width="mid")
    features = ops.add(f"{n}_dw_act", "act", function=act)
    if b.se_ch:
        ops.add(f"{n}_se_pool", "se_pool", res=1)
        ops.add(f"{n}_se_reduce", "conv", b.se_ch, bias=True, width="se")
        ops.add(f"{n}_se_act", "act", function=act)
        ops.add(f"{n}_se_expand", "conv", b.mid_ch, bias=True, width="mid")
        gate = ops.add(f"{n}_se_gate", "sigmoid")
        ops.add(f"{n}_se_excite", "mul", inputs=(features, gate))
    ops.add(f"{n}_project_conv", "conv", b.out_ch, width="out")
    branch = ops.add(f"{n}_project_bn", "bn", width="out", branch_end=b.residual)
    if b.residual:
        shortcut = input_name
        if b.shortcut_pool:
            shortcut = ops.add(f"{n}_shortcut_pool", "pool", res=b.out_res, inputs=(shortcut,),
                               stride=2)  # fmt: skip
        if b.shortcut_conv:
            ops.add(f"{n}_shortcut_conv", "conv", b.out_ch, res=b.out_res, inputs=(shortcut,),
                    width="out")  # fmt: skip
            shortcut = ops.add(f"{n}_shortcut_bn", "bn", width="out")
        ops.add(f"{n}_add", "add", inputs=(shortcut, branch))
    return tuple(ops.ops)


def head_ops(plan: NetPlan, input_name: str) -> tuple[Op, ...]:
    """The head: 1x1 conv, BN, activation, global pooling, dropout, classifier."""
    last = plan.blocks[-1].out_ch if plan.blocks else plan.stem_ch
    group = max((b.stage for b in plan.blocks), default=-1) + 2
    ops = _OpList(input_name, (plan.head_res, plan.head_res, last), group)
    ops.add("head_conv", "conv", plan.head_ch, width="head")
    ops.add("head_bn", "bn", width="head")
    ops.add("head_act", "act", function=plan.activation)
    ops.add("avg_pool", "global_pool", res=1)
    ops.add("dropout", "dropout")
    ops.add("classifier", "dense", plan.num_classes, bias=True, width="classes")
    return tuple(ops.ops)


def plan_ops(plan: NetPlan) -> tuple[Op, ...]:
    """Every operation of a child, in execution order (see the module docstring)."""
    ops = list(stem_ops(plan))
    for b in plan.blocks:
        ops += block_ops(b, ops[-1].name)
    ops += head_ops(plan, ops[-1].name)
    return tuple(ops)
