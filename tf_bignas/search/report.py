"""`selection.json` and `report.md`: what was chosen, and how the methods compare.

Each run of a method writes `selection_<method>.json` (its own choice per
budget). `selection.json` holds, per budget, the child with the best
selection metric over the choices of every method run on the workdir (its
`method` says which one found it); export reads it. `report.md` tabulates,
per budget, each method's choice (selection metric, test top-1, cost) and
which method found the more accurate child, with the number of children each
method evaluated.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

SELECTION_FILE = "selection.json"
METHOD_SELECTION_PATTERN = "selection_*.json"
FORMAT = 1


def method_selection_file(method: str) -> str:
    """File name of one method's selection."""
    return f"selection_{method}.json"


def read_method_selections(folder: str, weights_digest: str) -> dict[str, dict[str, Any]]:
    """Every method's selection in a search folder made with these weights.

    Args:
        folder: `WORKDIR/search`.
        weights_digest: The run's weights; selections of other weights are left out.

    Returns:
        {method: selection dict}.
    """
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, METHOD_SELECTION_PATTERN))):
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        if value.get("format") == FORMAT and value.get("weights_digest") == weights_digest:
            out[value["method"]] = value
    return out


def combine(selections: Mapping[str, Mapping[str, Any]], budget_names: Sequence[str]) -> list:
    """Per budget, the entry with the best selection metric over the methods.

    Ties go to the cheaper child, then to the method name's order.

    Args:
        selections: {method: selection dict}.
        budget_names: The budgets to answer, in order.

    Returns:
        One entry per budget that some method answered.
    """
    out = []
    for name in budget_names:
        entries = [
            e for m in sorted(selections) for e in selections[m]["budgets"] if e["budget"] == name
        ]
        if entries:
            out.append(min(entries, key=lambda e: (-e["metric"], e["macs"], e["method"])))
    return out


def entry_cost(entry: Mapping[str, Any]) -> float:
    """A selection entry's cost in its budget's unit."""
    kind = entry["kind"]
    if kind == "mflops":
        return entry["macs"] / 1e6
    if kind == "params_m":
        return entry["params"] / 1e6
    return float(entry["latency_ms"])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def report_markdown(
    selection: Mapping[str, Any],
    selections: Mapping[str, Mapping[str, Any]],
    counts: Mapping[str, int],
    seconds: Mapping[str, float],
    unit: str,
) -> str:
    """The text of `report.md`.

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
        f"# Architecture search of `{selection['workdir']}`",
        "",
        f"Space `{selection['space']}`, weights `{selection['weights_digest']}`. Children are "
        f"ranked by top-1 on the `{selection['selection_split']}` split; the `"
        f"{selection['test_split']}` split is reported for chosen children only and never "
        f"used to choose.",
        "",
        "## Methods",
        "",
        "| method | children evaluated | evaluation time (s) |",
        "|---|---|---|",
    ]
    for m in methods:
        lines.append(f"| {m} | {counts.get(m, 0)} | {seconds.get(m, 0.0):.1f} |")
    lines += [
        "",
        "## Best child per budget and method",
        "",
        "Selection top-1 / test top-1 (%), cost in " + unit + "; **bold**: the most accurate "
        "on the selection split.",
        "",
        "| budget | " + " | ".join(methods) + " | best |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    for entry in selection["budgets"]:
        name, cells = entry["budget"], []
        best = entry["metric"]
        for m in methods:
            e = next((x for x in selections[m]["budgets"] if x["budget"] == name), None)
            if e is None:
                cells.append("-")
                continue
            cell = f"{_pct(e['metric'])} / {_pct(e['test_top1'])} ({entry_cost(e):.4g})"
            cells.append(f"**{cell}**" if e["metric"] == best else cell)
        winners = sorted(
            m
            for m in methods
            for x in selections[m]["budgets"]
            if x["budget"] == name and x["metric"] == best
        )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(winners)} |")
    lines += [
        "",
        "## Chosen children (`selection.json`)",
        "",
        "| budget | child (paper notation) | MFLOPs | params (M) | selection top-1 | "
        "test top-1 | test top-5 | method |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in selection["budgets"]:
        lines.append(
            f"| {e['budget']} | `{e['paper_notation']}` | {e['macs'] / 1e6:.2f} | "
            f"{e['params'] / 1e6:.3f} | {_pct(e['metric'])} | {_pct(e['test_top1'])} | "
            f"{_pct(e['test_top5'])} | {e['method']} |"
        )
    warnings = [e["warning"] for e in selection["budgets"] if e.get("warning")]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"
