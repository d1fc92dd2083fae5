"""Changing children: the fine stage's small steps, and evolution's mutation and crossover.

Every operation works on a child's "genome": its resolution, widths, depths,
and per stage a kernel and an expand ratio for each of the stage's largest
number of layers (layers beyond the active depth keep the value of the last
active one, as Once-for-All keeps inactive choices). The genome always maps
back to a valid child of the space, so nothing here can produce an invalid
arch; `draw_new` then rejects children that do not fit a budget or were seen.

- `perturb`: change 1..`size` choices by one step each (the neighbouring
  resolution, depth, width, kernel or expand ratio): "slightly", as the
  paper's fine stage does.
- `mutate`: resample each choice with a probability (evolution).
- `crossover`: each choice from one of two parents (evolution).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from tf_bignas.space import ArchConfig, SearchSpace


@dataclasses.dataclass
class _Genome:
    resolution: int
    widths: list[int]
    depths: list[int]
    kernels: list[list[int]]  # per stage, max_depth entries
    expands: list[list[float]]


def _pad(values: Sequence[Any], n: int) -> list[Any]:
    return list(values) + [values[-1]] * (n - len(values))


def _genome(space: SearchSpace, arch: ArchConfig) -> _Genome:
    return _Genome(
        arch.resolution,
        list(arch.widths),
        list(arch.depths),
        [_pad(k, s.max_depth) for k, s in zip(arch.kernels, space.stages)],
        [_pad(e, s.max_depth) for e, s in zip(arch.expand_ratios, space.stages)],
    )


def _arch(g: _Genome) -> ArchConfig:
    return ArchConfig(
        g.resolution,
        tuple(g.widths),
        tuple(g.depths),
        tuple(tuple(k[:d]) for k, d in zip(g.kernels, g.depths)),
        tuple(tuple(e[:d]) for e, d in zip(g.expands, g.depths)),
    )


def _genes(
    space: SearchSpace, g: _Genome, resolutions: Sequence[int], active_only: bool
) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Every choice with more than one option: (address, options)."""
    out: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
    if len(resolutions) > 1:
        out.append((("resolution",), tuple(resolutions)))
    for i, choices in enumerate(space.width_choices()):
        if len(choices) > 1:
            out.append((("widths", i), choices))
    for i, s in enumerate(space.stages):
        if len(s.depths) > 1:
            out.append((("depths", i), s.depths))
        layers = g.depths[i] if active_only else s.max_depth
        for j in range(layers):
            if len(s.kernels) > 1:
                out.append((("kernels", i, j), s.kernels))
            if len(s.expand_ratios) > 1:
                out.append((("expands", i, j), s.expand_ratios))
    return out


def _get(g: _Genome, address: tuple[Any, ...]) -> Any:
    if address[0] == "resolution":
        return g.resolution
    value = getattr(g, address[0])
    for i in address[1:]:
        value = value[i]
    return value


def _set(g: _Genome, address: tuple[Any, ...], value: Any) -> None:
    if address[0] == "resolution":
        g.resolution = value
        return
    target = getattr(g, address[0])
    for i in address[1:-1]:
        target = target[i]
    target[address[-1]] = value


def _step(options: Sequence[Any], value: Any, rng: np.random.Generator) -> Any:
    """The option next to `value` (either side; the inner side at an end)."""
    if value in options:
        i = list(options).index(value)
    else:  # e.g. a resolution outside the searched ones: start from the nearest
        i = int(np.argmin([abs(o - value) for o in options]))
    j = i + (1 if rng.random() < 0.5 else -1)
    if not 0 <= j < len(options):
        j = i - (j - i)
    return options[j]


def perturb(
    space: SearchSpace,
    arch: ArchConfig,
    rng: np.random.Generator,
    size: int,
    resolutions: Sequence[int],
) -> ArchConfig:
    """A slightly changed child: 1..`size` of its choices moved by one step.

    The choices are the resolution, each width (stem, stages, head), each
    stage's depth, and each active layer's kernel and expand ratio.

    Args:
        space: The search space.
        arch: The child to change.
        rng: The random generator.
        size: At most this many choices change.
        resolutions: The resolutions allowed.

    Returns:
        A valid child (equal to `arch` only if the space has no choices).
    """
    g = _genome(space, arch)
    genes = _genes(space, g, resolutions, active_only=True)
    if not genes:
        return arch
    count = int(rng.integers(1, min(size, len(genes)) + 1))
    for idx in rng.choice(len(genes), size=count, replace=False):
        address, options = genes[int(idx)]
        _set(g, address, _step(options, _get(g, address), rng))
    return _arch(g)


def mutate(
    space: SearchSpace,
    arch: ArchConfig,
    rng: np.random.Generator,
    prob: float,
    resolutions: Sequence[int],
) -> ArchConfig:
    """Evolution's mutation: each choice resampled uniformly with probability `prob`.

    Args:
        space: The search space.
        arch: The parent.
        rng: The random generator.
        prob: Per-choice probability (inactive layers' choices included).
        resolutions: The resolutions allowed.

    Returns:
        A valid child.
    """
    g = _genome(space, arch)
    for address, options in _genes(space, g, resolutions, active_only=False):
        if rng.random() < prob:
            _set(g, address, options[int(rng.integers(len(options)))])
    return _arch(g)


def crossover(
    space: SearchSpace,
    a: ArchConfig,
    b: ArchConfig,
    rng: np.random.Generator,
) -> ArchConfig:
    """Evolution's crossover: each choice taken from either parent with equal chance.

    Args:
        space: The search space.
        a: One parent.
        b: The other.
        rng: The random generator.

    Returns:
        A valid child.
    """
    ga, gb = _genome(space, a), _genome(space, b)
    resolutions = sorted({a.resolution, b.resolution})
    for address, _ in _genes(space, ga, resolutions, active_only=False):
        if rng.random() < 0.5:
            _set(ga, address, _get(gb, address))
    return _arch(ga)


def draw_new(
    draw: Callable[[np.random.Generator], ArchConfig],
    rng: np.random.Generator,
    fits: Callable[[ArchConfig], bool],
    seen: Collection[str],
    max_tries: int,
) -> ArchConfig | None:
    """Draws children until one fits and is new.

    Args:
        draw: Makes a child from the generator.
        rng: The random generator.
        fits: Whether a child meets the constraint.
        seen: Keys (`ArchConfig.key`) of children not to return.
        max_tries: Give up after this many draws.

    Returns:
        The child, or None if no draw qualified.
    """
    for _ in range(max_tries):
        arch = draw(rng)
        if arch.key not in seen and fits(arch):
            return arch
    return None
