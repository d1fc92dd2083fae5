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
- benchmark: every exported file has a host latency in its model card;
- report: always rewritten (it only reads).

A stage that fails raises `ChainError` naming the stage, why, and the command
that resumes the chain.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import ml_collections

from tf_bignas.chain.report import write_report
from tf_bignas.export import export_lib, host_benchmark
from tf_bignas.export.children import resolve_children
from tf_bignas.run.card import read_card
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
    path = os.path.join(workdir, "search", "selection.json")
    try:
        with open(path, encoding="utf-8") as f:
            selection = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    have = {b["budget"] for b in selection.get("budgets", [])}
    return selection.get("weights_digest") == digest and set(budgets) <= have


def _benchmarked(export_dir: str) -> bool:
    folders = host_benchmark.find_model_folders(export_dir)
    for child, files in folders.items():
        card = read_card(os.path.join(export_dir, child)) or {}
        host = card.get("latency", {}).get("host", {})
        if not set(files) <= set(host):
            return False
    return bool(folders)


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
        if _benchmarked(export_dir):
            return "already complete"
        host_benchmark.benchmark_models(
            export_dir, threads=ch.benchmark_threads, runs=ch.benchmark_runs, log=log
        )
        return "done now"

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
