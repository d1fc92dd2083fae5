"""The chain of stages: train -> search -> export -> host benchmark -> report.

Every stage starts from the workdir alone (`open_workdir`) and skips what is
already complete:

- train: `results.json` and `supernet.weights.h5` exist (else train, resuming
  from the newest checkpoint);
- search: `search/selection.json` holds every budget of the config, made from
  these weights (else search; `evaluations.jsonl` makes a rerun reuse every
  child evaluated before);
- export: each child folder with a model card and a passed verification is
  reused file by file (`tf_bignas.export`);
- benchmark: every exported file that matches its model card (its sha256 is
  the one the card verified, `tf_bignas.run.card.verified_file`) has a host
  latency in the card for the chain's thread count (else time them); a file
  that differs from its card is named on one line and never timed;
- report: always rewritten (it only reads).

A stage that fails raises `ChainError` naming the stage, why, and the command
that resumes the chain.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import ml_collections

from tf_bignas.chain.report import write_report
from tf_bignas.common.text import clean
from tf_bignas.export import export_lib, host_benchmark
from tf_bignas.export.children import resolve_children
from tf_bignas.run.card import FileDigestError, find_latency, read_card, verified_file
from tf_bignas.run.selection import SelectionError, read_selection
from tf_bignas.run.workdir import RESULTS_FILE, WEIGHTS_FILE, open_workdir
from tf_bignas.search import parse_budgets, run_search
from tf_bignas.search.config import default_search_config
from tf_bignas.train.loop import train

STAGES = ("train", "search", "export", "benchmark", "report")


class ChainError(RuntimeError):
    """A stage of the chain failed; the message names it and how to resume."""


@dataclasses.dataclass
class ChainResult:
    """What the chain did.

    Attributes:
        workdir: The workdir.
        stages: Stage name -> "done now", "already complete" or "skipped".
        seconds: Stage name -> wall seconds in this call.
        files: The main outputs (report, selection, export folder, ...).
        table: The report's summary table (Markdown).
    """

    workdir: str
    stages: dict[str, str]
    seconds: dict[str, float]
    files: dict[str, str]
    table: str


def _search_complete(workdir: str, budgets: Sequence[str], digest: str) -> bool:
    """Whether `search/selection.json` answers every budget, for these weights."""
    try:
        selection = read_selection(os.path.join(workdir, "search", "selection.json"))
    except SelectionError:
        return False  # missing or invalid: the search (re)writes it
    have = {c.budget.name for c in selection.budgets}
    return selection.weights_digest == digest and set(budgets) <= have


@dataclasses.dataclass
class _FolderFiles:
    """A child folder's files for the benchmark: verified ones, and ones that differ.

    Attributes:
        verified: {benchmark format: path} of files matching the card.
        untimed: {benchmark format: path} of verified files without a host
            latency (at the thread count) for their current content.
        bad: Paths of files that differ from the card (or that it does not list).
    """

    verified: dict[str, str]
    untimed: dict[str, str]
    bad: list[str]


def _check_folder(
    folder: str, files: dict[str, str], threads: int, log: Callable[[str], None]
) -> _FolderFiles:
    """Checks each file of a child folder against its card (one line per file that differs)."""
    card = read_card(folder)
    key_of = {f.get("file"): k for k, f in ((card or {}).get("files") or {}).items()}
    out = _FolderFiles({}, {}, [])
    for fmt, path in sorted(files.items()):
        key = key_of.get(os.path.basename(path), fmt)
        try:
            verified_file(folder, key, card)
        except FileDigestError as e:
            log(f"benchmark: skipped, not timed: {clean(e, one_line=True)}")
            out.bad.append(path)
            continue
        out.verified[fmt] = path
        digest = card["files"][key]["sha256"]
        timed = [
            e
            for e in find_latency(card, target="host", format=fmt, threads=threads)
            if e.get("sha256") in (None, digest)
        ]
        if not timed:
            out.untimed[fmt] = path
    return out


def benchmark_stage(
    export_dir: str, threads: int, runs: int, log: Callable[[str], None] = print
) -> str:
    """The chain's benchmark stage: times the verified files that have no host latency yet.

    Every file is checked against its model card first (`verified_file`): a
    file that differs (changed or swapped after export) or that the card
    does not list is named on one line and not timed. `host_benchmark` times
    a folder's files together, so while a folder holds such a file, its
    other files wait too (one line says so); other folders are timed.

    Args:
        export_dir: The export folder (one subfolder per child).
        threads: Interpreter threads.
        runs: Timed invocations per file.
        log: Where progress and skip lines go.

    Returns:
        "done now", "already complete", or a note naming what was skipped.

    Raises:
        FileNotFoundError: If `export_dir` is missing.
        ValueError: If it holds no .tflite file.
    """
    folders = host_benchmark.find_model_folders(export_dir)
    checked = {f: _check_folder(f, files, threads, log) for f, files in folders.items()}
    bad = [p for c in checked.values() for p in c.bad]
    todo = [f for f, c in checked.items() if c.untimed]
    if not todo:
        return "already complete" + (f" ({len(bad)} file(s) skipped)" if bad else "")
    if not bad:
        host_benchmark.benchmark_models(export_dir, threads=threads, runs=runs, log=log)
        return "done now"
    for folder in todo:
        if checked[folder].bad:
            names = ", ".join(os.path.basename(p) for p in checked[folder].bad)
            log(
                f"benchmark: {folder}: not timing {sorted(checked[folder].untimed)} either while "
                f"{names} differs from the card (export again with tools.export, or restore it)"
            )
        else:
            host_benchmark.benchmark_models(folder, threads=threads, runs=runs, log=log)
    return f"done now ({len(bad)} file(s) skipped)"


def run_chain(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    resume_command: str = "",
    search_config: ml_collections.ConfigDict | None = None,
    log: Callable[[str], None] = print,
) -> ChainResult:
    """Runs every stage that is not complete yet (see the module docstring).

    Args:
        config: The training config; its `chain` section holds the budgets,
            the TFLite formats, and the search and benchmark settings.
        workdir: The workdir.
        resume_command: The command line that resumes the chain (quoted in errors).
        search_config: Search options (`tf_bignas.search.config`); the defaults
            with `config.chain.search_method` if None.
        log: Where progress lines go.

    Returns:
        The ChainResult.

    Raises:
        ChainError: If a stage fails (the message names it and how to resume).
    """
    ch = config.chain
    budgets = parse_budgets(ch.budgets)
    names = [b.name for b in budgets]
    export_dir = os.path.join(workdir, "export")
    stages: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], str]) -> None:
        log(f"== {name} ==")
        start = time.perf_counter()
        try:
            stages[name] = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported with its stage
            hint = f"; fix it, then resume with: {resume_command}" if resume_command else ""
            raise ChainError(f"stage {name!r} failed: {type(e).__name__}: {e}{hint}") from e
        seconds[name] = time.perf_counter() - start
        log(f"{name}: {stages[name]} ({seconds[name]:.0f} s)")

    def do_train() -> str:
        done = all(os.path.isfile(os.path.join(workdir, f)) for f in (RESULTS_FILE, WEIGHTS_FILE))
        if done:
            return "already complete"
        result = train(config, workdir, log=log)
        if not result.finished:
            raise RuntimeError(f"training stopped at step {result.step} before the end")
        return "done now"

    def do_search() -> str:
        wd = open_workdir(workdir)
        if _search_complete(workdir, names, wd.weights_digest):
            return "already complete"
        options = search_config
        if options is None:
            options = default_search_config()
            options.method = ch.search_method
            options.log_every = ch.search_log_every
        run_search(wd, budgets, options, log=log)
        return "done now"

    def do_export() -> str:
        wd = open_workdir(workdir)
        children = resolve_children(wd, ch.budgets)
        options = export_lib.ExportOptions(
            quantizations=tuple(q for q in ch.quantize.split(",") if q),
            verify_examples=ch.verify_examples or None,
            thresholds=export_lib.Thresholds(int8_min_agreement=ch.int8_min_agreement),
        )
        results = export_lib.export_children(wd, children, export_dir, options, log=log)
        written = sum(len(r.written) for r in results)
        return "done now" if written else "already complete"

    def do_benchmark() -> str:
        return benchmark_stage(export_dir, ch.benchmark_threads, ch.benchmark_runs, log)

    def do_report() -> str:
        write_report(workdir)
        return "done now"

    for name, fn in zip(
        STAGES, (do_train, do_search, do_export, do_benchmark, do_report), strict=True
    ):
        stage(name, fn)
    report = write_report(workdir)
    return ChainResult(
        workdir=workdir,
        stages=stages,
        seconds=seconds,
        files={
            "report": os.path.join(workdir, "report.md"),
            "report_html": os.path.join(workdir, "report.html"),
            "selection": os.path.join(workdir, "search", "selection.json"),
            "pareto": os.path.join(workdir, "search", "pareto.png"),
            "training_curves": os.path.join(workdir, "training_curves.png"),
            "export": export_dir,
        },
        table=report,
    )
