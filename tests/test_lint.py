"""`ruff check` and `ruff format --check` pass over the whole repository.

Ruff comes from requirements-dev.txt; its settings are in pyproject.toml.
Files that git ignores (.venv/, workdirs/, ...) are not linted.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    """Runs the ruff of this interpreter's environment over the repository, without a cache."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,fix",
    [
        (("check", "--output-format=concise"), "ruff check --fix ."),
        (("format", "--check"), "ruff format ."),
    ],
    ids=["check", "format"],
)
def test_ruff(args, fix):
    proc = _ruff(*args)
    assert proc.returncode == 0, (
        f"`ruff {' '.join(args)}` failed (exit {proc.returncode}; `{fix}` fixes most of it):\n"
        f"{proc.stdout}{proc.stderr}"
    )
