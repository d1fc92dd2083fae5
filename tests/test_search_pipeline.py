"""Tests of the `pipelines.search` program and `tools.arch_info --workdir`, on a tiny run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tf_bignas.model import cost as cost_lib
from tf_bignas.space import get_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--config.coarse.resolutions=(16,)",
    "--config.coarse.depth_settings=(0.0,1.0)",
    "--config.coarse.width_settings=(0.0,)",
    "--config.coarse.kernel_settings=(0.0,)",
    "--config.fine.mutations=1",
    "--config.selection_examples=64",
    "--config.test_batches=1",
]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def workdir(trained_workdir, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("search_pipeline") / "run")
    shutil.copytree(trained_workdir, path)
    return path


def test_search_program_writes_the_selection_and_keeps_it_on_bad_input(workdir):
    out = _run("pipelines.search", f"--workdir={workdir}", "--budgets=mflops:0.3,1", *SMALL)
    assert out.returncode == 0, out.stderr
    folder = os.path.join(workdir, "search")
    for name in ("evaluations.jsonl", "selection.json", "pareto.png", "report.md"):
        assert os.path.isfile(os.path.join(folder, name)), name
    with open(os.path.join(folder, "selection.json"), encoding="utf-8") as f:
        selection = json.load(f)
    assert selection["num_evaluated"] == 2 + 2  # 2 skeletons, 1 mutation per budget
    lines = out.stdout.splitlines()
    assert any(line.startswith("[coarse_to_fine] 4/4 children (4 new) | best:") for line in lines)
    assert any("children/minute" in line for line in lines)
    for e in selection["budgets"]:
        assert any(line.startswith(f"  {e['budget']}: {e['paper_notation']}") for line in lines)
        assert e["macs"] / 1e6 <= e["limit"]
    with open(os.path.join(folder, "evaluations.jsonl"), "rb") as f:
        before = f.read()
    # A budget below the smallest child: one line on stderr, exit code 2, nothing lost.
    bad = _run("pipelines.search", f"--workdir={workdir}", "--budgets=mflops:0.05,1", *SMALL)
    assert bad.returncode == 2
    err = [line for line in bad.stderr.splitlines() if "error:" in line]
    assert len(err) == 1
    assert "mflops:0.05 is below the smallest child" in err[0] and ">= 0.1451" in err[0]
    with open(os.path.join(folder, "evaluations.jsonl"), "rb") as f:
        assert f.read() == before


def test_a_second_search_of_a_workdir_is_refused_naming_the_first(workdir):
    # Another process holds the workdir (a search running): the program stops at
    # once, one line naming that process, and writes nothing.
    hold = (
        "import sys\nfrom tf_bignas.run.lock import locked\n"
        "with locked(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, workdir], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    folder = os.path.join(workdir, "search")

    def files() -> dict[str, bytes]:
        return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}

    before = files()
    try:
        assert holder.stdout.readline().strip() == "held"
        out = _run("pipelines.search", f"--workdir={workdir}", "--budgets=mflops:1", *SMALL)
    finally:
        holder.communicate(timeout=60)  # releases the lock
    assert out.returncode == 2
    [line] = [x for x in out.stderr.splitlines() if "error:" in x]
    assert f"in use by another run: pid {holder.pid} " in line
    assert files() == before


def test_arch_info_costs_a_child_of_the_workdirs_space(workdir):
    arch = "16 2:1:2 16:8:24:32:64 5:3:3"
    out = _run("tools.arch_info", f"--workdir={workdir}", f"--arch={arch}", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    tiny = get_space("bignas_tiny")
    child = tiny.load_arch(arch)
    assert info["space"] == "bignas_tiny" and info["num_classes"] == 10
    assert info["macs"] == cost_lib.macs(tiny, child, 10)
    assert info["params"] == cost_lib.params(tiny, child, 10)
