"""`search/selection.json`: the children a search chose, one per budget, typed.

The search writes it (`tf_bignas.search.runner`, and again with int8
ranking, `tf_bignas.latency.int8`); export, the chain and its report read it.
Every reader and writer goes through `read_selection` and `write_selection`,
which check the file and name it and what is wrong in any error. The same
layout is used for each method's own choice, `selection_<method>.json`.

On disk (format 1, keys sorted)::

    {"format": 1, "workdir": ..., "weights_digest": ..., "space": ...,
     "method": ..., "selection_split": ..., "test_split": ...,
     "num_evaluated": N, ["rank": "int8",]
     "budgets": [{"budget": "mflops:250", "kind": "mflops", "limit": 250.0,
                  "arch": {...}, "paper_notation": ..., "macs": M, "params": P,
                  "latency_ms": ms or null, "metric": top-1 on the selection
                  split, "test_top1": ..., "test_top5": ..., "method": ...,
                  "warning": text or null,
                  [int8 ranking: "rank", "int8_metric", "int8_test_top1",
                   "float_ranked_choice"]}, ...]}

Keys a reader does not know are kept (`extra`) and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Mapping
from typing import Any

from tf_bignas.common.files import atomic_write_json
from tf_bignas.run.budget import Budget, BudgetError, check_kind, check_limit
from tf_bignas.space import ArchConfig, InvalidArchError, SearchSpace

FORMAT = 1
SELECTION_FILE = "selection.json"
_CHILD_KEYS = (
    "budget", "kind", "limit", "arch", "paper_notation", "macs", "params", "latency_ms",
    "metric", "test_top1", "test_top5", "method", "warning",
)  # fmt: skip
_INT8_KEYS = ("rank", "int8_metric", "int8_test_top1", "float_ranked_choice")
_TOP_KEYS = (
    "format", "workdir", "weights_digest", "space", "method", "selection_split", "test_split",
    "num_evaluated", "budgets",
)  # fmt: skip


class SelectionError(ValueError):
    """A selection file is missing, unreadable, or not a valid selection (the message names it)."""


@dataclasses.dataclass(frozen=True)
class SelectedChild:
    """The child a search chose for one budget.

    Attributes:
        budget: The budget it answers.
        arch: The child.
        macs: Its multiply-adds.
        params: Its parameters.
        latency_ms: Its latency in ms when the search had a latency model, else None.
        metric: Its top-1 on the selection split (float, BN-calibrated).
        test_top1: Its top-1 on the test split.
        test_top5: Its top-5 on the test split.
        method: The search method that found it.
        warning: Why it is not a regular answer (a budget above the largest
            child), or None.
        rank: "int8" when an int8 ranking chose it, else None.
        int8_metric: Its int8 TFLite top-1 on the selection split (int8 ranking).
        int8_test_top1: Its int8 TFLite top-1 on the test split (int8 ranking).
        float_ranked_choice: The float ranking's child in paper notation (int8 ranking).
        extra: Keys of the file this version does not know, kept as read.
    """

    budget: Budget
    arch: ArchConfig
    macs: int
    params: int
    latency_ms: float | None
    metric: float
    test_top1: float
    test_top5: float
    method: str
    warning: str | None = None
    rank: str | None = None
    int8_metric: float | None = None
    int8_test_top1: float | None = None
    float_ranked_choice: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def paper_notation(self) -> str:
        """The child in the paper's notation."""
        return self.arch.to_paper_notation()

    def cost(self) -> float:
        """Its cost in its budget's unit (MFLOPs, M params or ms).

        Raises:
            SelectionError: For a latency budget whose child has no latency.
        """
        if self.budget.kind == "mflops":
            return self.macs / 1e6
        if self.budget.kind == "params_m":
            return self.params / 1e6
        if self.latency_ms is None:
            raise SelectionError(f"the child of budget {self.budget.name} has no latency_ms")
        return float(self.latency_ms)

    def to_dict(self) -> dict[str, Any]:
        """The entry as written in the file."""
        out: dict[str, Any] = {
            **self.extra,
            "budget": self.budget.name,
            "kind": self.budget.kind,
            "limit": self.budget.limit,
            "arch": self.arch.to_dict(),
            "paper_notation": self.paper_notation,
            "macs": self.macs,
            "params": self.params,
            "latency_ms": self.latency_ms,
            "metric": self.metric,
            "test_top1": self.test_top1,
            "test_top5": self.test_top5,
            "method": self.method,
            "warning": self.warning,
        }
        for key in _INT8_KEYS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclasses.dataclass(frozen=True)
