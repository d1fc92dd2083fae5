"""End to end: the chain of stages on the embedded digits, its resume and its errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tf_bignas.chain import ChainError, run_chain
from tf_bignas.search.config import default_search_config
from tf_bignas.space import get_space


def _small_search():
    c = default_search_config(get_space("bignas_tiny"))
    c.coarse.resolutions = (16, 32)
    c.coarse.depth_settings = (0.0, 1.0)
    c.coarse.kernel_settings = (0.0, 1.0)
    c.fine.mutations = 2
    c.selection_examples = 128
    c.calibration_images = 128
    c.calibration_batch_size = 64
    return c


def test_the_chain_trains_searches_exports_benchmarks_and_reports(trained_workdir, tmp_path):
    from conftest import quickstart_config

    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)  # training is complete: the chain skips it
    config = quickstart_config(
        chain__budgets="mflops:0.7,3",
        chain__verify_examples=64,
        # A 48-step model has many near ties, which int8 flips (measured 0.875 on
        # 64 images in one CI run); the quickstart keeps the default 0.9.
        chain__int8_min_agreement=0.5,
        chain__benchmark_runs=3,
        train__batch_size=16,
        train__epochs=48 * 16 / 3800,
        train__calibration_images=64,
        train__calibration_batch_size=16,
        train__eval_batches=8,
        data__minival=200,
    )
    lines = []
    result = run_chain(config, workdir, search_config=_small_search(), log=lines.append)
    assert result.stages == {
        "train": "already complete",
        "search": "done now",
        "export": "done now",
        "benchmark": "done now",
        "report": "done now",
    }
    selection = json.loads(open(f"{workdir}/search/selection.json").read())
    assert [b["budget"] for b in selection["budgets"]] == ["mflops:0.7", "mflops:3"]
    for entry in selection["budgets"]:
        assert entry["macs"] <= entry["limit"] * 1e6
        folder = os.path.join(workdir, "export", entry["budget"].replace(":", "_"))
        card = json.loads(open(f"{folder}/model_card.json").read())
        assert {"fp32", "int8"} <= set(card["latency"]["host"])
        assert card["paper_notation"] == entry["paper_notation"]
    report = open(f"{workdir}/report.md").read()
    for entry in selection["budgets"]:
        assert f"| {entry['budget']} | `{entry['paper_notation']}` |" in report
    assert "search/pareto.png" in report and "training_curves.png" in report
    html = open(f"{workdir}/report.html").read()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert os.path.getsize(f"{workdir}/training_curves.png") > 5000

    again = run_chain(config, workdir, search_config=_small_search(), log=lines.append)
    assert set(again.stages.values()) == {"already complete", "done now"}
    assert again.stages["report"] == "done now"
    assert [again.stages[s] for s in ("train", "search", "export", "benchmark")] == [
        "already complete"
    ] * 4


def test_a_failing_stage_is_named_with_the_command_that_resumes(trained_workdir, tmp_path):
    from conftest import quickstart_config

    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    config = quickstart_config(chain__budgets="mflops:0.01")  # below the smallest child
    with pytest.raises(ChainError, match=r"stage 'search' failed: .*0\.01.*resume with: CMD"):
        run_chain(config, workdir, search_config=_small_search(), resume_command="CMD")
