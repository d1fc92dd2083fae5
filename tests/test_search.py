"""Tests of the architecture search (tf_bignas.search) on a tiny trained supernet.

The pure parts (grid, mutations, budgets, config, methods) run on the spaces
alone; the search runs on a copy of the `trained_workdir` fixture (48 steps on
the embedded digits, a 200-digit minival) with a small grid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from tf_bignas.model import BNStatsStore
from tf_bignas.model import cost as cost_lib
from tf_bignas.run.evaluations import MAIN_FILE
from tf_bignas.run.evaluator import ChildEvaluator
from tf_bignas.run.workdir import WorkdirError, open_workdir
from tf_bignas.search import (
    BudgetError,
    ResultsFileError,
    default_search_config,
    mutations,
    parse_budgets,
    resolve_search_config,
    run_search,
)
from tf_bignas.search import costs as costs_lib
from tf_bignas.search import grid as grid_lib
from tf_bignas.search import methods as methods_lib
from tf_bignas.search.scoring import ChildScorer, selection_split
from tf_bignas.space import ArchConfig, InvalidArchError, get_space

TINY_SMALLEST = 0.145056  # MFLOPs of bignas_tiny's smallest child at 16 px, 10 classes
TINY_LARGEST = 4.180736  # ... and of its largest at 32 px
BUDGETS = "mflops:0.3,1,10"  # 10 is above the largest child

# ---------------------------------------------------------------------------
# The coarse grid


def test_paper_grid_has_160_skeletons_and_small_spaces_scale_down():
    paper = get_space("bignas_mobilenetv2")
    config = default_search_config(paper)
    assert config.coarse.resolutions == (192, 224, 256, 288, 320)
    skeletons = methods_lib.coarse_skeletons(paper, config)
    assert len(skeletons) == 5 * 4 * 2 * 4 == 160
    assert len({a.key for a in skeletons}) == 160
    # Depth settings give 4 distinct stage-wise depths, kernel settings 4 patterns.
    assert len({a.depths for a in skeletons}) == 4
    assert len({tuple(k[0] for k in a.kernels) for a in skeletons}) == 4
    assert paper.smallest(192).widths in {a.widths for a in skeletons}

    tiny = get_space("bignas_tiny")
    config = default_search_config(tiny)
    assert config.coarse.resolutions == (16, 24, 32)
    # Depths (1, 2) and widths have 2 choices each: 3 x 2 x 2 x 4 kernel patterns.
    assert len(methods_lib.coarse_skeletons(tiny, config)) == 3 * 2 * 2 * 4
    cifar = get_space("bignas_cifar")
    assert len(methods_lib.coarse_skeletons(cifar, default_search_config(cifar))) == 3 * 2 * 2 * 4


def test_skeleton_settings_map_to_the_stage_choices():
    tiny = get_space("bignas_tiny")
    assert grid_lib.skeleton(tiny, 16, 0, 0, 0, 0) == tiny.smallest(16)
    assert grid_lib.skeleton(tiny, 32, 1, 1, 1, 1) == tiny.largest(32)
    # Kernel 1/3: the last of the 3 stages uses its largest kernel.
    arch = grid_lib.skeleton(tiny, 24, 1, 0, 1 / 3)
    assert arch.kernels == ((3, 3), (3, 3), (5, 5))
    assert arch.depths == (2, 2, 2) and arch.widths == (8, 8, 16, 24, 32)
    paper = get_space("bignas_mobilenetv2")
    arch = grid_lib.skeleton(paper, 224, 2 / 3, 1, 1)
    assert arch.depths == (2, 3, 3, 3, 5, 5, 2)  # 2/3 of each stage's depth range
    assert [k[0] for k in arch.kernels] == [3, 3, 5, 5, 5, 5, 5]  # stages 1-2 only have 3


# ---------------------------------------------------------------------------
# Mutations


def _choice_distance(space, a: ArchConfig, b: ArchConfig, resolutions) -> list[int]:
    """Index distance of every choice (resolution, widths, depths, per-layer kernels and
    expand ratios of the layers both have)."""
    out = [abs(resolutions.index(a.resolution) - resolutions.index(b.resolution))]
    for choices, x, y in zip(space.width_choices(), a.widths, b.widths):
        out.append(abs(choices.index(x) - choices.index(y)))
    for s, x, y in zip(space.stages, a.depths, b.depths):
        out.append(abs(s.depths.index(x) - s.depths.index(y)))
    for s, ka, kb, ea, eb in zip(
        space.stages, a.kernels, b.kernels, a.expand_ratios, b.expand_ratios
    ):
        for x, y in zip(ka, kb):
            out.append(abs(s.kernels.index(x) - s.kernels.index(y)))
        for x, y in zip(ea, eb):
            out.append(abs(s.expand_ratios.index(x) - s.expand_ratios.index(y)))
    return out


@pytest.mark.parametrize("name", ["bignas_tiny", "bignas_mobilenetv2"])
def test_perturb_changes_a_few_choices_by_one_step(name):
    space = get_space(name)
    res = list(space.resolutions)
    rng = np.random.default_rng(0)
    for _ in range(200):
        arch = space.sample(rng, resolutions=res)
        child = mutations.perturb(space, arch, rng, 2, res)
        space.validate(child)
        assert child != arch
        dist = _choice_distance(space, arch, child, res)
        assert max(dist) == 1  # one step
        # At most 2 genes: a depth change also counts the layers it adds or drops.
        changed_depths = sum(x != y for x, y in zip(arch.depths, child.depths))
        assert sum(d > 0 for d in dist) <= 2 or changed_depths >= 1


def test_mutate_and_crossover_stay_valid_and_inherit():
    space = get_space("bignas_mobilenetv2")
    res = list(space.resolutions)
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = space.sample(rng, resolutions=res), space.sample(rng, resolutions=res)
        m = mutations.mutate(space, a, rng, 0.3, res)
        space.validate(m)
        x = mutations.crossover(space, a, b, rng)
        space.validate(x)
        assert x.resolution in (a.resolution, b.resolution)
        for i in range(space.num_stages):
            assert x.depths[i] in (a.depths[i], b.depths[i])
        for i in range(space.num_stages + 2):
            assert x.widths[i] in (a.widths[i], b.widths[i])
    assert mutations.mutate(space, a, rng, 0.0, res) == a
    assert mutations.crossover(space, a, a, rng) == a


# ---------------------------------------------------------------------------
# Budgets and options


def test_budgets_parse_name_and_fail_clearly():
    budgets = parse_budgets("mflops:600,250,400")
    assert [b.name for b in budgets] == ["mflops:250", "mflops:400", "mflops:600"]
    assert [b.folder for b in budgets] == ["mflops_250", "mflops_400", "mflops_600"]
    assert parse_budgets("latency_ms:12.5")[0].folder == "latency_ms_12.5"
    with pytest.raises(BudgetError, match=r"unknown budget kind 'gflops'.*mflops.*params_m"):
        parse_budgets("gflops:1")
    with pytest.raises(BudgetError, match="KIND:V1,V2"):
        parse_budgets("250")
    with pytest.raises(BudgetError, match="'-3' .* not a positive number"):
        parse_budgets("mflops:1,-3")


def test_budget_range_check():
    tiny = get_space("bignas_tiny")
    model = costs_lib.MacsCost(tiny, 10)
    span = costs_lib.cost_range(tiny, model, tiny.resolutions)
    assert span.smallest == pytest.approx(TINY_SMALLEST)
    assert span.largest == pytest.approx(TINY_LARGEST)
    with pytest.raises(BudgetError) as e:
        costs_lib.check_budgets(parse_budgets("mflops:0.1,1"), span, tiny.name)
    msg = str(e.value)
    assert "mflops:0.1 is below the smallest child" in msg and "0.1451" in msg
    assert ">= 0.1451" in msg and "4.181" in msg
    warnings = costs_lib.check_budgets(parse_budgets("mflops:1,5"), span, tiny.name)
    assert (
        list(warnings) == ["mflops:5"] and "answered with the largest child" in warnings["mflops:5"]
    )
    params = costs_lib.ParamsCost(tiny, 10)
    assert params(tiny.largest(32)) == pytest.approx(
        cost_lib.params(tiny, tiny.largest(32), 10) / 1e6
    )


def test_search_config_defaults_and_errors():
    tiny = get_space("bignas_tiny")
    train = ml_collections.ConfigDict(
        {"train": {"calibration_images": 64, "calibration_batch_size": 16}}
    )
    c = resolve_search_config(default_search_config(), tiny, train)
    assert c.calibration_images == 64 and c.batch_size == 16
    assert c.resolutions == (16, 24, 32)
    bad = default_search_config()
    bad.coarse.resolutions = (16, 20)
    with pytest.raises(InvalidArchError, match=r"\[20\] are not allowed.*\[16, 24, 32\]"):
        resolve_search_config(bad, tiny)
    bad = default_search_config()
    bad.coarse.depth_settings = (0.0, 1.5)
    with pytest.raises(ValueError, match="fractions in \\[0, 1\\]"):
        resolve_search_config(bad, tiny)
    bad = default_search_config()
    bad.method = "bayesian"
    with pytest.raises(ValueError, match="'bayesian' is unknown.*coarse_to_fine"):
        resolve_search_config(bad, tiny)


# ---------------------------------------------------------------------------
# Methods, with a made-up metric (no network)


def _drive(method: methods_lib.SearchMethod, metric) -> list[tuple[int, methods_lib.Candidate]]:
    """Runs a method's rounds with `metric(arch)` as the score."""
    scored: dict[str, tuple[int, methods_lib.Scored]] = {}
    out = []
    for r in range(100):
        prior = {k: s for k, (rr, s) in scored.items() if rr < r}
        cands = method.propose(r, prior)
        if cands is None:
            return out
        for c in cands:
            assert c.arch.key not in scored, "a method proposed a child twice"
            scored[c.arch.key] = (
                r,
                methods_lib.Scored(c.arch, metric(c.arch), method.cost(c.arch)),
            )
            out.append((r, c))
    raise AssertionError("method never finished")