class Selection:
    """A search's choice, one child per budget (`selection.json`).

    Attributes:
        workdir: The searched run's folder (absolute).
        weights_digest: Digest of the supernet weights searched.
        space: The search space's name.
        method: The method of the run that wrote the file.
        selection_split: The split children were ranked on.
        test_split: The split the chosen children were tested on.
        num_evaluated: Children evaluated (by every method, for `selection.json`).
        budgets: The chosen children, in the budgets' order.
        rank: "int8" after an int8 ranking, else None.
        format: The file format version.
        extra: Top-level keys this version does not know, kept as read.
    """

    workdir: str
    weights_digest: str
    space: str
    method: str
    selection_split: str
    test_split: str
    num_evaluated: int
    budgets: tuple[SelectedChild, ...]
    rank: str | None = None
    format: int = FORMAT
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def child(self, budget: Budget | str) -> SelectedChild | None:
        """The child of a budget (a Budget or its name, e.g. "mflops:250"), or None."""
        name = budget.name if isinstance(budget, Budget) else budget
        return next((c for c in self.budgets if c.budget.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The selection as written in the file."""
        out: dict[str, Any] = {
            **self.extra,
            "format": self.format,
            "workdir": self.workdir,
            "weights_digest": self.weights_digest,
            "space": self.space,
            "method": self.method,
            "selection_split": self.selection_split,
            "test_split": self.test_split,
            "num_evaluated": self.num_evaluated,
            "budgets": [c.to_dict() for c in self.budgets],
        }
        if self.rank is not None:
            out["rank"] = self.rank
        return out


def _fail(source: str, where: str, what: str) -> SelectionError:
    return SelectionError(f"{source}: {where}{what}; run the search again to rewrite it")


_TYPE_NAMES = {str: "a string", int: "an integer", numbers.Integral: "an integer",
               numbers.Real: "a number", dict: "an object", list: "a list"}  # fmt: skip


def _get(
    data: Mapping[str, Any],
    key: str,
    kind: type,
    source: str,
    where: str,
    optional: bool = False,
) -> Any:
    """`data[key]` if present and of type `kind` (never a bool), else a SelectionError."""
    if key not in data:
        raise _fail(source, where, f"the key {key!r} is missing")
    value = data[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        allowed = _TYPE_NAMES.get(kind, kind.__name__) + (" or null" if optional else "")
        raise _fail(source, where, f"{key} = {value!r} is not {allowed}")
    return value


def _child_from_dict(
    data: Any, source: str, index: int, space: SearchSpace | None
) -> SelectedChild:
    where = f"budgets[{index}]: "
    if not isinstance(data, Mapping):
        raise _fail(source, where, f"an entry must be an object, not {type(data).__name__}")
    text = data.get("budget", f"budgets[{index}]")
    try:
        kind = check_kind(_get(data, "kind", str, source, where), str(text))
        budget = Budget(kind, check_limit(data.get("limit"), str(text)))
    except BudgetError as e:
        raise _fail(source, where, str(e)) from e
    name = _get(data, "budget", str, source, where)
    if name != budget.name:
        raise _fail(source, where, f"budget {name!r} disagrees with kind/limit ({budget.name!r})")
    where = f"budget {budget.name}: "
    arch_data = _get(data, "arch", dict, source, where)
    try:
        arch = ArchConfig.from_dict(arch_data)
        if space is not None:
            space.validate(arch)
    except InvalidArchError as e:
        in_space = f" of space {space.name!r}" if space is not None else ""
        raise _fail(source, where, f"the arch is not a valid child{in_space}: {e}") from e
    real = numbers.Real
    values = {
        "macs": _get(data, "macs", numbers.Integral, source, where),
        "params": _get(data, "params", numbers.Integral, source, where),
        "latency_ms": _get(data, "latency_ms", real, source, where, optional=True),
        "metric": _get(data, "metric", real, source, where),
        "test_top1": _get(data, "test_top1", real, source, where),
        "test_top5": _get(data, "test_top5", real, source, where),
        "method": _get(data, "method", str, source, where),
        "warning": _get(data, "warning", str, source, where, optional=True),
    }
    int8 = {
        k: _get(data, k, str if k in ("rank", "float_ranked_choice") else real, source, where)
        for k in _INT8_KEYS
        if data.get(k) is not None
    }
    known = set(_CHILD_KEYS) | set(_INT8_KEYS)
    extra = {k: v for k, v in data.items() if k not in known}
    return SelectedChild(budget=budget, arch=arch, **values, **int8, extra=extra)


def selection_from_dict(
    data: Any, source: str = "selection", space: SearchSpace | None = None
) -> Selection:
    """A Selection from the file's JSON value, checked.

    Args:
        data: The parsed JSON.
        source: What to name in errors (the file's path).
        space: If given, every child must be a valid child of it.

    Returns:
        The Selection.

    Raises:
        SelectionError: Naming `source` and the key, entry or arch that is wrong.
    """
    if not isinstance(data, Mapping):
        raise _fail(source, "", f"the file holds a {type(data).__name__}, not a selection object")
    version = _get(data, "format", int, source, "")
    if version != FORMAT:
        raise _fail(
            source, "", f"format {version!r} is not supported (this version reads {FORMAT})"
        )
    top = {k: _get(data, k, str, source, "") for k in _TOP_KEYS[1:7]}
    num = _get(data, "num_evaluated", int, source, "")
    entries = _get(data, "budgets", list, source, "")
    children = tuple(_child_from_dict(e, source, i, space) for i, e in enumerate(entries))
    names = [c.budget.name for c in children]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail(source, "", f"budgets {twice} appear more than once")
    rank = _get(data, "rank", str, source, "", optional=True) if "rank" in data else None
    extra = {k: v for k, v in data.items() if k not in _TOP_KEYS and k != "rank"}
    return Selection(**top, num_evaluated=num, budgets=children, rank=rank, extra=extra)


def read_selection(path: str, space: SearchSpace | None = None) -> Selection:
    """Reads and checks a selection file.

    Args:
        path: `search/selection.json` (or a method's `selection_<method>.json`).
        space: If given, every chosen child must be a valid child of it.

    Returns:
        The Selection.

    Raises:
        SelectionError: If the file is missing or unreadable, is not JSON, or
            is not a valid selection; the message names the file and what is
            wrong (the missing key, the budget whose arch is bad, ...).
    """
    if not os.path.isfile(path):
        raise SelectionError(f"{path} does not exist: run the search first (pipelines.search)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SelectionError(f"{path} is not readable JSON ({e}); run the search again") from e
    return selection_from_dict(data, path, space)


def write_selection(path: str, selection: Selection) -> None:
    """Writes a selection file atomically (checked first: what is written reads back).

    Args:
        path: The file.
        selection: The Selection.

    Raises:
        SelectionError: If the selection would not read back (e.g. a
            non-finite limit or a duplicate budget).
    """
    data = selection.to_dict()
    selection_from_dict(json.loads(json.dumps(data)), path)
    atomic_write_json(path, data)
