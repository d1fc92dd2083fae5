"""End-to-end tests of `python -m pipelines.train` on the quickstart config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_bignas.model import BNStatsStore, Supernet
from tf_bignas.run.workdir import open_workdir
from tf_bignas.train.step import available_cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--config=configs/quickstart.py",
    "--config.train.batch_size=16",
    "--config.runtime.deterministic=True",
]


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "pipelines.train", f"--workdir={workdir}", *FAST, *extra]


def _run(workdir, *extra, timeout=300):
    return subprocess.run(
        _cmd(workdir, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _variables(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    names = sorted(
        n
        for n in reader.get_variable_to_shape_map()
        if (n.startswith("model/") or n.startswith("optimizer/")) and "OBJECT_CONFIG" not in n
    )
    return {n: reader.get_tensor(n) for n in names}


def test_unknown_config_key_is_an_error(tmp_path):
    out = _run(tmp_path / "w", "--config.train.bogus_key=3")
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith(
        "train.py: error: unknown option train.bogus_key (from --config.train.bogus_key);"
    )
    assert "options of train: batch_size," in errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


def test_sigkill_and_restart_equals_an_uninterrupted_run(tmp_path):
    steps = [
        "--max_steps=12",
        "--config.train.checkpoint_every=1",
        "--config.train.log_every=1",
        "--config.runtime.child_lanes=0",  # one lane per core (the quickstart keeps 1)
    ]
    straight = tmp_path / "straight"
    out = _run(straight, *steps)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 12/12" in out.stdout
    # A fresh run's first step runs op by op (runtime.eager_first_step), then the trace.
    lines = out.stdout.splitlines()
    first = next(i for i, x in enumerate(lines) if x.startswith("first step, op by op, in "))
    assert lines[first + 1].startswith("training step: traced")
    # On a CPU host its children run at the same time, one lane per core
    # (runtime.child_lanes); the config's runtime.threads sizes the pools.
    lanes = min(available_cores(), 4)
    assert "threads: 2 per op, 2 op threads (runtime.threads=2)" in lines
    want = f"in {lanes} lanes at the same time" if lanes > 1 else "one after another"
    assert f"children of a step: 4, {want}" in lines
    config = json.loads((straight / "config.json").read_text())
    assert config["train"]["batch_size"] == 16 and config["runtime"]["deterministic"] is True
    assert tf.train.latest_checkpoint(str(straight / "checkpoints")).endswith("ckpt-12")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(killed, *steps), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    index = killed / "checkpoints" / "checkpoint"
    deadline = time.time() + 240
    while not index.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted_at = tf.train.latest_checkpoint(str(killed / "checkpoints"))
    assert interrupted_at is not None and not interrupted_at.endswith("ckpt-12")

    out = _run(killed, *steps)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout
    assert "op by op" not in out.stdout  # a resume starts with the compiled step
    a, b = _variables(straight), _variables(killed)
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "nan"
    out = _run(
        workdir,
        "--max_steps=40",
        "--config.train.checkpoint_every=1",
        "--config.train.log_every=1",
        "--config.optimizer.base_lr=1e35",
        "--config.optimizer.initial_accumulator=0.0",
        # Step 1 leaves weights of ~5e30: let them count as bounded, so that the
        # run reaches the non-finite loss of step 2 (the default bound, 1e6,
        # would stop it at step 1; tests/test_workdir_integrity.py checks that).
        "--config.train.max_abs_weight=1e31",
    )
    assert out.returncode == 2
    assert "non-finite loss" in out.stderr and "child" in out.stderr
    logged = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("step ")]
    assert logged[-1] == "1/40"  # the error names the next step, in the log's numbering
    assert "at step 2 in the" in out.stderr
    assert f"last good checkpoint is {workdir / 'checkpoints' / 'ckpt-1'}" in out.stderr
    for name, value in _variables(workdir).items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name


def test_a_finished_run_reports_calibrated_accuracies(tmp_path):
    workdir = tmp_path / "done"
    out = _run(
        workdir,
        "--config.train.epochs=0.02",  # 5 steps of 16 digits
        "--config.train.calibration_images=40",
        "--config.train.calibration_batch_size=16",
        "--config.train.eval_every=2",
        "--config.train.eval_batches=4",
        "--config.optimizer.ema=True",
        # No warmup and the full LR at this batch: the raw weights move away from
        # their average, so the EMA check below can tell them apart.
        "--config.schedule.warmup_epochs=0",
        "--config.optimizer.reference_batch=16",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 2 eval largest top1" in out.stdout and "step 4 eval" in out.stdout
    assert "largest child: top1" in out.stdout and "smallest child: top1" in out.stdout
    assert "EMA weights, BN calibrated on 40 training images" in out.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["children"]) == {"largest", "smallest"}
    assert results["weights"] == "ema" and results["ema_decay"] == 0.9999
    assert results["calibration"] == {"split": "train", "images": 40, "batch_size": 16, "seed": 0}
    for child in results["children"].values():
        assert child["num_examples"] == 64  # eval_batches=4 of 16
        assert 0.0 <= child["top1"] <= child["top5"] <= 1.0
    store = BNStatsStore.load(str(workdir / "bn_stats.npz"))
    assert len(store) == 2
    assert (workdir / "supernet.weights.h5").exists()
    assert any(p.name.startswith("events") for p in (workdir / "tensorboard").iterdir())
    # The last checkpoint, opened as an unfinished run, gives the EMA weights too.
    partial = tmp_path / "partial"
    shutil.copytree(workdir, partial)
    os.remove(partial / "supernet.weights.h5")
    final = open_workdir(str(workdir)).supernet.trainable_variables
    restored = open_workdir(str(partial), allow_unfinished=True).supernet.trainable_variables
    assert max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(final, restored)) < 1e-6
    raw = Supernet.from_config(open_workdir(str(workdir)).supernet.get_config())
    latest = tf.train.latest_checkpoint(str(partial / "checkpoints"))
    tf.train.Checkpoint(model=raw).restore(latest).expect_partial()
    assert (
        max(
            float(np.max(np.abs(a.numpy() - b.numpy())))
            for a, b in zip(final, raw.trainable_variables)
        )
        > 1e-4
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategy=tpu"], "use --config.model.mode=mask"),
        (["--strategy=tpu", "--config.model.mode=mask"], "no TPU found"),
        (["--config.data.source=folder:/nonexistent/data"], "/nonexistent/data"),
    ],
)
def test_bad_runtime_input_is_a_clear_error(tmp_path, flags, message):
    out = _run(tmp_path / "w", *flags, "--max_steps=1")
    assert out.returncode != 0
    assert "error:" in out.stderr and message in out.stderr
    if "--strategy=tpu" in flags:
        assert not (tmp_path / "w").exists()  # rejected before anything was written
