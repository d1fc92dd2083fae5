"""Budgets and the costs they limit: one interface for MACs, parameters and latency.

A budget is `KIND:VALUE`, e.g. ``mflops:250`` (250 million multiply-adds,
what the paper calls MFLOPs), ``params_m:4.5`` (4.5 million parameters) or
``latency_ms:12.5``. `parse_budgets("mflops:250,400,600")` reads the flag's
form, several values of one kind. The grammar, `Budget` and `BudgetError`
live in `tf_bignas.run.budget` (export and the chain read budgets too) and
are re-exported here.

A cost model is any callable `arch -> float` in its budget kind's unit with a
`kind` attribute (`CostModel`). `MacsCost` and `ParamsCost` come from the
analytic cost model (`tf_bignas.model.cost`); latency comes from outside this
package (a latency table or an end-to-end measurement, `tf_bignas.latency`),
wrapped by `FunctionCost("latency_ms", fn)`: the search never imports it.

Example:
    >>> budgets = parse_budgets("mflops:250,400")
    >>> [b.name for b in budgets], budgets[0].folder
    (['mflops:250', 'mflops:400'], 'mflops_250')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from tf_bignas.model import cost as cost_lib
from tf_bignas.run.budget import (
    BUDGET_KINDS,
    LATENCY_MS,
    MFLOPS,
    PARAMS_M,
    UNITS,
    Budget,
    BudgetError,
    parse_budget_list,
    parse_budgets,
)
from tf_bignas.space import ArchConfig, SearchSpace

__all__ = [
    "BUDGET_KINDS",
    "LATENCY_MS",
    "MFLOPS",
    "PARAMS_M",
    "UNITS",
    "Budget",
    "BudgetError",
    "CostModel",
    "CostRange",
    "FunctionCost",
    "MacsCost",
    "ParamsCost",
    "check_budgets",
    "cost_models",
    "cost_range",
    "parse_budget_list",
    "parse_budgets",
]


class CostModel(Protocol):
    """A cost of a child in one budget kind's unit."""

    kind: str

    def __call__(self, arch: ArchConfig) -> float: ...


class _AnalyticCost:
    """MACs or parameters from `tf_bignas.model.cost`, cached per arch."""

    kind = ""

    def __init__(self, space: SearchSpace, num_classes: int, stage_shortcuts: bool = True) -> None:
        self.space, self.num_classes, self.stage_shortcuts = space, num_classes, stage_shortcuts
        self._cache: dict[str, cost_lib.Cost] = {}

    def full(self, arch: ArchConfig) -> cost_lib.Cost:
        """MACs and parameters of a child (validated against the space)."""
        key = arch.key
        if key not in self._cache:
            self._cache[key] = cost_lib.cost(
                self.space, arch, self.num_classes, self.stage_shortcuts
            )
        return self._cache[key]


class MacsCost(_AnalyticCost):
    """MACs / 1e6 of a child (budget kind "mflops").

    Args:
        space: The search space.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether the supernet has stage-transition shortcuts.
    """

    kind = MFLOPS

    def __call__(self, arch: ArchConfig) -> float:
        return self.full(arch).macs / 1e6


class ParamsCost(_AnalyticCost):
    """Parameters / 1e6 of a child (budget kind "params_m").

    Args:
        space: The search space.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether the supernet has stage-transition shortcuts.
    """

    kind = PARAMS_M

    def __call__(self, arch: ArchConfig) -> float:
        return self.full(arch).params / 1e6


class FunctionCost:
    """Any function `arch -> cost` as a cost model of one kind, cached per arch.

    This is how latency plugs in: `FunctionCost("latency_ms", table.latency_ms)`.

    Args:
        kind: One of `BUDGET_KINDS`.
        fn: The cost function.

    Raises:
        BudgetError: If the kind is unknown.
    """

    def __init__(self, kind: str, fn: Callable[[ArchConfig], float]) -> None:
        if kind not in BUDGET_KINDS:
            raise BudgetError(f"unknown cost kind {kind!r}; known: {list(BUDGET_KINDS)}")
        self.kind, self._fn = kind, fn
        self._cache: dict[str, float] = {}

    def __call__(self, arch: ArchConfig) -> float:
        key = arch.key
        if key not in self._cache:
            self._cache[key] = float(self._fn(arch))
        return self._cache[key]


def cost_models(
    space: SearchSpace,
    num_classes: int,
    stage_shortcuts: bool = True,
    latency: Callable[[ArchConfig], float] | None = None,
) -> dict[str, CostModel]:
    """The cost models of every kind available: MACs, params, and latency if given.

    Args:
        space: The search space.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether the supernet has stage-transition shortcuts.
        latency: Latency in ms of a child (a table or a measurement), or None.

    Returns:
        {kind: cost model}.
    """
    models: dict[str, CostModel] = {
        MFLOPS: MacsCost(space, num_classes, stage_shortcuts),
        PARAMS_M: ParamsCost(space, num_classes, stage_shortcuts),
    }
    if latency is not None:
        models[LATENCY_MS] = (
            latency if isinstance(latency, FunctionCost) else FunctionCost(LATENCY_MS, latency)
        )
    return models


@dataclasses.dataclass(frozen=True)
class CostRange:
    """The cheapest and the most expensive child of a space under one cost.

    Attributes:
        kind: The budget kind.
        smallest: Cost of the smallest child at the smallest resolution.
        largest: Cost of the largest child at the largest resolution.
        smallest_arch: That smallest child.
        largest_arch: That largest child.
    """

    kind: str
    smallest: float
    largest: float
    smallest_arch: ArchConfig
    largest_arch: ArchConfig


def cost_range(space: SearchSpace, model: CostModel, resolutions: Sequence[int]) -> CostRange:
    """The cost of the smallest and the largest child over some resolutions.

    Args:
        space: The search space.
        model: The cost model.
        resolutions: The resolutions searched.

    Returns:
        The CostRange.
    """
    small = space.smallest(min(resolutions))
    large = space.largest(max(resolutions))
    return CostRange(model.kind, model(small), model(large), small, large)


def check_budgets(budgets: Sequence[Budget], span: CostRange, space_name: str) -> dict[str, str]:
    """Checks budgets against the cheapest and the dearest child.

    Args:
        budgets: The budgets (all of `span.kind`).
        span: The cost range of the space.
        space_name: For messages.

    Returns:
        {budget name: warning} for each budget above the largest child (it is
        answered with the largest child).

    Raises:
        BudgetError: If a budget is of another kind or below the smallest child.
    """
    unit = UNITS[span.kind]
    valid = f"valid {span.kind} budgets: >= {span.smallest:.4g} (the largest child costs {span.largest:.4g} {unit})"
    warnings: dict[str, str] = {}
    for b in budgets:
        if b.kind != span.kind:
            raise BudgetError(
                f"budget {b.name} is of kind {b.kind!r} but this search is costed in "
                f"{span.kind!r}: give budgets of one kind per run"
            )
        if b.limit < span.smallest:
            raise BudgetError(
                f"budget {b.name} is below the smallest child of space {space_name!r} "
                f"({span.smallest:.4g} {unit} at resolution {span.smallest_arch.resolution}): "
                f"no child fits; {valid}"
            )
        if b.limit > span.largest:
            warnings[b.name] = (
                f"budget {b.name} is above the largest child of space {space_name!r} "
                f"({span.largest:.4g} {unit} at resolution {span.largest_arch.resolution}): "
                f"it is answered with the largest child"
            )
    return warnings
