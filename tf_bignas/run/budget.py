"""Budgets: the one grammar of `--budgets` for search, export and the chain.

A budget is `KIND:VALUE`, an upper limit on one cost of the chosen child:
``mflops:250`` (250 million multiply-adds, the paper's MFLOPs),
``params_m:1.5`` (1.5 million parameters) or ``latency_ms:12.5``. A list
gives several values after one kind, and may switch kind: in
``mflops:250,400,params_m:1.5`` the values 250 and 400 are of kind
``mflops``, 1.5 of kind ``params_m``. `parse_budget_list` reads such a list
in the order given; `parse_budgets` sorts it (kinds in order of appearance,
limits ascending, duplicates dropped), as the search asks.

Example:
    >>> [b.name for b in parse_budgets("mflops:400,250")]
    ['mflops:250', 'mflops:400']
    >>> parse_budget_list("mflops:250,params_m:1.5")[1].folder
    'params_m_1.5'
"""

from __future__ import annotations

import dataclasses
import math
import types

MFLOPS = "mflops"
PARAMS_M = "params_m"
LATENCY_MS = "latency_ms"
BUDGET_KINDS = (MFLOPS, PARAMS_M, LATENCY_MS)
UNITS = types.MappingProxyType({MFLOPS: "MFLOPs", PARAMS_M: "M params", LATENCY_MS: "ms"})
_KIND_HELP = "mflops = million multiply-adds, params_m = million parameters, latency_ms"


class BudgetError(ValueError):
    """A budget is malformed, of an unknown kind, or no child can meet it."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """An upper limit on one cost of the chosen child.

    Attributes:
        kind: One of `BUDGET_KINDS`.
        limit: The largest allowed cost, in the kind's unit.
    """

    kind: str
    limit: float

    @property
    def name(self) -> str:
        """`KIND:VALUE`, e.g. "mflops:250" (the flag's spelling)."""
        return f"{self.kind}:{self.limit:g}"

    @property
    def folder(self) -> str:
        """`KIND_VALUE`, e.g. "mflops_250": the chosen child's folder name."""
        return f"{self.kind}_{self.limit:g}"

    def fits(self, cost: float) -> bool:
        """Whether a cost meets the budget."""
        return cost <= self.limit


def check_kind(kind: str, text: str) -> str:
    """`kind` if it is a known budget kind.

    Args:
        kind: The kind to check.
        text: Where it came from (quoted in the error).

    Returns:
        The kind.

    Raises:
        BudgetError: Naming the kind, the text and the known kinds.
    """
    if kind not in BUDGET_KINDS:
        raise BudgetError(
            f"unknown budget kind {kind!r} in {text!r}; known kinds: {list(BUDGET_KINDS)} "
            f"({_KIND_HELP})"
        )
    return kind


def check_limit(value: object, text: str) -> float:
    """`value` as a budget limit: a finite positive number.

    Args:
        value: A number, or its text.
        text: Where it came from (quoted in the error).

    Returns:
        The limit.

    Raises:
        BudgetError: If it is not a positive number.
    """
    try:
        limit = math.nan if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        limit = math.nan
    if not math.isfinite(limit) or limit <= 0:
        shown = value.strip() if isinstance(value, str) else value
        raise BudgetError(f"budget value {shown!r} in {text!r} is not a positive number")
    return limit


def parse_budget_list(text: str) -> tuple[Budget, ...]:
    """Reads `KIND:V1,V2,...[,KIND2:V3,...]` in the order given (duplicates kept).

    Args:
        text: E.g. "mflops:250,400" or "mflops:250,params_m:1.5".

    Returns:
        The budgets, in the order given.

    Raises:
        BudgetError: If the text is empty or malformed (a value before any
            kind), a kind is unknown, or a value is not a positive number.
    """
    form = (
        f"KIND:V1,V2,... with KIND one of {list(BUDGET_KINDS)}, e.g. mflops:250,400,600 "
        "(or several kinds: mflops:250,params_m:1.5)"
    )
    out: list[Budget] = []
    kind: str | None = None
    for token in str(text).split(","):
        token = token.strip()
        if not token:
            continue  # "mflops:250," or "mflops:250,,400"
        if ":" in token:
            name, _, token = token.partition(":")
            kind = check_kind(name.strip(), text)
        if kind is None or not token.strip():
            raise BudgetError(f"budgets {text!r} are not of the form {form}")
        out.append(Budget(kind, check_limit(token, text)))
    if not out:
        raise BudgetError(f"no budget in {text!r}; expected {form}")
    return tuple(out)


def parse_budgets(text: str) -> tuple[Budget, ...]:
    """Reads `KIND:V1,V2,...` sorted: kinds in order of appearance, limits ascending.

    Args:
        text: E.g. "mflops:250,400,600".

    Returns:
        The budgets in ascending order of limit per kind (duplicates dropped).

    Raises:
        BudgetError: As `parse_budget_list`.
    """
    budgets = parse_budget_list(text)
    kinds = list(dict.fromkeys(b.kind for b in budgets))
    return tuple(sorted(set(budgets), key=lambda b: (kinds.index(b.kind), b.limit)))
