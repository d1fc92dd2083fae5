"""Synchronized BN under MirroredStrategy equals one device with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mirrored_two_cpus_with_sync_bn_matches_one_device():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "distributed_check.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["max_weight_change"] > 1e-3  # training really moved the weights
    assert result["max_weight_diff"] <= 1e-5
    # Calibration is aggregated across replicas: the same statistics as one device.
    assert result["max_stat_diff"] <= 1e-5 * max(1.0, result["max_stat"])
