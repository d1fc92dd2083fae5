"""End to end: the chain of stages on the embedded digits, its resume and its errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tf_bignas.chain import ChainError, run_chain
from tf_bignas.chain.run import benchmark_stage
from tf_bignas.common.files import atomic_write_json
from tf_bignas.export.options import ExportOptions, Thresholds
from tf_bignas.run.card import find_latency, read_card
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


def _chain_config():
    from conftest import quickstart_config

    return quickstart_config(
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


@pytest.fixture(scope="module")
def chained(trained_workdir, tmp_path_factory):
    """The chain run once on a copy of the trained run: (workdir, config, result, lines)."""
    workdir = str(tmp_path_factory.mktemp("chain") / "run")
    shutil.copytree(trained_workdir, workdir)  # training is complete: the chain skips it
    config = _chain_config()
    lines = []
    result = run_chain(config, workdir, search_config=_small_search(), log=lines.append)
    return workdir, config, result, lines


def test_the_chain_trains_searches_exports_benchmarks_and_reports(chained):
    workdir, config, result, lines = chained
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
        assert {"fp32", "int8"} <= {e["format"] for e in find_latency(card, target="host")}
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


def _drop_host_latency(folder: str) -> None:
    card = read_card(folder)
    card["latency"] = [e for e in find_latency(card) if e.get("target") != "host"]
    atomic_write_json(os.path.join(folder, "model_card.json"), card)


def test_the_benchmark_skips_a_swapped_file_naming_it(chained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(chained[0], workdir)
    export = os.path.join(workdir, "export")
    swapped_folder, other = os.path.join(export, "mflops_0.7"), os.path.join(export, "mflops_3")
    swapped = os.path.join(swapped_folder, "model_int8.tflite")
    shutil.copy(os.path.join(swapped_folder, "model_fp32.tflite"), swapped)  # a file swapped
    for folder in (swapped_folder, other):
        _drop_host_latency(folder)  # both children need timing again

    lines = []
    assert benchmark_stage(export, threads=1, runs=3, log=lines.append) == (
        "done now (1 file(s) skipped)"
    )
    skipped = [line for line in lines if "skipped, not timed" in line]
    assert len(skipped) == 1 and swapped in skipped[0] and "has sha256" in skipped[0]
    assert "\n" not in skipped[0]
    timed = {e["format"] for e in find_latency(read_card(other), target="host")}
    assert {"fp32", "int8"} <= timed  # the other child's verified files are timed
    # The swapped file is never timed (and host_benchmark times a folder's files
    # together, so its siblings wait until it is restored, saying so).
    assert not find_latency(read_card(swapped_folder), target="host")
    assert any("not timing" in line and "model_int8.tflite differs" in line for line in lines)
    lines.clear()
    original = os.path.join(chained[0], "export", "mflops_0.7", "model_int8.tflite")
    shutil.copy(original, swapped)  # restored: it verifies again and is timed
    assert benchmark_stage(export, threads=1, runs=3, log=lines.append) == "done now"
    assert not [line for line in lines if "skipped" in line]
    assert find_latency(read_card(swapped_folder), target="host", format="int8")


def test_a_failing_stage_is_named_with_the_command_that_resumes(trained_workdir, tmp_path):
    from conftest import quickstart_config

    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    config = quickstart_config(chain__budgets="mflops:0.01")  # below the smallest child
    with pytest.raises(ChainError, match=r"stage 'search' failed: .*0\.01.*resume with: CMD"):
        run_chain(config, workdir, search_config=_small_search(), resume_command="CMD")


def test_the_readme_python_example_runs_on_the_chains_workdir(chained, capsys):
    """README.md's "Python API" block, run as written on the chain's workdir."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 8
    workdir = chained[0]
    code = code.replace("workdirs/quickstart", workdir).replace("mflops:1.5", "mflops:0.7")
    # The chain's export options (a 48-step model needs its lowered int8 threshold),
    # so the example finds the chain's files verified and reuses them, as on the
    # main job's workdir.
    ch = chained[1].chain
    options = ExportOptions(
        quantizations=tuple(q for q in ch.quantize.split(",") if q),
        verify_examples=ch.verify_examples or None,
        thresholds=Thresholds(int8_min_agreement=ch.int8_min_agreement),
    )
    assert code.count('/export").folder') == 1
    code = code.replace('/export").folder', '/export", OPTIONS).folder')
    exec(compile(code, "README.md", "exec"), {"OPTIONS": options})  # noqa: S102
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    predicted, labels = re.findall(r"\[([^\]]*)\]", printed)
    assert len(predicted.split()) == 4 and len(labels.split()) == 4
    assert all(0 <= int(x) < 10 for x in predicted.split() + labels.split())
    # The example's load_tflite refuses a file that differs from its card.
    import tf_bignas as tb
    from tf_bignas.run.card import FileDigestError

    child = tb.child_for_budget(tb.open_workdir(workdir), "mflops:0.7")
    folder = os.path.join(workdir, "export", child.name)
    int8 = os.path.join(folder, "model_int8.tflite")
    saved = open(int8, "rb").read()
    try:
        shutil.copyfile(os.path.join(folder, "model_fp32.tflite"), int8)
        with pytest.raises(FileDigestError, match="model_int8.tflite has sha256"):
            tb.load_tflite(int8)
    finally:
        with open(int8, "wb") as f:
            f.write(saved)
