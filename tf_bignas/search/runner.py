"""The search run: from a trained workdir and budgets to `WORKDIR/search/`.

`run_search(wd, budgets, config)`:

1. checks everything that can be wrong before evaluating anything: the run
   finished; the budgets are of one known kind, with a cost model, and none
   is below the smallest child (one above the largest is answered with the
   largest child and a warning); the selection split exists; the results
   files already there belong to this space, these weights and this
   selection setup;
2. asks the method (`config.method`) for children round by round
   (`tf_bignas.search.methods`), skipping those it already evaluated and
   reusing the score of a child another method evaluated; each new child is
   BN-calibrated and scored on the selection split (`ChildScorer`) and
   appended to the results file as one line; a progress line tells the
   children evaluated, the best child per budget so far and the ETA;
3. when the method is done (and this process is not one shard of several):
   picks the best child per budget, calibrates it into the run's
   `bn_stats.npz` and scores it on the test split, and writes
   `selection_<method>.json`, `selection.json` (best over every method run on
   the workdir), `pareto.png` and `report.md`.

With `shard=(I, N)` the process evaluates every N-th child of each round,
starting at the I-th, and stops at the first round whose other shares are
not in the results files yet; the next unsharded run merges the shards and
goes on from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json
from tf_bignas.model import BNStatsStore
from tf_bignas.run.evaluations import EvaluationLog, record_key
from tf_bignas.run.evaluator import ChildEvaluator
from tf_bignas.run.workdir import Workdir, WorkdirError
from tf_bignas.search import methods as methods_lib
from tf_bignas.search import plot as plot_lib
from tf_bignas.search import report as report_lib
from tf_bignas.search.config import resolve_search_config
from tf_bignas.search.costs import (
    UNITS,
    Budget,
    BudgetError,
    CostModel,
    check_budgets,
    cost_models,
    cost_range,
)
from tf_bignas.search.scoring import ChildScorer
from tf_bignas.space import ArchConfig

SEARCH_FOLDER = "search"
LARGEST = "largest"


@dataclasses.dataclass
class SearchOutcome:
    """What a search run did.

    Attributes:
        folder: The search folder.
        method: The method run.
        complete: Whether the method finished (False for a shard waiting on others).
        num_evaluated: Children of this method in the results files.
        newly_evaluated: Children scored by this process.
        reused: Children whose score came from another method's record.
        selection: The combined selection (`selection.json`), or None if not written.
        method_selection: This method's selection, or None if not written.
        warnings: Budget warnings (above the largest child).
        tracing_count: Traces of the calibration and evaluation functions (of
            the evaluator, all searches that shared it included).
        seconds: Wall time of the run.
    """

    folder: str
    method: str
    complete: bool
    num_evaluated: int
    newly_evaluated: int
    reused: int
    selection: dict[str, Any] | None
    method_selection: dict[str, Any] | None
    warnings: list[str]
    tracing_count: int
    seconds: float


def _space_fingerprint(wd: Workdir) -> str:
    text = json.dumps(wd.space.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _eta(seconds: float) -> str:
    s = int(max(seconds, 0) + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Progress:
    """The progress line: children evaluated, best per budget so far, ETA."""

    def __init__(
        self,
        method: str,
        total: int,
        budgets: Sequence[Budget],
        unit: str,
        every: int,
        log: Callable[[str], None],
    ) -> None:
        self.method, self.total, self.budgets, self.unit = method, total, budgets, unit
        self.every, self.log = every, log
        self.best: dict[str, tuple[float, float]] = {}
        self.done = self.new = 0
        self.new_seconds = 0.0

    def add(self, metric: float, cost: float, seconds: float, new: bool, show: bool) -> None:
        self.done += 1
        if new:
            self.new += 1
            self.new_seconds += seconds
        for b in self.budgets:
            if b.fits(cost) and metric > self.best.get(b.name, (-1.0, 0.0))[0]:
                self.best[b.name] = (metric, cost)
        if show and (self.new % self.every == 0 or self.done >= self.total):
            self.show()

    def show(self) -> None:
        """Logs the progress line."""
        per = self.new_seconds / max(self.new, 1)
        best = " | ".join(f"{name} {100 * m:.2f}% @{c:.4g}" for name, (m, c) in self.best.items())
        left = max(self.total - self.done, 0)
        self.log(
            f"[{self.method}] {self.done}/{self.total} children ({self.new} new) | best: "
            f"{best or '-'} | {per:.2f} s/child | ETA {_eta(left * per)}"
        )

    def finish(self) -> None:
        """Logs the last line (the total is then what was evaluated)."""
        self.total = self.done
        self.show()


def run_search(
    wd: Workdir,
    budgets: Sequence[Budget],
    config: ml_collections.ConfigDict,
    *,
    latency: Callable[[ArchConfig], float] | None = None,
    shard: tuple[int, int] | None = None,
    folder: str | None = None,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
    evaluator: ChildEvaluator | None = None,
) -> SearchOutcome:
    """Searches the best child per budget (see the module docstring).

    Args:
        wd: The trained run (`open_workdir`).
        budgets: The budgets, all of one kind.
        config: Search options (`default_search_config()`, overrides applied).
        latency: Latency in ms of a child, for `latency_ms` budgets (a latency
            table or a measurement from `tf_bignas.latency`).
        shard: (I, N): evaluate the I-th of N shares of each round only.
        folder: Output folder; `WORKDIR/search` by default.
        log: Where progress lines go.
        warn: Where warnings go (stderr by default).
        evaluator: A `ChildEvaluator` of `wd.supernet` to reuse across
            searches in one process (no new traces); a new one if None.

    Returns:
        The SearchOutcome.

    Raises:
        WorkdirError: If the run has not finished.
        BudgetError: For no budgets, mixed kinds, a kind without a cost model,
            or a budget below the smallest child.
        ResultsFileError: If results files there belong to another run or setup.
        ValueError: For bad options or shard.
    """
    start = time.perf_counter()
    warn = warn or (lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
    if not wd.finished:
        raise WorkdirError(
            f"workdir {wd.path!r} holds no finished training (no results.json): finish it with "
            f"the same pipelines.train command (it resumes), then search"
        )
    if not budgets:
        raise BudgetError("no budgets given: pass e.g. --budgets=mflops:250,400,600")
    kind = budgets[0].kind
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard {shard[0]}/{shard[1]} is invalid: need 0 <= I < N")
    sharded = shard is not None and shard[1] > 1
    config = resolve_search_config(config, wd.space, wd.config)
    models = cost_models(wd.space, wd.num_classes, wd.supernet.stage_shortcuts, latency)
    if kind not in models:
        raise BudgetError(
            f"{kind} budgets need a latency model (a latency table or measurement from "
            f"tf_bignas.latency); none was given. Cost kinds available: {sorted(models)}"
        )
    cost = models[kind]
    span = cost_range(wd.space, cost, config.resolutions)
    warnings = check_budgets(budgets, span, wd.space.name)
    scorer = ChildScorer(wd, config, evaluator)
    header = {
        "space": wd.space.name,
        "space_fingerprint": _space_fingerprint(wd),
        "weights_digest": wd.weights_digest,
        "num_classes": wd.num_classes,
        **scorer.describe(),
    }
    folder = folder or os.path.join(wd.path, SEARCH_FOLDER)
    results = EvaluationLog(folder, header, shard if sharded else None)
    records = results.load()
    if not sharded:
        results.merge_shards()
    for w in warnings.values():
        warn(w)

    method = methods_lib.build_method(wd.space, budgets, cost, config)
    mine = {record_key(r)[1]: r for r in records if r["method"] == method.name}
    cache = {record_key(r)[1]: r for r in records}
    extra = 1 if warnings else 0
    progress = _Progress(
        method.name, method.expected_evaluations() + extra, budgets, UNITS[kind],
        config.log_every, log,
    )  # fmt: skip
    for r in mine.values():
        progress.add(r["metric"], cost(ArchConfig.from_dict(r["arch"])), 0.0, False, False)
    new = reused = 0

    def evaluate(cand: methods_lib.Candidate, round_index: int) -> None:
        nonlocal new, reused
        arch, key = cand.arch, cand.arch.key
        costs = {k: m(arch) for k, m in models.items()}
        base = {
            "method": method.name,
            "stage": cand.stage,
            "round": round_index,
            "budget": cand.budget,
            "arch": arch.to_dict(),
            "paper_notation": arch.to_paper_notation(),
            "resolution": arch.resolution,
            "macs": round(costs["mflops"] * 1e6),
            "params": round(costs["params_m"] * 1e6),
            "latency_ms": costs.get("latency_ms"),
            "split": scorer.split,
        }
        if key in cache:
            old = cache[key]
            record = {**base, "metric": old["metric"], "top5": old["top5"],
                      "num_examples": old["num_examples"], "seconds": 0.0, "reused": True}  # fmt: skip
            reused += 1
        else:
            t0 = time.perf_counter()
            acc = scorer.score(arch)
            seconds = time.perf_counter() - t0
            record = {**base, "metric": acc.top1, "top5": acc.top5,
                      "num_examples": acc.num_examples, "seconds": round(seconds, 4),
                      "reused": False}  # fmt: skip
            new += 1
        results.append(record)
        mine[key] = cache[key] = record
        progress.add(record["metric"], costs[kind], record["seconds"], not record["reused"], True)

    complete, round_index = True, 0
    while True:
        prior = {
            k: methods_lib.Scored(a, r["metric"], cost(a))
            for k, r in mine.items()
            if r["round"] < round_index
            for a in [ArchConfig.from_dict(r["arch"])]
        }
        cands = method.propose(round_index, prior)
        if cands is None:
            break
        if not _run_round(cands, round_index, mine, shard if sharded else None, evaluate):
            complete = False
            break
        round_index += 1
    if complete and warnings:
        # Budgets above the largest child are answered with it: make sure it is scored.
        largest = [methods_lib.Candidate(span.largest_arch, LARGEST)]
        complete = _run_round(largest, round_index, mine, shard if sharded else None, evaluate)
    if complete:
        progress.finish()

    outcome = SearchOutcome(
        folder=folder,
        method=method.name,
        complete=complete,
        num_evaluated=len(mine),
        newly_evaluated=new,
        reused=reused,
        selection=None,
        method_selection=None,
        warnings=list(warnings.values()),
        tracing_count=scorer.tracing_count,
        seconds=0.0,
    )
    if complete and not sharded:
        _finish(wd, budgets, cost, models, span, warnings, method.name, mine, scorer,
                results, outcome)  # fmt: skip
    outcome.tracing_count = scorer.tracing_count
    outcome.seconds = time.perf_counter() - start
    return outcome


def _run_round(
    cands: Sequence[methods_lib.Candidate],
    round_index: int,
    done: Mapping[str, Any],
    shard: tuple[int, int] | None,
    evaluate: Callable[[methods_lib.Candidate, int], None],
) -> bool:
    """Evaluates a round's children not done yet (this shard's share); True if all are done."""
    for i, cand in enumerate(cands):
        if cand.arch.key not in done and (shard is None or i % shard[1] == shard[0]):
            evaluate(cand, round_index)
    return all(c.arch.key in done for c in cands)


def _entry(
    budget: Budget,
    arch: ArchConfig,
    metric: float,
    models: Mapping[str, CostModel],
    test: Any,
    method: str,
    warning: str | None,
) -> dict[str, Any]:
    lat = models.get("latency_ms")
    return {
        "budget": budget.name,
        "kind": budget.kind,
        "limit": budget.limit,
        "arch": arch.to_dict(),
        "paper_notation": arch.to_paper_notation(),
        "macs": round(models["mflops"](arch) * 1e6),
        "params": round(models["params_m"](arch) * 1e6),
        "latency_ms": lat(arch) if lat is not None else None,
        "metric": metric,
        "test_top1": test.top1,
        "test_top5": test.top5,
        "method": method,
        "warning": warning,
    }


def _finish(
    wd: Workdir,
    budgets: Sequence[Budget],
    cost: CostModel,
    models: Mapping[str, CostModel],
    span: Any,
    warnings: Mapping[str, str],
    method: str,
    mine: Mapping[str, Mapping[str, Any]],
    scorer: ChildScorer,
    results: EvaluationLog,
    outcome: SearchOutcome,
) -> None:
    """Chooses, tests and stores the chosen children; writes the output files."""
    folder = results.folder
    scored = [
        methods_lib.Scored(a, r["metric"], cost(a))
        for r in mine.values()
        for a in [ArchConfig.from_dict(r["arch"])]
    ]
    by_key = {s.arch.key: s for s in scored}
    tests: dict[str, Any] = {}

    def test(arch: ArchConfig) -> Any:
        if arch.key not in tests:
            tests[arch.key] = scorer.test(arch)
        return tests[arch.key]

    entries = []
    for b in budgets:
        if b.name in warnings:
            best = by_key[span.largest_arch.key]
        else:
            best = methods_lib.best_fitting(scored, b)
        entries.append(
            _entry(b, best.arch, best.metric, models, test(best.arch), method, warnings.get(b.name))
        )
    base = {
        "format": report_lib.FORMAT,
        "workdir": os.path.abspath(wd.path),
        "weights_digest": wd.weights_digest,
        "space": wd.space.name,
        "method": method,
        "selection_split": scorer.split,
        "test_split": scorer.test_split,
    }
    own = {**base, "num_evaluated": len(mine), "budgets": entries}
    atomic_write_json(os.path.join(folder, report_lib.method_selection_file(method)), own)

    selections = report_lib.read_method_selections(folder, wd.weights_digest)
    selections[method] = own
    combined = report_lib.combine(selections, [b.name for b in budgets])
    for e in combined:  # children chosen by earlier runs of other methods: test and store them
        if e["method"] != method:
            arch = ArchConfig.from_dict(e["arch"])
            acc = test(arch)
            e["test_top1"], e["test_top5"] = acc.top1, acc.top5
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    plotted = []
    for r in results.load():
        counts[r["method"]] = counts.get(r["method"], 0) + 1
        seconds[r["method"]] = seconds.get(r["method"], 0.0) + float(r["seconds"])
        plotted.append({"cost": cost(ArchConfig.from_dict(r["arch"])), "metric": r["metric"],
                        "stage": r["stage"]})  # fmt: skip
    selection = {**base, "method": method, "num_evaluated": sum(counts.values()),
                 "budgets": combined}  # fmt: skip
    atomic_write_json(os.path.join(folder, report_lib.SELECTION_FILE), selection)

    # The chosen children's BN statistics go into the run's store (merged, atomic).
    path = wd.bn_stats_path()
    store = BNStatsStore.load(path) if os.path.isfile(path) else BNStatsStore()
    for e in list(combined) + list(entries):
        arch = ArchConfig.from_dict(e["arch"])
        store.put(arch, wd.supernet.bn_stats.get(arch))
    store.save(path)

    kind = budgets[0].kind
    unit = UNITS[kind]
    chosen = [
        {"cost": report_lib.entry_cost(e), "metric": e["metric"], "budget": e["budget"]}
        for e in combined
    ]
    plot_lib.write_pareto_png(
        os.path.join(folder, "pareto.png"),
        plotted,
        chosen,
        [(b.name, b.limit) for b in budgets],
        xlabel={
            "mflops": "MACs (millions; the paper's MFLOPs)",
            "params_m": "parameters (millions)",
            "latency_ms": "latency (ms)",
        }[kind],  # fmt: skip
        title=(
            f"{wd.space.name}: {', '.join(sorted(counts))} ({sum(counts.values())} children), "
            f"ranked on {scorer.split!r}"
        ),
    )
    text = report_lib.report_markdown(selection, selections, counts, seconds, unit)
    atomic_write_bytes(os.path.join(folder, "report.md"), text.encode())
    outcome.selection, outcome.method_selection = selection, own
