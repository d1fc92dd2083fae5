"""The parts a latency table measures: stem, each distinct block, head + classifier.

A child is a chain of parts: its stem, its blocks, its head (1x1 conv, pooling
and the classifier). Each part is keyed on its description without its
position in the network: a block on its `BlockPlan` fields minus stage and
index (`BlockPlan.key()`: input size, channels in, mid and out, kernel,
stride, expansion, SE, activation, residual and shortcut kind), the stem and
the head on their sizes. Two blocks with the same key cost the same, wherever
they sit, so a table holds each once and a child's latency is the sum over
its parts.

`child_parts(space, arch)` lists a child's parts; `space_parts(space)` every
distinct part of every child (through a few covering children per
resolution, without enumerating the space); `part_model(part)` builds a part
as its own stock Keras model with the slicer's builder.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

import keras

from tf_bignas.model.netplan import NetPlan, Op, block_ops, head_ops, net_plan, stem_ops
from tf_bignas.model.slicing import build_ops_model
from tf_bignas.space import ArchConfig, SearchSpace

PART_KINDS = ("stem", "block", "head")


@dataclasses.dataclass(frozen=True)
class Part:
    """One measured unit of a child.

    Attributes:
        kind: "stem", "block" or "head".
        key: The part's description (JSON-able; no position in the network).
        label: Where it sits in the child that produced it ("stem", "s2l1", "head"),
            for messages only.
        ops: Its operations, the first one taking the input "image".
    """

    kind: str
    key: dict[str, Any]
    label: str
    ops: tuple[Op, ...]

    @property
    def key_text(self) -> str:
        """The canonical text of the key (a table's dictionary key)."""
        return key_text(self.key)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.ops[0].in_shape


def key_text(key: dict[str, Any]) -> str:
    """Canonical JSON of a part key: sorted fields, no spaces."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def plan_parts(plan: NetPlan) -> tuple[Part, ...]:
    """The parts of a child's plan, in execution order."""
    stem = stem_ops(plan)
    parts = [
        Part(
            "stem",
            {
                "part": "stem",
                "resolution": plan.resolution,
                "out_ch": plan.stem_ch,
                "kernel": plan.stem_kernel,
                "stride": plan.stem_stride,
                "activation": plan.activation,
            },
            "stem",
            stem,
        )
    ]
    for b in plan.blocks:
        parts.append(Part("block", {"part": "block", **b.key()}, b.name, block_ops(b, "image")))
    head = head_ops(plan, "image")
    parts.append(
        Part(
            "head",
            {
                "part": "head",
                "in_res": plan.head_res,
                "in_ch": head[0].in_ch,
                "head_ch": plan.head_ch,
                "num_classes": plan.num_classes,
                "activation": plan.activation,
            },
            "head",
            head,
        )
    )
    return tuple(parts)


def child_parts(
    space: SearchSpace, arch: ArchConfig, num_classes: int, stage_shortcuts: bool = True
) -> tuple[Part, ...]:
    """The parts of a child, in execution order.

    Args:
        space: The search space.
        arch: The child.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether stage transitions have shortcuts.

    Returns:
        Stem, blocks, head.

    Raises:
        InvalidArchError: If the arch is not in the space.
    """
    space.validate(arch)
    return plan_parts(net_plan(space, arch, num_classes, stage_shortcuts))


def covering_archs(space: SearchSpace, resolutions: Sequence[int]) -> list[ArchConfig]:
    """Children whose parts together are every distinct part of the space.

    A block's description depends only on the resolution, its stage, whether
    it is the stage's first layer, its input and output widths, kernel and
    expand ratio. For each resolution and stage, one child per combination of
    (input width, output width, kernel, expand ratio) with that stage two
    layers deep (when allowed) and the rest at their smallest covers them; the
    stem and the head vary along.

    Args:
        space: The search space.
        resolutions: The resolutions to cover.

    Returns:
        The covering children.
    """
    out = []
    choices = space.width_choices()
    last = space.num_stages - 1
    for r in resolutions:
        base = space.smallest(r)
        for s, stage in enumerate(space.stages):
            deeper = [d for d in stage.depths if d >= 2]
            depth = min(deeper) if deeper else max(stage.depths)
            heads = choices[-1] if s == last else (base.widths[-1],)
            combos = itertools.product(
                choices[s], choices[s + 1], stage.kernels, stage.expand_ratios, heads
            )
            for w_in, w_out, k, e, head in combos:
                widths = list(base.widths)
                widths[s], widths[s + 1], widths[-1] = w_in, w_out, head
                out.append(
                    ArchConfig(
                        r,
                        tuple(widths),
                        base.depths[:s] + (depth,) + base.depths[s + 1 :],
                        base.kernels[:s] + ((k,) * depth,) + base.kernels[s + 1 :],
                        base.expand_ratios[:s] + ((e,) * depth,) + base.expand_ratios[s + 1 :],
                    )
                )
    return out


def unique_parts(archs_parts: Iterable[Iterable[Part]]) -> dict[str, Part]:
    """The distinct parts of several children, keyed on `key_text`, in first-seen order."""
    out: dict[str, Part] = {}
    for parts in archs_parts:
        for p in parts:
            out.setdefault(p.key_text, p)
    return out


def space_parts(
    space: SearchSpace,
    num_classes: int,
    stage_shortcuts: bool = True,
    resolutions: Sequence[int] | None = None,
) -> dict[str, Part]:
    """Every distinct part of every child of a space.

    Args:
        space: The search space.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether stage transitions have shortcuts.
        resolutions: The resolutions to cover (default: all of the space's).

    Returns:
        {key text: part}.
    """
    resolutions = tuple(resolutions or space.resolutions)
    for r in resolutions:
        space.validate_resolution(r)
    archs = covering_archs(space, resolutions)
    return unique_parts(child_parts(space, a, num_classes, stage_shortcuts) for a in archs)


def part_model(part: Part) -> keras.Model:
    """A part as its own stock Keras model (fresh weights, input "image").

    Built by the slicer's builder (`tf_bignas.model.slicing.build_ops_model`),
    so its layers are those of the exported child.
    """
    return build_ops_model(part.ops, name=f"{part.kind}_{part.label}")
