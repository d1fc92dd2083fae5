"""`selection.json` typed and checked, the one BN-statistics merge, the search's
workdir lock and the run report's escaping, on the tiny trained run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from tf_bignas.chain import report as chain_report
from tf_bignas.common.files import atomic_write_json
from tf_bignas.model.bn_stats import BNStatsStore, merge_bn_stats
from tf_bignas.run.budget import Budget, BudgetError, parse_budget_list, parse_budgets
from tf_bignas.run.lock import WorkdirBusyError
from tf_bignas.run.selection import (
    SelectedChild,
    Selection,
    SelectionError,
    read_selection,
    write_selection,
)
from tf_bignas.run.workdir import open_workdir
from tf_bignas.search import default_search_config, run_search
from tf_bignas.space import ArchConfig, get_space

HOSTILE = "x`<img src=x onerror=alert(1)>`` ``<b>"


def _selection(workdir: str = "/runs/a", method: str = "coarse_to_fine") -> Selection:
    space = get_space("bignas_tiny")
    small, large = space.smallest(16), space.largest(32)
    return Selection(
        workdir=workdir,
        weights_digest="0123456789abcdef",
        space=space.name,
        method=method,
        selection_split="minival",
        test_split="test",
        num_evaluated=22,
        budgets=(
            SelectedChild(
                Budget("mflops", 0.7), small, 145_100, 20_000, None, 0.25, 0.2, 0.6, method
            ),  # fmt: skip
            SelectedChild(
                Budget("mflops", 10.0),
                large,
                2_900_000,
                90_000,
                None,
                0.5,
                0.4,
                0.9,
                "random",
                warning="above the largest child",
            ),  # fmt: skip
        ),
    )


def test_selection_round_trip_keeps_the_file_format(tmp_path):
    path = str(tmp_path / "selection.json")
    selection = _selection()
    write_selection(path, selection)
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    # The layout the search has always written (existing workdirs still open).
    assert set(raw) == {"format", "workdir", "weights_digest", "space", "method",
                        "selection_split", "test_split", "num_evaluated", "budgets"}  # fmt: skip
    assert set(raw["budgets"][0]) == {"budget", "kind", "limit", "arch", "paper_notation",
                                      "macs", "params", "latency_ms", "metric", "test_top1",
                                      "test_top5", "method", "warning"}  # fmt: skip
    assert raw["budgets"][1]["budget"] == "mflops:10" and raw["budgets"][1]["limit"] == 10.0
    again = read_selection(path, get_space("bignas_tiny"))
    assert again == selection
    assert again.child("mflops:10").warning == "above the largest child"
    assert again.child(Budget("mflops", 0.7)).arch == get_space("bignas_tiny").smallest(16)
    # The int8 ranking's fields and keys of a newer version survive a rewrite.
    raw["rank"], raw["note"] = "int8", {"by": "a newer version"}
    raw["budgets"][0].update(rank="int8", int8_metric=0.24, int8_test_top1=0.2,
                             float_ranked_choice="16 1:1:1", extra_key=[1, 2])  # fmt: skip
    atomic_write_json(path, raw)
    ranked = read_selection(path)
    assert ranked.rank == "int8" and ranked.budgets[0].int8_metric == 0.24
    write_selection(path, ranked)
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == raw


def test_the_search_files_of_a_real_run_read_back_unchanged(trained_workdir, tmp_path):
    # The search's own writer: every file it wrote reads back to the same JSON.
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)  # the search adds to its bn_stats.npz
    wd = open_workdir(workdir)
    config = default_search_config(wd.space)
    config.coarse.resolutions = (16,)
    config.coarse.depth_settings = (0.0, 1.0)
    config.coarse.width_settings = (0.0,)
    config.coarse.kernel_settings = (0.0,)
    config.fine.mutations = 1
    config.selection_examples = 64
    config.test_batches = 1
    folder = os.path.join(workdir, "search")
    out = run_search(wd, parse_budgets("mflops:1,0.3"), config, log=lambda _: None,
                     warn=lambda _: None)  # fmt: skip
    for name in ("selection.json", "selection_coarse_to_fine.json"):
        path = os.path.join(folder, name)
        selection = read_selection(path, wd.space)
        with open(path, encoding="utf-8") as f:
            assert selection.to_dict() == json.load(f)
    assert read_selection(os.path.join(folder, "selection.json")).to_dict() == out.selection
    assert [c.budget.name for c in selection.budgets] == ["mflops:0.3", "mflops:1"]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: "{not json", r"is not readable JSON"),
        (lambda d: [d], r"holds a list, not a selection object"),
        (lambda d: {k: v for k, v in d.items() if k != "budgets"}, r"the key 'budgets' is missing"),
        (lambda d: {**d, "format": 2}, r"format 2 is not supported"),
        (lambda d: _entry(d, arch=None), r"budget mflops:0\.7: arch = None is not an object"),
        (lambda d: _entry(d, arch={"resolution": 16}), r"budget mflops:0\.7: the arch is not"),
        (
            lambda d: _entry(d, arch={**d["budgets"][0]["arch"], "depths": [9, 9, 9]}),
            r"not a valid child of space 'bignas_tiny'",
        ),  # fmt: skip
        (lambda d: _entry(d, budget="mflops:5"), r"disagrees with kind/limit \('mflops:0\.7'\)"),
        (lambda d: _entry(d, kind="gflops"), r"unknown budget kind 'gflops'"),
        (lambda d: _entry(d, limit=-1), r"value -1 in .* is not a positive number"),
        (lambda d: _entry(d, metric="high"), r"metric = 'high' is not a number"),
        (lambda d: _drop(d, "macs"), r"budget mflops:0\.7: the key 'macs' is missing"),
        (
            lambda d: {**d, "budgets": d["budgets"] * 2},
            r"budgets \['mflops:0\.7', 'mflops:10'\] "
            r"appear more than once",
        ),  # fmt: skip
    ],
)
def test_a_corrupt_selection_is_refused_naming_the_file(tmp_path, corrupt, message):
    path = str(tmp_path / "search" / "selection.json")
    os.makedirs(os.path.dirname(path))
    value = corrupt(_selection().to_dict())
    with open(path, "w", encoding="utf-8") as f:
        f.write(value if isinstance(value, str) else json.dumps(value))
    with pytest.raises(SelectionError, match=re.escape(path) + ".*" + message):
        read_selection(path, get_space("bignas_tiny"))


def test_a_missing_selection_says_to_search_first(tmp_path):
    path = str(tmp_path / "selection.json")
    with pytest.raises(SelectionError, match=re.escape(path) + " does not exist: run the search"):
        read_selection(path)
    bad = dataclasses.replace(_selection(), budgets=_selection().budgets[:1] * 2)
    with pytest.raises(SelectionError, match="appear more than once"):
        write_selection(path, bad)  # checked before it is written
    assert not os.path.exists(path)


def _entry(data: dict, **changes) -> dict:
    return {**data, "budgets": [{**data["budgets"][0], **changes}, *data["budgets"][1:]]}


def _drop(data: dict, key: str) -> dict:
    first = {k: v for k, v in data["budgets"][0].items() if k != key}
    return {**data, "budgets": [first, *data["budgets"][1:]]}


def test_one_budget_grammar():
    assert [b.name for b in parse_budget_list("mflops:250,400,params_m:1.5,")] == [
        "mflops:250", "mflops:400", "params_m:1.5"]  # fmt: skip
    assert [b.name for b in parse_budgets("mflops:600,250,250")] == ["mflops:250", "mflops:600"]
    for text, message in (("250", "KIND:V1,V2"), ("mflops:", "KIND:V1,V2"),
                          ("gflops:1", "unknown budget kind 'gflops'"),
                          ("mflops:1,nan", "'nan' .* not a positive number")):  # fmt: skip
        with pytest.raises(BudgetError, match=message):
            parse_budget_list(text)
    # export's spelling is the same grammar, raising export's error
    from tf_bignas.export.children import parse_budget_names
    from tf_bignas.export.errors import ExportError

    assert parse_budget_names("mflops:250,params_m:1.5") == [("mflops", 250.0), ("params_m", 1.5)]
    with pytest.raises(ExportError, match="unknown budget kind 'gflops'"):
        parse_budget_names("gflops:1")


# ---- bn_stats.npz -------------------------------------------------------------------


def test_bn_stats_merge_keeps_every_other_childs_statistics(trained_workdir, tmp_path):
    path = str(tmp_path / "bn_stats.npz")
    shutil.copy(os.path.join(trained_workdir, "bn_stats.npz"), path)
    run = BNStatsStore.load(path)
    before = {a.key: run.get(a) for a in run.archs()}
    assert len(before) >= 2  # the run's largest and smallest child
    stats = run.get(run.archs()[0])
    space = get_space("bignas_tiny")
    new = [space.sample(seed, resolutions=(16,)) for seed in range(8)]
    new = list({a.key: a for a in new if a.key not in before}.values())

    # Concurrent merges (one per thread, each with its own file handle) lose nothing.
    threads = [threading.Thread(target=merge_bn_stats, args=(path, {a: stats})) for a in new]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = BNStatsStore.load(path)
    assert {a.key for a in merged.archs()} == set(before) | {a.key for a in new}
    for key, old in before.items():  # the run's own children, bit for bit
        got = merged.get(ArchConfig.from_json(key))
        assert set(got) == set(old)
        for name in old:
            np.testing.assert_array_equal(got[name][0], old[name][0])
            np.testing.assert_array_equal(got[name][1], old[name][1])
    assert merge_bn_stats(str(tmp_path / "new.npz"), {new[0]: stats}) == 1

    # A file that is not a store is left alone, named.
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=re.escape(str(broken)) + " is not a readable BN"):
        merge_bn_stats(str(broken), {new[0]: stats})
    assert broken.read_bytes() == b"not a zip"


# ---- the search's workdir lock -------------------------------------------------------------

# Holds a workdir's lock until its stdin closes.
_HOLD = """
import sys
from tf_bignas.run.lock import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_search_on_a_locked_workdir_is_refused_naming_the_pid(trained_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    wd = open_workdir(workdir)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=rf"in use by another run: pid {holder.pid} "):
            run_search(wd, parse_budgets("mflops:1"), default_search_config(wd.space),
                       log=lambda _: None)  # fmt: skip
    finally:
        holder.communicate(timeout=60)  # closes its stdin: it releases the lock and ends
    assert not os.path.exists(os.path.join(workdir, "search"))  # nothing evaluated or written
    assert not os.path.exists(os.path.join(workdir, "run.lock"))


