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

The whole run holds the workdir's lock (`tf_bignas.run.lock.locked_for`),
except a shard's (see `run_search`). `selection.json` is read and written
through `tf_bignas.run.selection`, `bn_stats.npz` through
`tf_bignas.model.bn_stats.merge_bn_stats`.

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

from tf_bignas.common.files import atomic_write_bytes
from tf_bignas.model.bn_stats import merge_bn_stats
from tf_bignas.run.evaluations import EvaluationLog, record_key
from tf_bignas.run.evaluator import ChildEvaluator
from tf_bignas.run.lock import locked_for
from tf_bignas.run.selection import SelectedChild, Selection, write_selection
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
        selection: The combined selection as written to `selection.json` (its
            JSON value; `tf_bignas.run.selection.read_selection` gives it
            typed), or None if not written.
        method_selection: This method's selection (JSON value), or None if not written.
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

    An unsharded search holds the workdir's lock (`run.lock`) from start to
    end: a second search of the same workdir fails at once, naming the
    first one's pid, instead of evaluating the same children again and
    rewriting `selection.json` and `bn_stats.npz` beside it. A process that
    already holds the lock (the chain) searches under it. A shard writes
    only its own results file and takes no lock, so that the shares of one
    search can run at once (on several hosts).

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
        WorkdirBusyError: If another process holds the workdir's lock.
        WorkdirError: If the run has not finished.
        BudgetError: For no budgets, mixed kinds, a kind without a cost model,
            or a budget below the smallest child.
        ResultsFileError: If results files there belong to another run or setup.
        ValueError: For bad options or shard.
    """
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard {shard[0]}/{shard[1]} is invalid: need 0 <= I < N")
    warn = warn or (lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
    if shard is not None and shard[1] > 1:
        return _search(wd, budgets, config, latency, shard, folder, log, warn, evaluator)
    with locked_for(wd.path, log=log):
        return _search(wd, budgets, config, latency, None, folder, log, warn, evaluator)


@dataclasses.dataclass
class _Setup:
    """What a search run works with, once every input is checked."""

    folder: str
    kind: str
    models: dict[str, CostModel]
    cost: CostModel
    span: Any
    warnings: dict[str, str]
    scorer: ChildScorer
    results: EvaluationLog
    records: list[dict[str, Any]]


def _prepare(
    wd: Workdir,
    budgets: Sequence[Budget],
    config: ml_collections.ConfigDict,
    latency: Callable[[ArchConfig], float] | None,
    shard: tuple[int, int] | None,
    folder: str | None,
    evaluator: ChildEvaluator | None,
) -> _Setup:
    """Checks everything that can be wrong before any evaluation; opens the results."""
    if not wd.finished:
        raise WorkdirError(
            f"workdir {wd.path!r} holds no finished training (no results.json): finish it with "
            f"the same pipelines.train command (it resumes), then search"
        )
    if not budgets:
        raise BudgetError("no budgets given: pass e.g. --budgets=mflops:250,400,600")
    kind = budgets[0].kind
    models = cost_models(wd.space, wd.num_classes, wd.supernet.stage_shortcuts, latency)
    if kind not in models:
        raise BudgetError(
            f"{kind} budgets need a latency model (a latency table or measurement from "
            f"tf_bignas.latency); none was given. Cost kinds available: {sorted(models)}"
        )
    span = cost_range(wd.space, models[kind], config.resolutions)
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
    results = EvaluationLog(folder, header, shard)
    records = results.load()
    if shard is None:
        results.merge_shards()
    return _Setup(folder, kind, models, models[kind], span, warnings, scorer, results, records)


class _Evaluations:
    """Scores children (or reuses another method's score) and appends their records."""

    def __init__(self, method: str, setup: _Setup, progress: _Progress) -> None:
        self.method, self.setup, self.progress = method, setup, progress
        records = setup.records
        self.mine = {record_key(r)[1]: r for r in records if r["method"] == method}
        self.cache = {record_key(r)[1]: r for r in records}
        self.new = self.reused = 0

    def __call__(self, cand: methods_lib.Candidate, round_index: int) -> None:
        s = self.setup
        arch, key = cand.arch, cand.arch.key
        costs = {k: m(arch) for k, m in s.models.items()}
        base = {
            "method": self.method,
            "stage": cand.stage,
            "round": round_index,
            "budget": cand.budget,
            "arch": arch.to_dict(),
            "paper_notation": arch.to_paper_notation(),
            "resolution": arch.resolution,
            "macs": round(costs["mflops"] * 1e6),
            "params": round(costs["params_m"] * 1e6),
            "latency_ms": costs.get("latency_ms"),
            "split": s.scorer.split,
        }
        if key in self.cache:
            old = self.cache[key]
            record = {**base, "metric": old["metric"], "top5": old["top5"],
                      "num_examples": old["num_examples"], "seconds": 0.0, "reused": True}  # fmt: skip
            self.reused += 1
        else:
            t0 = time.perf_counter()
            acc = s.scorer.score(arch)
            seconds = time.perf_counter() - t0
            record = {**base, "metric": acc.top1, "top5": acc.top5,
                      "num_examples": acc.num_examples, "seconds": round(seconds, 4),
                      "reused": False}  # fmt: skip
            self.new += 1
        s.results.append(record)
        self.mine[key] = self.cache[key] = record
        self.progress.add(record["metric"], costs[s.kind], record["seconds"],
                          not record["reused"], True)  # fmt: skip


def _search(
    wd: Workdir,
    budgets: Sequence[Budget],
    config: ml_collections.ConfigDict,
    latency: Callable[[ArchConfig], float] | None,
    shard: tuple[int, int] | None,
    folder: str | None,
    log: Callable[[str], None],
    warn: Callable[[str], None],
    evaluator: ChildEvaluator | None,
) -> SearchOutcome:
    """`run_search` (under the workdir's lock unless `shard` is given)."""
    start = time.perf_counter()
    config = resolve_search_config(config, wd.space, wd.config)
    s = _prepare(wd, budgets, config, latency, shard, folder, evaluator)
    for w in s.warnings.values():
        warn(w)
    method = methods_lib.build_method(wd.space, budgets, s.cost, config)
    extra = 1 if s.warnings else 0
    progress = _Progress(
        method.name, method.expected_evaluations() + extra, budgets, UNITS[s.kind],
        config.log_every, log,
    )  # fmt: skip
    evaluate = _Evaluations(method.name, s, progress)
    mine = evaluate.mine
    for r in mine.values():
        progress.add(r["metric"], s.cost(ArchConfig.from_dict(r["arch"])), 0.0, False, False)

    complete, round_index = True, 0
    while True:
        prior = {
            k: methods_lib.Scored(a, r["metric"], s.cost(a))
            for k, r in mine.items()
            if r["round"] < round_index
            for a in [ArchConfig.from_dict(r["arch"])]
        }
        cands = method.propose(round_index, prior)
        if cands is None:
            break
        if not _run_round(cands, round_index, mine, shard, evaluate):
            complete = False
            break
        round_index += 1
    if complete and s.warnings:
        # Budgets above the largest child are answered with it: make sure it is scored.
        largest = [methods_lib.Candidate(s.span.largest_arch, LARGEST)]
        complete = _run_round(largest, round_index, mine, shard, evaluate)
    if complete:
        progress.finish()

    outcome = SearchOutcome(
        folder=s.folder,
        method=method.name,
        complete=complete,
        num_evaluated=len(mine),
        newly_evaluated=evaluate.new,
        reused=evaluate.reused,
        selection=None,
        method_selection=None,
        warnings=list(s.warnings.values()),
        tracing_count=s.scorer.tracing_count,
        seconds=0.0,
    )
    if complete and shard is None:
        _finish(wd, budgets, s, method.name, mine, outcome)
    outcome.tracing_count = s.scorer.tracing_count
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


def _chosen(
    budget: Budget,
    arch: ArchConfig,
    metric: float,
    models: Mapping[str, CostModel],
    test: Any,
    method: str,
    warning: str | None,
) -> SelectedChild:
    lat = models.get("latency_ms")
    return SelectedChild(
        budget=budget,
        arch=arch,
        macs=round(models["mflops"](arch) * 1e6),
        params=round(models["params_m"](arch) * 1e6),
        latency_ms=lat(arch) if lat is not None else None,
        metric=metric,
        test_top1=test.top1,
        test_top5=test.top5,
        method=method,
        warning=warning,
    )


def _finish(
    wd: Workdir,
    budgets: Sequence[Budget],
    s: _Setup,
    method: str,
    mine: Mapping[str, Mapping[str, Any]],
    outcome: SearchOutcome,
) -> None:
    """Chooses, tests and stores the chosen children; writes the output files."""
    folder = s.folder
    scored = [
        methods_lib.Scored(a, r["metric"], s.cost(a))
        for r in mine.values()
        for a in [ArchConfig.from_dict(r["arch"])]
    ]
    by_key = {c.arch.key: c for c in scored}
    tests: dict[str, Any] = {}

    def test(arch: ArchConfig) -> Any:
        if arch.key not in tests:
            tests[arch.key] = s.scorer.test(arch)
        return tests[arch.key]

    chosen = []
    for b in budgets:
        if b.name in s.warnings:
            best = by_key[s.span.largest_arch.key]
        else:
            best = methods_lib.best_fitting(scored, b)
        chosen.append(_chosen(b, best.arch, best.metric, s.models, test(best.arch), method,
                              s.warnings.get(b.name)))  # fmt: skip
    own = Selection(
        workdir=os.path.abspath(wd.path),
        weights_digest=wd.weights_digest,
        space=wd.space.name,
        method=method,
        selection_split=s.scorer.split,
        test_split=s.scorer.test_split,
        num_evaluated=len(mine),
        budgets=tuple(chosen),
    )
    write_selection(os.path.join(folder, report_lib.method_selection_file(method)), own)

    selections = report_lib.read_method_selections(folder, wd.weights_digest, wd.space)
    selections[method] = own
    combined = []
    for e in report_lib.combine(selections, [b.name for b in budgets]):
        if e.method != method:  # chosen by an earlier run of another method: test and store it
            acc = test(e.arch)
            e = dataclasses.replace(e, test_top1=acc.top1, test_top5=acc.top5)
        combined.append(e)
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    plotted = []
    for r in s.results.load():
        counts[r["method"]] = counts.get(r["method"], 0) + 1
        seconds[r["method"]] = seconds.get(r["method"], 0.0) + float(r["seconds"])
        plotted.append({"cost": s.cost(ArchConfig.from_dict(r["arch"])), "metric": r["metric"],
                        "stage": r["stage"]})  # fmt: skip
    selection = dataclasses.replace(own, num_evaluated=sum(counts.values()),
                                    budgets=tuple(combined))  # fmt: skip
    write_selection(os.path.join(folder, report_lib.SELECTION_FILE), selection)

    # The chosen children's BN statistics go into the run's store (merged, atomic).
    archs = {e.arch for e in combined + chosen}
    merge_bn_stats(wd.bn_stats_path(), {a: wd.supernet.bn_stats.get(a) for a in archs})

    _write_pareto(wd, budgets, s, combined, plotted, counts)
    text = report_lib.report_markdown(selection, selections, counts, seconds, UNITS[s.kind])
    atomic_write_bytes(os.path.join(folder, "report.md"), text.encode())
    outcome.selection, outcome.method_selection = selection.to_dict(), own.to_dict()


def _write_pareto(
    wd: Workdir,
    budgets: Sequence[Budget],
    s: _Setup,
    combined: Sequence[SelectedChild],
    plotted: list[dict[str, Any]],
    counts: Mapping[str, int],
) -> None:
    """`pareto.png`: every evaluated child, the chosen ones and the budgets."""
    chosen = [{"cost": e.cost(), "metric": e.metric, "budget": e.budget.name} for e in combined]
    plot_lib.write_pareto_png(
        os.path.join(s.folder, "pareto.png"),
        plotted,
        chosen,
        [(b.name, b.limit) for b in budgets],
        xlabel={
            "mflops": "MACs (millions; the paper's MFLOPs)",
            "params_m": "parameters (millions)",
            "latency_ms": "latency (ms)",
        }[s.kind],  # fmt: skip
        title=(
            f"{wd.space.name}: {', '.join(sorted(counts))} ({sum(counts.values())} children), "
            f"ranked on {s.scorer.split!r}"
        ),
    )
