"""Runs `python -m tools.inspect_data` as users do, on real images."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("isolated_index_cache")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.inspect_data", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_inspect_folder_json(image_folder):
    proc = _run(
        f"--source={image_folder.spec}",
        "--split=train",
        "--resolutions=16,24",
        "--num_batches=2",
        "--batch_size=4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images_per_class"] == image_folder.train_counts
    assert report["num_examples"] == 15 and report["num_classes"] == 3
    assert report["skipped"]["count"] == 1
    assert [f["path"] for f in report["skipped"]["files"]] == [str(image_folder.corrupt)]
    assert report["batches"] == 2
    assert report["batch_shapes"] == {"16": [4, 16, 16, 3], "24": [4, 24, 24, 3]}
    assert report["label_shape"] == [4]
    assert str(image_folder.corrupt) in proc.stderr  # The warning names the file.


def test_inspect_embedded_eval_split_json():
    proc = _run("--source=embedded", "--split=test", "--resolutions=16,32", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["num_examples"] == 1000
    assert report["images_per_class"] == {str(d): 100 for d in range(10)}
    assert report["skipped"] == {"count": 0, "files": []}
    assert report["batch_shapes"] == {"16": [8, 16, 16, 3], "32": [8, 32, 32, 3]}


def test_inspect_reports_bad_input(tmp_path):
    proc = _run(f"--source=folder:{tmp_path / 'missing'}", "--json")
    assert proc.returncode == 2
    assert str(tmp_path / "missing") in proc.stderr and "does not exist" in proc.stderr
    proc = _run("--source=embedded", "--space=bignas_tiny", "--resolutions=24", "--json")
    assert proc.returncode == 2 and "resolution 24" in proc.stderr
