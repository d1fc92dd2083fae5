"""The coarse stage's grid of network-wise skeletons (paper section 4.4).

A skeleton sets every stage with one global setting per axis: the input
resolution, a depth setting, a width setting, a kernel setting and an expand
setting. Each setting is a fraction of a stage's range of choices (0 = its
smallest, 1 = its largest, nearest choice in between), so one setting means
"the same relative depth / width in every stage", as the paper's global depth
and width multipliers do. The kernel setting is the fraction of the stages that have a kernel choice,
the last ones, that use their largest kernel; the others use their smallest
(0 = all small, 1 = all large).

Example:
    >>> from tf_bignas.space import bignas_mobilenetv2
    >>> space = bignas_mobilenetv2()
    >>> len(coarse_grid(space, (192, 224, 256, 288, 320), (0, 1/3, 2/3, 1), (0, 1),
    ...                 (0, 1/3, 2/3, 1), (1,)))
    160
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TypeVar

from tf_bignas.space import ArchConfig, SearchSpace

T = TypeVar("T")


def pick(choices: Sequence[T], fraction: float) -> T:
    """The choice at `fraction` of the way from the first to the last (nearest, halves up)."""
    return choices[int(math.floor(fraction * (len(choices) - 1) + 0.5))]


def skeleton(
    space: SearchSpace,
    resolution: int,
    depth: float,
    width: float,
    kernel: float,
    expand: float = 1.0,
) -> ArchConfig:
    """One network-wise skeleton.

    Args:
        space: The search space.
        resolution: Input resolution.
        depth: Depth setting in [0, 1] (per stage, the choice at that fraction).
        width: Width setting in [0, 1] (stem, every stage and head).
        kernel: Fraction of the stages with a kernel choice (the last ones) that
            use their largest kernel.
        expand: Expand-ratio setting in [0, 1] (every layer of a stage alike).

    Returns:
        The validated ArchConfig.
    """
    # The last round(kernel x n) of the n stages that have a kernel choice use their largest.
    choosing = [i for i, s in enumerate(space.stages) if len(s.kernels) > 1]
    n_large = int(math.floor(kernel * len(choosing) + 0.5))
    large = set(choosing[len(choosing) - n_large :])
    depths = tuple(pick(s.depths, depth) for s in space.stages)
    arch = ArchConfig(
        resolution=resolution,
        widths=tuple(pick(c, width) for c in space.width_choices()),
        depths=depths,
        kernels=tuple(
            ((s.max_kernel if i in large else min(s.kernels)),) * d
            for i, (s, d) in enumerate(zip(space.stages, depths))
        ),
        expand_ratios=tuple(
            (pick(s.expand_ratios, expand),) * d for s, d in zip(space.stages, depths)
        ),
    )
    space.validate(arch)
    return arch


def coarse_grid(
    space: SearchSpace,
    resolutions: Sequence[int],
    depth_settings: Sequence[float],
    width_settings: Sequence[float],
    kernel_settings: Sequence[float],
    expand_settings: Sequence[float] = (1.0,),
) -> list[ArchConfig]:
    """Every skeleton of the grid, in a fixed order, duplicates dropped.

    Settings that map to the same choices in a space with few choices (e.g.
    four depth settings over depths (1, 2)) give one skeleton, so small spaces
    get small grids.

    Args:
        space: The search space.
        resolutions: The grid's resolutions.
        depth_settings: Depth settings (fractions).
        width_settings: Width settings (fractions).
        kernel_settings: Kernel settings (fractions).
        expand_settings: Expand-ratio settings (fractions).

    Returns:
        The skeletons, ordered by resolution, then depth, width, kernel, expand.
    """
    seen: dict[str, ArchConfig] = {}
    for r, d, w, k, e in itertools.product(
        sorted(resolutions), depth_settings, width_settings, kernel_settings, expand_settings
    ):
        arch = skeleton(space, r, d, w, k, e)
        seen.setdefault(arch.key, arch)
    return list(seen.values())
