"""Which children to export: budgets of the search's selection, or arch specs.

The search writes `WORKDIR/search/selection.json` (one chosen child per
budget; schema in `tf_bignas.search.report`). `resolve_children` reads it (as
JSON: export does not import the search) and picks the budgets asked for, or
all of them; arch specs (`largest`, `smallest`, a JSON file, JSON text or the
paper's notation) add children of the run's space. Each child gets a folder
name: `KIND_VALUE` for a budget (e.g. `mflops_250`), the keyword for
`largest`/`smallest`, else `arch_<digest>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from tf_bignas.export.errors import ExportError
from tf_bignas.run.workdir import Workdir
from tf_bignas.space import ArchConfig, InvalidArchError

SELECTION_PATH = os.path.join("search", "selection.json")
BUDGET_KINDS = ("mflops", "params_m", "latency_ms")


@dataclasses.dataclass(frozen=True)
class ExportChild:
    """One child to export.

    Attributes:
        name: Its folder name under the export folder.
        arch: The child.
        origin: Where it came from ("selection.json budget mflops:250",
            "--arch largest", ...).
        selection: Its entry of `selection.json` (budget, metric, test
            accuracy, ...), or None for an arch given directly.
    """

    name: str
    arch: ArchConfig
    origin: str
    selection: dict[str, Any] | None = None


def parse_budget_names(text: str) -> list[tuple[str, float]]:
    """Reads `KIND:V1,V2,...[,KIND2:V3,...]` into (kind, limit) pairs.

    Args:
        text: E.g. "mflops:250,400" or "mflops:250,params_m:1.5".

    Returns:
        The (kind, limit) pairs in the order given.

    Raises:
        ExportError: If the text is malformed or a kind unknown.
    """
    out: list[tuple[str, float]] = []
    kind = None
    for token in str(text).split(","):
        token = token.strip()
        if not token:
            continue
        if ":" in token:
            kind, _, token = token.partition(":")
            kind = kind.strip()
            if kind not in BUDGET_KINDS:
                raise ExportError(
                    f"unknown budget kind {kind!r} in {text!r}; known kinds: {list(BUDGET_KINDS)}"
                )
        if kind is None:
            raise ExportError(
                f"budgets {text!r} are not of the form KIND:V1,V2,... (e.g. mflops:250,400)"
            )
        try:
            limit = float(token)
        except ValueError:
            limit = math.nan
        if not math.isfinite(limit) or limit <= 0:
            raise ExportError(f"budget value {token!r} in {text!r} is not a positive number")
        out.append((kind, limit))
    if not out:
        raise ExportError(f"no budget in {text!r}; expected KIND:V1,V2,... (e.g. mflops:250)")
    return out


def budget_folder(kind: str, limit: float) -> str:
    """`KIND_VALUE`, e.g. "mflops_250": a budget's child folder name."""
    return f"{kind}_{limit:g}"


def read_selection(workdir: Workdir) -> dict[str, Any]:
    """Reads `WORKDIR/search/selection.json`.

    Raises:
        ExportError: If it is missing, unreadable, or not a selection.
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
        with open(path, encoding="utf-8") as f:
            selection = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read {path}: {e}") from e
    if not isinstance(selection, dict) or not isinstance(selection.get("budgets"), list):
        raise ExportError(f"{path} is not a search selection (no 'budgets' list)")
    return selection


def _selection_children(
    workdir: Workdir, selection: dict[str, Any], wanted: list[tuple[str, float]] | None
) -> list[ExportChild]:
    path = os.path.join(workdir.path, SELECTION_PATH)
    digest = selection.get("weights_digest")
    if digest and digest != workdir.weights_digest:
        raise ExportError(
            f"{path} was made for weights {digest}, but the workdir's weights are "
            f"{workdir.weights_digest} ({workdir.weights}): run the search again"
        )
    entries = {}
    for entry in selection["budgets"]:
        try:
            entries[(entry["kind"], float(entry["limit"]))] = entry
        except (KeyError, TypeError, ValueError) as e:
            raise ExportError(f"{path}: a budget entry lacks kind/limit: {entry!r}") from e
    keys = list(entries) if wanted is None else wanted
    missing = [f"{k}:{v:g}" for k, v in keys if (k, v) not in entries]
    if missing:
        known = [f"{k}:{v:g}" for k, v in entries]
        raise ExportError(f"budgets {missing} are not in {path}; it has {known}")
    out = []
    for kind, limit in keys:
        entry = entries[(kind, limit)]
        name = f"{kind}:{limit:g}"
        try:
            arch = ArchConfig.from_dict(entry["arch"])
            workdir.space.validate(arch)
        except (KeyError, TypeError, InvalidArchError) as e:
            raise ExportError(
                f"{path}: the child of budget {name} is not in the run's space "
                f"{workdir.space.name!r}: {e}"
            ) from e
        out.append(
            ExportChild(budget_folder(kind, limit), arch, f"selection.json budget {name}", entry)
        )
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