# ---- the run report --------------------------------------------------------------------------


def _strip_code_spans(line: str) -> str:
    """The line without its CommonMark code spans (a run of N backticks to the next run of N)."""
    out, i = [], 0
    while i < len(line):
        run = re.match(r"`+", line[i:])
        if run and (i == 0 or line[i - 1] != "\\"):
            n = len(run.group())
            close = next(
                (m for m in re.finditer(r"`+", line[i + n :]) if len(m.group()) == n), None
            )
            if close is not None:
                out.append("CODE")
                i += n + close.end()
                continue
            out.append(run.group())
            i += n
            continue
        out.append(line[i])
        i += 1
    return "".join(out)


def test_report_shows_hostile_names_as_text_never_as_html(trained_workdir, tmp_path):
    workdir = str(tmp_path / HOSTILE / "run")
    shutil.copytree(trained_workdir, workdir)
    config_path = os.path.join(workdir, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["data"]["source"] = "folder:/data/" + HOSTILE
    atomic_write_json(config_path, config)
    write_selection(os.path.join(workdir, "search", "selection.json"),
                    _selection(workdir=workdir, method="c2f" + HOSTILE))  # fmt: skip
    card = {
        "accuracy": {"fp32": {"top1": 0.5}, "int8": {"top1": HOSTILE}},
        "files": {"fp32": {"file": "model_fp32.tflite", "bytes": 4096}},
        "latency": [
            {"target": "host", "device": HOSTILE, "threads": 4, "delegate": "xnnpack",
             "format": "fp32", "median_ms": 0.5},
            {"target": "host", "device": "cpu", "threads": 1, "delegate": "xnnpack",
             "format": "fp32", "median_ms": 1.25},
        ],
    }  # fmt: skip
    atomic_write_json(os.path.join(workdir, "export", "mflops_0.7", "model_card.json"), card)

    table = chain_report.write_report(workdir)
    with open(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
        markdown = f.read()
    assert "1.250" in table  # the 1-thread host median, from the card's list of entries
    for line in markdown.splitlines():
        outside = _strip_code_spans(line)
        assert not re.search(r"(?<!\\)<", outside), f"raw HTML in report.md: {line!r}"
        assert "<img" not in outside.replace("\\<img", "")
    assert HOSTILE.split("`")[1] in markdown  # shown, inside code spans or escaped
    assert "onerror=alert\\(1\\)" in markdown  # the int8 "accuracy": escaped text
    with open(os.path.join(workdir, "report.html"), encoding="utf-8") as f:
        page = f.read()
    assert "onerror=alert(1)&gt;" in page
    tags = re.findall(r"<img[^>]*>", page)
    assert tags and all(t.startswith('<img alt="') and "data:image/png;base64," in t for t in tags)
    assert not re.search(r"<[^>]*onerror", page) and "<b>" not in page
