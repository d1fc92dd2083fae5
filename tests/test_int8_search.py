"""Latency- and int8-aware search (pipelines.search --measure_latency --rank=int8).

One run of the program on a copy of the `trained_workdir` fixture: a
`latency_ms` budget between the smallest and the largest child, every
candidate timed end to end on this host (TFLite), then each budget's two best
candidates by float accuracy converted to int8 TFLite and re-ranked by their
int8 accuracy on the same selection images.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tf_bignas.latency import endtoend, int8
from tf_bignas.model import BNStatsStore
from tf_bignas.space import ArchConfig, bignas_tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = [
    "--config.coarse.resolutions=(16,)",
    "--config.resolutions=(16,)",
    "--config.coarse.depth_settings=(0.0, 1.0)",
    "--config.coarse.width_settings=(0.0, 1.0)",
    "--config.coarse.kernel_settings=(0.0,)",
    "--config.fine.mutations=1",
    "--config.selection_examples=96",
    "--config.test_batches=2",
]


@pytest.fixture(scope="module")
def run(trained_workdir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("int8") / "run")
    shutil.copytree(trained_workdir, path)
    space = bignas_tiny()
    # Time the span's ends first (into the search's cache of measurements), so that the
    # budget sits between the smallest and the largest child on this machine.
    cache = os.path.join(path, "search", "latency_measured.jsonl")
    e2e = endtoend.EndToEndLatency(space, 10, cache_path=cache)
    small, large = e2e(space.smallest(16)), e2e(space.largest(16))
    budget = f"{(small + 2 * large) / 3:.6f}"
    cmd = [sys.executable, "-m", "pipelines.search", f"--workdir={path}",
           f"--budgets=latency_ms:{budget}", "--measure_latency", "--rank=int8",
           "--int8_candidates=2", *CONFIG]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return path, float(budget), out.stdout, cache


def test_latency_budget_is_met_with_measured_latency(run):
    path, budget, stdout, cache = run
    space = bignas_tiny()
    selection = json.loads(pathlib.Path(path, "search", "selection.json").read_text())
    [entry] = selection["budgets"]
    assert entry["kind"] == "latency_ms" and entry["limit"] == pytest.approx(budget)
    assert entry["latency_ms"] <= entry["limit"]
    measured = {}
    for line in pathlib.Path(cache).read_text().splitlines():
        rec = json.loads(line)
        measured[rec["key"]] = rec["median_ms"]
    arch = ArchConfig.from_dict(entry["arch"])
    assert entry["latency_ms"] == pytest.approx(measured[arch.key])  # the measured value
    records = [json.loads(x) for x in pathlib.Path(path, "search", "evaluations.jsonl")
               .read_text().splitlines()[1:]]  # fmt: skip
    assert len(records) >= 5
    for r in records:  # every candidate was timed, once
        assert r["latency_ms"] == pytest.approx(measured[ArchConfig.from_dict(r["arch"]).key])
    evaluated = {ArchConfig.from_dict(r["arch"]).key for r in records}
    assert evaluated | {space.smallest(16).key, space.largest(16).key} <= set(measured)
    # A drawn mutation is timed to see whether it fits; one that does not is
    # never evaluated (on a loaded machine latencies rise, and more are drawn).
    for key in set(measured) - evaluated - {space.smallest(16).key, space.largest(16).key}:
        assert measured[key] > entry["limit"], key
    assert pathlib.Path(path, "search", "pareto.png").stat().st_size > 1000


def test_int8_ranking_scores_candidates_and_reports_both(run):
    path, budget, stdout, _ = run
    folder = pathlib.Path(path, "search")
    ranking = json.loads((folder / "int8_ranking.json").read_text())
    [row] = ranking["budgets"]
    assert 2 <= len(row["candidates"]) <= 3
    fitting = [c for c in row["candidates"] if c["cost"] <= budget]
    assert len(fitting) >= 2
    best = max(row["candidates"], key=lambda c: (c["int8_metric"], c["metric"], -c["cost"]))
    assert row["int8_choice"]["arch"] == best["arch"]
    best_float = max(fitting, key=lambda c: c["metric"])
    assert row["float_choice"]["metric"] == best_float["metric"]
    assert row["changed"] == (row["int8_choice"]["arch"] != row["float_choice"]["arch"])
    for choice in (row["float_choice"], row["int8_choice"]):
        for key in ("metric", "int8_metric", "test_top1", "int8_test_top1"):
            assert 0.0 <= choice[key] <= 1.0
    # int8 scores are real: each candidate's is a multiple of 1/96 (the selection images),
    # close to its float score on the same images
    for c in row["candidates"]:
        assert abs(c["int8_metric"] * 96 - round(c["int8_metric"] * 96)) < 1e-6
        assert abs(c["int8_metric"] - c["metric"]) <= 0.15
    selection = json.loads((folder / "selection.json").read_text())
    [entry] = selection["budgets"]
    assert selection["rank"] == "int8" and entry["rank"] == "int8"
    assert entry["arch"] == row["int8_choice"]["arch"]
    assert entry["int8_metric"] == row["int8_choice"]["int8_metric"]
    assert entry["float_ranked_choice"] == row["float_choice"]["paper_notation"]
    assert entry["latency_ms"] <= entry["limit"]
    store = BNStatsStore.load(os.path.join(path, "bn_stats.npz"))
    for choice in (row["float_choice"], row["int8_choice"]):
        assert ArchConfig.from_dict(choice["arch"]) in store
    report = (folder / "report.md").read_text()
    assert report.count(int8.REPORT_SECTION) == 1
    assert f"| {row['budget']} | int8 | `{row['int8_choice']['paper_notation']}` |" in report
    assert "float-ranked" in stdout and "int8-ranked" in stdout