def test_methods_respect_budgets_and_get_equal_evaluations():
    tiny = get_space("bignas_tiny")
    config = resolve_search_config(default_search_config(), tiny)
    cost = costs_lib.MacsCost(tiny, 10)
    budgets = parse_budgets("mflops:0.5,1.5")
    by_name = {b.name: b for b in budgets}

    def metric(arch: ArchConfig) -> float:  # more MACs and bigger kernels: better
        return cost(arch) + 0.01 * sum(map(sum, arch.kernels))

    counts = {}
    for name in ("coarse_to_fine", "random", "evolution"):
        config.method = name
        method = methods_lib.build_method(tiny, budgets, cost, config)
        proposals = _drive(method, metric)
        assert proposals == _drive(methods_lib.build_method(tiny, budgets, cost, config), metric)
        for _, c in proposals:
            tiny.validate(c.arch)
            if c.budget:
                assert by_name[c.budget].fits(cost(c.arch)), (name, c)
        counts[name] = len(proposals)
        stages = {c.stage for _, c in proposals}
        if name == "coarse_to_fine":
            assert stages == {"coarse", "fine"}
            assert method.expected_evaluations() == 48 + 2 * 20 == len(proposals)
            # The fine children are perturbations of the best fitting skeleton.
            coarse = [
                methods_lib.Scored(c.arch, metric(c.arch), cost(c.arch))
                for r, c in proposals
                if r == 0
            ]
            for b in budgets:
                base = methods_lib.best_fitting(coarse, b).arch
                fine = [c.arch for r, c in proposals if r == 1 and c.budget == b.name]
                assert len(fine) == 20
                for arch in fine:
                    assert max(_choice_distance(tiny, base, arch, list(tiny.resolutions))) == 1
        if name == "evolution":
            assert max(r for r, _ in proposals) >= 3  # several generations
    assert counts == {"coarse_to_fine": 88, "random": 88, "evolution": 88}


