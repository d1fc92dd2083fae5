"""`selection.json` and `report.md`: what was chosen, and how the methods compare.

Each run of a method writes `selection_<method>.json` (its own choice per
budget). `selection.json` holds, per budget, the child with the best
selection metric over the choices of every method run on the workdir (its
`method` says which one found it); export reads it. Both are
`tf_bignas.run.selection.Selection` files. `report.md` tabulates, per budget,
each method's choice (selection metric, test top-1, cost) and which method
found the more accurate child, with the number of children each method
evaluated.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence

from tf_bignas.common.text import md_code, md_text
from tf_bignas.run.selection import (
    FORMAT,
    SELECTION_FILE,
    SelectedChild,
    Selection,
    SelectionError,
    read_selection,
)
from tf_bignas.search.config import METHODS
from tf_bignas.space import SearchSpace

__all__ = [
    "FORMAT",
    "METHOD_SELECTION_PATTERN",
    "SELECTION_FILE",
    "combine",
    "method_selection_file",
    "read_method_selections",
    "report_markdown",
]

METHOD_SELECTION_PATTERN = "selection_*.json"


def method_selection_file(method: str) -> str:
    """File name of one method's selection."""
    return f"selection_{method}.json"


def read_method_selections(
    folder: str, weights_digest: str, space: SearchSpace | None = None
) -> dict[str, Selection]:
    """Every method's selection in a search folder made with these weights.

    Files that are not valid selections (of `space`, when given) are left out.

    Args:
        folder: `WORKDIR/search`.
        weights_digest: The run's weights; selections of other weights are left out.
        space: The run's space, if the children must be in it.

    Returns:
        {method: Selection}.
    """
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, METHOD_SELECTION_PATTERN))):
        try:
            value = read_selection(path, space)
        except SelectionError:
            continue
        if value.weights_digest == weights_digest:
            out[value.method] = value
    return out


def combine(
    selections: Mapping[str, Selection], budget_names: Sequence[str]
) -> list[SelectedChild]:
    """Per budget, the entry with the best selection metric over the methods.

    Ties go to the cheaper child, then to the method name's order.

    Args:
        selections: {method: Selection}.
        budget_names: The budgets to answer, in order.

    Returns:
        One entry per budget that some method answered.
    """
    out = []
    for name in budget_names:
        entries = [c for m in sorted(selections) for c in [selections[m].child(name)] if c]
        if entries:
            out.append(min(entries, key=lambda e: (-e.metric, e.macs, e.method)))
    return out


def _method(name: str) -> str:
    """A method's name in Markdown: as is if it is a known method, else a code span."""
    return name if name in METHODS else md_code(name)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def report_markdown(
    selection: Selection,
    selections: Mapping[str, Selection],
    counts: Mapping[str, int],
    seconds: Mapping[str, float],
    unit: str,
) -> str:
    """The text of `report.md` (every text from files in code spans or escaped).

    Args:
        selection: The combined selection (`selection.json`).
        selections: {method: its selection}.
        counts: {method: children it evaluated}.
        seconds: {method: evaluation seconds of those children}.
        unit: The budgets' unit (for the cost columns).

    Returns:
        Markdown.
    """
    methods = sorted(selections)
    lines = [
        f"# Architecture search of {md_code(selection.workdir)}",
        "",
        f"Space {md_code(selection.space)}, weights {md_code(selection.weights_digest)}. "
        f"Children are ranked by top-1 on the {md_code(selection.selection_split)} split; the "
        f"{md_code(selection.test_split)} split is reported for chosen children only and never "
        f"used to choose.",
        "",
        "## Methods",
        "",
        "| method | children evaluated | evaluation time (s) |",
        "|---|---|---|",
    ]
    for m in methods:
        lines.append(f"| {_method(m)} | {counts.get(m, 0)} | {seconds.get(m, 0.0):.1f} |")
    lines += [
        "",
        "## Best child per budget and method",
        "",
        "Selection top-1 / test top-1 (%), cost in " + unit + "; **bold**: the most accurate "
        "on the selection split.",
        "",
        "| budget | " + " | ".join(_method(m) for m in methods) + " | best |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    for entry in selection.budgets:
        name, cells = entry.budget.name, []
        for m in methods:
            e = selections[m].child(name)
            if e is None:
                cells.append("-")
                continue
            cell = f"{_pct(e.metric)} / {_pct(e.test_top1)} ({e.cost():.4g})"
            cells.append(f"**{cell}**" if e.metric == entry.metric else cell)
        winners = sorted(
            m
            for m in methods
            for x in [selections[m].child(name)]
            if x and x.metric == entry.metric
        )
        best = ", ".join(_method(w) for w in winners)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best} |")
    lines += [
        "",
        "## Chosen children (`selection.json`)",
        "",
        "| budget | child (paper notation) | MFLOPs | params (M) | selection top-1 | "
        "test top-1 | test top-5 | method |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in selection.budgets:
        lines.append(
            f"| {e.budget.name} | {md_code(e.paper_notation)} | {e.macs / 1e6:.2f} | "
            f"{e.params / 1e6:.3f} | {_pct(e.metric)} | {_pct(e.test_top1)} | "
            f"{_pct(e.test_top5)} | {_method(e.method)} |"
        )
    warnings = [e.warning for e in selection.budgets if e.warning]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- {md_text(w)}" for w in warnings]
    return "\n".join(lines) + "\n"
