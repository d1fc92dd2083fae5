"""Tests of the tools.arch_info command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tf_bignas.model import cost
from tf_bignas.space import bignas_mobilenetv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = "256 1:2:2:2:4:4:1 32:16:24:48:88:128:216:352:1408 3:3:5:3:5:5:3"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.arch_info", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_for_largest_smallest_paper_and_file(tmp_path):
    space = bignas_mobilenetv2()
    arch_file = tmp_path / "child.json"
    child = space.sample(3)
    arch_file.write_text(child.to_json(indent=2))
    cases = {
        "largest": space.largest(),
        "smallest": space.smallest(),
        PAPER: bignas_mobilenetv2().from_paper_notation(256, *PAPER.split()[1:]),
        str(arch_file): child,
    }
    for spec, arch in cases.items():
        out = _run(f"--arch={spec}", "--json")
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["resolution"] == arch.resolution
        assert info["macs"] == cost.macs(space, arch)
        assert info["params"] == cost.params(space, arch)
        assert sum(s["macs"] for s in info["stages"]) == info["macs"]


def test_table_and_errors():
    out = _run("--arch=smallest")
    assert out.returncode == 0
    assert "217.6 M" in out.stdout and "stage7" in out.stdout
    bad = _run("--arch=256 1:2:2:2:4:4:1 32:16:24:48:88:128:216:352:1404 3:3:5:3:5:5:3")
    assert bad.returncode != 0
    assert "widths[8] (head) = 1404 is not allowed" in bad.stderr
    assert "1408" in bad.stderr
    missing = _run("--arch=/nonexistent/arch.json")
    assert missing.returncode != 0 and "cannot read arch" in missing.stderr
