"""Which children to export: budgets of the search's selection, or arch specs.

The search writes `WORKDIR/search/selection.json` (one chosen child per
budget). `resolve_children` reads it through `tf_bignas.run.selection`
(checked, every child in the run's space; export does not import the search)
and picks the budgets asked for (`tf_bignas.run.budget`'s grammar), or all
of them; arch specs (`largest`, `smallest`, a JSON file, JSON text or the
paper's notation) add children of the run's space. Each child gets a folder
name: `KIND_VALUE` for a budget (e.g. `mflops_250`), the keyword for
`largest`/`smallest`, else `arch_<digest>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any

from tf_bignas.export.errors import ExportError
from tf_bignas.run import selection as selection_lib
from tf_bignas.run.budget import BUDGET_KINDS, Budget, BudgetError, parse_budget_list
from tf_bignas.run.selection import Selection, SelectionError
from tf_bignas.run.workdir import Workdir
from tf_bignas.space import ArchConfig, InvalidArchError

__all__ = [
    "BUDGET_KINDS",
    "SELECTION_PATH",
    "ExportChild",
    "arch_child",
    "budget_folder",
    "parse_budget_names",
    "read_selection",
    "resolve_children",
]

SELECTION_PATH = os.path.join("search", "selection.json")


@dataclasses.dataclass(frozen=True)
class ExportChild:
    """One child to export.

    Attributes:
        name: Its folder name under the export folder.
        arch: The child.
        origin: Where it came from ("selection.json budget mflops:250",
            "--arch largest", ...).
        selection: Its entry of `selection.json` as written in the file
            (`SelectedChild.to_dict()`: budget, metric, test accuracy, ...),
            or None for an arch given directly.
    """

    name: str
    arch: ArchConfig
    origin: str
    selection: dict[str, Any] | None = None


def parse_budget_names(text: str) -> list[tuple[str, float]]:
    """Reads `KIND:V1,V2,...[,KIND2:V3,...]` into (kind, limit) pairs.

    A thin wrapper of the one budget grammar, `tf_bignas.run.budget.parse_budget_list`.

    Args:
        text: E.g. "mflops:250,400" or "mflops:250,params_m:1.5".

    Returns:
        The (kind, limit) pairs in the order given.

    Raises:
        ExportError: If the text is malformed or a kind unknown.
    """
    try:
        return [(b.kind, b.limit) for b in parse_budget_list(text)]
    except BudgetError as e:
        raise ExportError(str(e)) from e


def budget_folder(kind: str, limit: float) -> str:
    """`KIND_VALUE`, e.g. "mflops_250": a budget's child folder name."""
    return Budget(kind, limit).folder


def read_selection(workdir: Workdir) -> Selection:
    """Reads and checks `WORKDIR/search/selection.json` (every child in the run's space).

    Args:
        workdir: The run.

    Returns:
        The Selection.

    Raises:
        ExportError: If it is missing (saying how to make it), unreadable, or
            not a valid selection of the run's space (naming the file and what
            is wrong).
    """
    path = os.path.join(workdir.path, SELECTION_PATH)
    if not os.path.isfile(path):
        raise ExportError(
            f"workdir {workdir.path!r} has no {SELECTION_PATH}: run the search first "
            f"(the search program, pipelines/search.py, with --workdir={workdir.path}), "
            "or name children with --arch (largest, smallest, a JSON arch file, JSON text or "
            "paper notation)"
        )
    try:
        return selection_lib.read_selection(path, workdir.space)
    except SelectionError as e:
        raise ExportError(str(e)) from e


def _selection_children(
    workdir: Workdir, selection: Selection, wanted: list[tuple[str, float]] | None
) -> list[ExportChild]:
    path = os.path.join(workdir.path, SELECTION_PATH)
    if selection.weights_digest != workdir.weights_digest:
        raise ExportError(
            f"{path} was made for weights {selection.weights_digest}, but the workdir's "
            f"weights are {workdir.weights_digest} ({workdir.weights}): run the search again"
        )
    entries = {(c.budget.kind, c.budget.limit): c for c in selection.budgets}
    keys = list(entries) if wanted is None else wanted
    missing = [Budget(k, v).name for k, v in keys if (k, v) not in entries]
    if missing:
        known = [c.budget.name for c in selection.budgets]
        raise ExportError(f"budgets {missing} are not in {path}; it has {known}")
    out = []
    for key in keys:
        entry = entries[key]
        origin = f"selection.json budget {entry.budget.name}"
        out.append(ExportChild(entry.budget.folder, entry.arch, origin, entry.to_dict()))
    return out


def arch_child(workdir: Workdir, spec: str) -> ExportChild:
    """A child from an arch spec of the run's space.

    Args:
        workdir: The run.
        spec: "largest", "smallest", a JSON arch file, JSON text, or paper
            notation "RESOLUTION DEPTHS WIDTHS KERNELS".

    Returns:
        The child, named "largest", "smallest" or "arch_<digest>".

    Raises:
        ExportError: If the spec cannot be read or the arch is not in the space.
    """
    try:
        arch = workdir.space.load_arch(spec)
    except InvalidArchError as e:
        raise ExportError(
            f"--arch {spec!r} is not a child of the run's space {workdir.space.name!r}: {e}"
        ) from e
    keyword = spec.strip()
    if keyword in ("largest", "smallest"):
        name = keyword
    else:
        name = "arch_" + hashlib.sha256(arch.key.encode()).hexdigest()[:8]
    return ExportChild(name, arch, f"--arch {keyword}")


def resolve_children(
    workdir: Workdir, budgets: str | None = None, archs: Sequence[str] = ()
) -> list[ExportChild]:
    """The children to export.

    Args:
        workdir: The run.
        budgets: Budgets of `selection.json` to export ("KIND:V1,V2,..."),
            "all", or None: all of them when no `archs` are given.
        archs: Arch specs to export as well.

    Returns:
        The children, budgets first, without duplicate folder names.

    Raises:
        ExportError: With no selection and no arch, an unknown budget, an arch
            outside the run's space, or two children with one folder name.
    """
    children: list[ExportChild] = []
    if budgets or not archs:
        wanted = None if budgets in (None, "", "all") else parse_budget_names(budgets)
        children += _selection_children(workdir, read_selection(workdir), wanted)
    children += [arch_child(workdir, spec) for spec in archs]
    seen: dict[str, ExportChild] = {}
    out = []
    for c in children:
        if c.name in seen:
            if seen[c.name].arch == c.arch:
                continue
            raise ExportError(f"two children would share the folder {c.name!r}")
        seen[c.name] = c
        out.append(c)
    return out