# ---------------------------------------------------------------------------
# The search on a trained tiny supernet


def _config(**overrides) -> ml_collections.ConfigDict:
    c = default_search_config()
    c.resolutions = (16, 32)  # (random, evolution and mutations too: 2 resolutions to trace)
    c.coarse.resolutions = (16, 32)
    c.coarse.depth_settings = (0.0, 1.0)
    c.coarse.width_settings = (0.0, 1.0)
    c.coarse.kernel_settings = (0.0, 1.0)
    c.fine.mutations = 2
    c.selection_examples = 96
    c.test_batches = 2
    c.baseline.num_evaluations = 6
    c.log_every = 100
    for key, value in overrides.items():
        section, _, name = key.rpartition("__")
        setattr(c[section] if section else c, name, value)
    return c


def _records(folder: str, name: str = MAIN_FILE) -> list[dict]:
    with open(os.path.join(folder, name), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", "the file must end with a whole line"
    return [json.loads(line) for line in lines[1:-1]]


@pytest.fixture(scope="module")
def workdir(trained_workdir, tmp_path_factory) -> str:
    """A private copy of the trained run (the search writes into bn_stats.npz)."""
    path = str(tmp_path_factory.mktemp("search") / "run")
    shutil.copytree(trained_workdir, path)
    return path


@pytest.fixture(scope="module")
def wd(workdir):
    return open_workdir(workdir)


@pytest.fixture(scope="module")
def evaluator(wd) -> ChildEvaluator:
    """One evaluator for every search of the module: compiled once per resolution."""
    return ChildEvaluator(wd.supernet)


@pytest.fixture(scope="module")
def search(wd, evaluator):
    """run_search on the module's run with its shared evaluator."""

    def run(budgets: str, config: ml_collections.ConfigDict, **kwargs):
        kwargs.setdefault("log", lambda _: None)
        kwargs.setdefault("warn", lambda _: None)
        return run_search(wd, parse_budgets(budgets), config, evaluator=evaluator, **kwargs)

    return run


@pytest.fixture(scope="module")
def searched(search):
    """One coarse-to-fine search under mflops:0.3,1,10 into WORKDIR/search."""
    warned: list[str] = []
    lines: list[str] = []
    out = search(BUDGETS, _config(), log=lines.append, warn=warned.append)
    return out, warned, lines


SELECTION_KEYS = {
    "format", "workdir", "weights_digest", "space", "method", "selection_split",
    "test_split", "num_evaluated", "budgets",
}  # fmt: skip
ENTRY_KEYS = {
    "budget", "kind", "limit", "arch", "paper_notation", "macs", "params", "latency_ms",
    "metric", "test_top1", "test_top5", "method", "warning",
}  # fmt: skip


def test_search_chooses_within_budgets_and_beats_every_fitting_skeleton(wd, searched):
    out, warned, lines = searched
    folder = os.path.join(wd.path, "search")
    assert out.complete and out.folder == folder
    records = _records(folder)
    assert len(records) == out.num_evaluated == out.newly_evaluated
    # 16 skeletons (the largest among them) + 2 mutations for each of 3 budgets.
    assert out.num_evaluated == 16 + 3 * 2
    with open(os.path.join(folder, "selection.json"), encoding="utf-8") as f:
        sel = json.load(f)
    assert set(sel) == SELECTION_KEYS
    assert sel["method"] == "coarse_to_fine" and sel["space"] == "bignas_tiny"
    assert sel["weights_digest"] == wd.weights_digest and sel["format"] == 1
    assert sel["selection_split"] == "minival" and sel["test_split"] == "test"
    assert sel["num_evaluated"] == out.num_evaluated
    assert [e["budget"] for e in sel["budgets"]] == ["mflops:0.3", "mflops:1", "mflops:10"]
    coarse = [r for r in records if r["stage"] == "coarse"]
    assert len(coarse) == 16
    for e in sel["budgets"]:
        assert set(e) == ENTRY_KEYS
        arch = ArchConfig.from_dict(e["arch"])
        wd.space.validate(arch)
        assert e["macs"] == cost_lib.macs(wd.space, arch, 10)
        assert e["params"] == cost_lib.params(wd.space, arch, 10)
        assert e["paper_notation"] == arch.to_paper_notation()
        assert 0.0 <= e["test_top1"] <= e["test_top5"] <= 1.0
        assert e["latency_ms"] is None and e["method"] == "coarse_to_fine"
        if e["budget"] == "mflops:10":  # above the largest child
            assert arch == wd.space.largest(32)
            assert "above the largest child" in e["warning"] and e["warning"] in warned
            continue
        assert e["warning"] is None
        assert e["macs"] / 1e6 <= e["limit"]
        fitting = [r["metric"] for r in coarse if r["macs"] / 1e6 <= e["limit"]]
        assert fitting and e["metric"] >= max(fitting)
        best = max(r["metric"] for r in records if r["macs"] / 1e6 <= e["limit"])
        assert e["metric"] == best
    assert warned and len(warned) == 1
    # Every record names its child, costs, score and split.
    for r in records:
        arch = ArchConfig.from_dict(r["arch"])
        assert r["resolution"] == arch.resolution and r["split"] == "minival"
        assert r["num_examples"] == 96 and r["seconds"] > 0 and not r["reused"]
        assert r["macs"] == cost_lib.macs(wd.space, arch, 10)
    # The progress line: children, best per budget, ETA.
    assert lines[-1].startswith("[coarse_to_fine] 22/22 children (22 new) | best: mflops:0.3 ")
    assert "ETA 0:00:00" in lines[-1]


def test_no_retrace_per_child(searched):
    out, _, _ = searched
    # Two resolutions: calibration, evaluation and its last partial batch, at most.
    assert out.newly_evaluated > 6 and out.tracing_count <= 3 * 2


def test_chosen_children_statistics_join_the_run(wd, searched):
    out, _, _ = searched
    store = BNStatsStore.load(wd.bn_stats_path())
    for e in out.selection["budgets"]:
        assert ArchConfig.from_dict(e["arch"]) in store
    assert len(store.archs()) >= 3  # the run's own largest and smallest are still there
    assert wd.space.smallest() in store


def test_pareto_png_and_report(wd, searched):
    folder = os.path.join(wd.path, "search")
    with open(os.path.join(folder, "pareto.png"), "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    with open(os.path.join(folder, "report.md"), encoding="utf-8") as f:
        report = f.read()
    assert "| mflops:0.3 |" in report and "coarse_to_fine" in report
    assert "above the largest child" in report


def test_restart_skips_evaluated_children_and_drops_a_torn_line(wd, search, searched):
    first, _, _ = searched
    folder = os.path.join(wd.path, "search")
    again = search(BUDGETS, _config())
    assert again.newly_evaluated == 0 and again.num_evaluated == first.num_evaluated
    assert again.selection["budgets"] == first.selection["budgets"]
    # A crash after 3 children were lost and mid-line: the torn line is dropped,
    # exactly those children are evaluated again, and the choice is the same.
    path = os.path.join(folder, MAIN_FILE)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    torn = "\n".join(lines[:-4]) + "\n" + lines[-4][:40]
    with open(path, "w", encoding="utf-8") as f:
        f.write(torn)
    resumed = search(BUDGETS, _config())
    assert resumed.newly_evaluated == 3
    assert [e["arch"] for e in resumed.selection["budgets"]] == [
        e["arch"] for e in first.selection["budgets"]
    ]
    assert len(_records(folder)) == first.num_evaluated


def test_shards_split_each_round_and_merge(search, tmp_path):
    config = _config(coarse__resolutions=(16,), fine__mutations=1)
    folder = str(tmp_path / "sharded")
    a = search("mflops:0.3,1", config, shard=(0, 2), folder=folder)
    b = search("mflops:0.3,1", config, shard=(1, 2), folder=folder)
    assert not a.complete and not b.complete and a.selection is None
    # Shard 0 scores its half of the 8 skeletons and stops: the other half is missing.
    # Shard 1, started after it, finds the coarse round complete and goes on to its
    # share of the fine round (1 of 2 mutations).
    assert (a.newly_evaluated, b.newly_evaluated) == (4, 5)
    shard_a = _records(folder, "evaluations.shard-0-of-2.jsonl")
    shard_b = _records(folder, "evaluations.shard-1-of-2.jsonl")
    keys_a = {json.dumps(r["arch"]) for r in shard_a}
    keys_b = {json.dumps(r["arch"]) for r in shard_b if r["stage"] == "coarse"}
    assert len(keys_a) == len(keys_b) == 4 and not keys_a & keys_b
    assert [r["stage"] for r in shard_b].count("fine") == 1
    assert not os.path.exists(os.path.join(folder, "selection.json"))
    merged = search("mflops:0.3,1", config, folder=folder)
    assert merged.complete and merged.newly_evaluated == 1  # the other fine child
    records = _records(folder)
    assert len(records) == 8 + 2
    assert keys_a | keys_b == {json.dumps(r["arch"]) for r in records if r["stage"] == "coarse"}
    assert os.path.isfile(os.path.join(folder, "selection.json"))


def test_baselines_get_the_same_evaluations_and_the_report_compares(
    wd, search, searched, evaluator
):
    folder = os.path.join(wd.path, "search")
    outs = {}
    for method in ("random", "evolution"):
        outs[method] = search(BUDGETS, _config(method=method))
        # 6 children, plus the largest one for the budget above it.
        assert outs[method].num_evaluated in (6, 7)
        assert outs[method].newly_evaluated + outs[method].reused == outs[method].num_evaluated
        own = outs[method].method_selection
        assert own["method"] == method and own["num_evaluated"] == outs[method].num_evaluated
    with open(os.path.join(folder, "selection.json"), encoding="utf-8") as f:
        sel = json.load(f)
    files = {
        m: json.load(open(os.path.join(folder, f"selection_{m}.json"), encoding="utf-8"))
        for m in ("coarse_to_fine", "random", "evolution")
    }
    for i, e in enumerate(sel["budgets"]):
        assert e["metric"] == max(files[m]["budgets"][i]["metric"] for m in files)
        assert files[e["method"]]["budgets"][i]["arch"] == e["arch"]
    records = _records(folder)
    assert {r["method"] for r in records} == {"coarse_to_fine", "random", "evolution"}
    assert {r["stage"] for r in records} >= {"coarse", "fine", "random", "evolution"}
    with open(os.path.join(folder, "report.md"), encoding="utf-8") as f:
        report = f.read()
    assert "| budget | coarse_to_fine | evolution | random | best |" in report
    for m in files:
        assert f"| {m} | {len([r for r in records if r['method'] == m])} |" in report
    # Four searches, dozens of children, one evaluator: still 3 traces per resolution.
    assert evaluator.tracing_count <= 3 * 2


def test_latency_budgets_plug_in_through_the_cost_interface(wd, search, tmp_path):
    def fake_latency(arch: ArchConfig) -> float:  # a stand-in for a latency table
        return 0.5 + 2.0 * cost_lib.macs(wd.space, arch, 10) / 1e6

    config = _config(coarse__resolutions=(16,), coarse__kernel_settings=(0.0,), fine__mutations=1)
    out = search("latency_ms:1.2,2", config, latency=fake_latency, folder=str(tmp_path / "latency"))
    for e in out.selection["budgets"]:
        arch = ArchConfig.from_dict(e["arch"])
        assert (
            e["latency_ms"] == pytest.approx(fake_latency(arch)) and e["latency_ms"] <= e["limit"]
        )
    with pytest.raises(BudgetError, match="latency_ms budgets need a latency model"):
        search("latency_ms:2", config, folder=str(tmp_path / "x"))


def _unchanged(path: str):
    with open(path, "rb") as f:
        before = f.read()

    def check() -> None:
        with open(path, "rb") as f:
            assert f.read() == before, f"{path} was changed"

    return check


def test_bad_input_is_refused_before_anything_is_lost(wd, workdir, search, searched, tmp_path):
    folder = os.path.join(wd.path, "search")
    results = os.path.join(folder, MAIN_FILE)
    check = _unchanged(results)
    with pytest.raises(BudgetError, match=r"mflops:0.1 is below the smallest child.*>= 0.1451"):
        search("mflops:0.1,1", _config())
    check()
    # A results file of another space, then of other weights: refused, untouched.
    for field, value in (("space", "bignas_cifar"), ("weights_digest", "0123456789abcdef")):
        other = str(tmp_path / field)
        os.makedirs(other)
        with open(results, encoding="utf-8") as f:
            lines = f.read().split("\n")
        header = json.loads(lines[0])
        header["header"][field] = value
        with open(os.path.join(other, MAIN_FILE), "w", encoding="utf-8") as f:
            f.write("\n".join([json.dumps(header)] + lines[1:]))
        check_other = _unchanged(os.path.join(other, MAIN_FILE))
        with pytest.raises(ResultsFileError, match=f"its {field} is '{value}'.*move the file"):
            search(BUDGETS, _config(), folder=other)
        check_other()
    # Another selection setup: refused, naming what differs.
    with pytest.raises(ResultsFileError, match="selection_images differs"):
        search(BUDGETS, _config(selection_examples=64))
    check()
    # A run that has not finished training.
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(workdir, unfinished, ignore=shutil.ignore_patterns("search"))
    os.remove(os.path.join(unfinished, "results.json"))
    with pytest.raises(WorkdirError, match="no finished training"):
        run_search(open_workdir(unfinished), parse_budgets(BUDGETS), _config())
    assert not os.path.exists(os.path.join(unfinished, "search"))
    # "minival" asked of a run that held none out.
    no_minival = ml_collections.ConfigDict(wd.config.to_dict())
    no_minival.data.minival = 0.0
    with pytest.raises(ValueError, match="held no minival.*selection_split=train"):
        selection_split(dataclasses.replace(wd, config=no_minival), "minival")


def test_train_selection_split_is_a_fixed_sample_of_the_training_split(wd):
    scorer = ChildScorer(wd, resolve_search_config(_config(selection_split="train"), wd.space,
                                                   wd.config))  # fmt: skip
    assert scorer.describe()["selection_split"] == "train" and scorer.num_selection == 96
    labels = np.concatenate([b["label"].numpy() for b in scorer.selection_data(16)])
    again = ChildScorer(wd, resolve_search_config(_config(selection_split="train"), wd.space,
                                                  wd.config))  # fmt: skip
    labels2 = np.concatenate([b["label"].numpy() for b in again.selection_data(16)])
    assert len(labels) == 96 and np.array_equal(labels, labels2)
    assert len(set(labels.tolist())) >= 8  # a random sample, not the first class
