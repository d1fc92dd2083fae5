"""The programs end a mistake on the command line with one line on stderr and exit code 2.

Each case fails before any training or search starts, so every run costs only
the program's start-up (TensorFlow's import).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import write_quickstart_variant

from tools import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = "--config=configs/quickstart.py"


def _run(module: str, *args: str) -> tuple[int, str, str]:
    """(exit code, the one `error:` line, stderr) of `python -m module args`."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # TensorFlow's start-up log lines aside, the error is the only line naming "error:".
    errors = [line for line in out.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stdout == "", out.stdout[-2000:]  # no usage dump
    return out.returncode, errors[0], out.stderr


def test_a_misspelt_key_on_the_command_line(tmp_path):
    code, line, _ = _run(
        "pipelines.train", QUICKSTART, f"--workdir={tmp_path / 'w'}", "--config.train.epoch=3"
    )
    assert code == 2
    assert line.startswith(
        "train.py: error: unknown option train.epoch (from --config.train.epoch); "
        "did you mean train.epochs? options of train: batch_size, "
    )
    assert "\\n" not in line and "AttributeError" not in line
    assert not (tmp_path / "w").exists()


def test_a_stray_positional_argument(tmp_path):
    code, line, stderr = _run("pipelines.train", QUICKSTART, f"--workdir={tmp_path}", "extra")
    assert code == 2
    assert line == (
        "train.py: error: unexpected argument 'extra': train.py takes only flags "
        "(--name=value); see --help"
    )
    assert "--workdir: Output folder" not in stderr  # not absl's usage


def test_a_config_file_with_a_misspelt_key(tmp_path):
    path = write_quickstart_variant(tmp_path / "typo.py", "c.model.spce = 'bignas_tiny'")
    code, line, _ = _run("pipelines.train", f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert code == 2
    assert line.startswith(
        f"train.py: error: unknown option model.spce (from --config={path}); "
        "did you mean model.space? options of model: bn_epsilon, "
    )
    assert not (tmp_path / "w").exists()


def test_search_names_a_misspelt_key_and_the_latency_flags(tmp_path):
    code, line, _ = _run(
        "pipelines.search",
        f"--workdir={tmp_path}",
        "--budgets=mflops:1",
        "--config.fine.mutatons=3",
    )
    assert code == 2
    assert line == (
        "search.py: error: unknown option fine.mutatons (from --config.fine.mutatons); "
        "did you mean fine.mutations? options of fine: mutation_size, mutations"
    )
    code, line, _ = _run("pipelines.search", f"--workdir={tmp_path}", "--budgets=latency_ms:5")
    assert code == 2
    assert "--latency_table" in line and "--measure_latency" in line


def test_a_message_is_printed_as_one_line_without_control_characters(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog.py"])
    with pytest.raises(SystemExit) as e:
        cli.fail("bad \x1b[31mred\x1b[0m\nsecond line\x07\tend")
    assert e.value.code == 2
    assert capsys.readouterr().err == "prog.py: error: bad [31mred[0m second line end\n"
