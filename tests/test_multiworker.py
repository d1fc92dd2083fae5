"""MultiWorkerMirroredStrategy across two processes on this machine (localhost only).

Two worker processes (TF_CONFIG on loopback ports, one CPU thread each) train
the same weights as one process with the same two replicas (MirroredStrategy
over two logical CPUs, the strategy that tests/test_distributed.py checks
against one device), and a run whose worker is killed reports it
clearly and resumes from the chief's last checkpoint when started again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 8
STEPS = 3


def fixed_batches() -> dict:
    """STEPS global batches of embedded digits, stacked: {"images": {res: ...}, "label": ...}."""
    from tf_bignas.data import build_train_dataset
    from tf_bignas.space import get_space

    space = get_space("bignas_tiny")
    ds = build_train_dataset(
        "embedded", "train", space.train_resolutions, GLOBAL_BATCH, augment="none", seed=1
    )
    raw = [b for b, _ in zip(ds, range(STEPS))]
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *raw)


def build(strategy: tf.distribute.Strategy):
    """The supernet and its sandwich step, the same in every process."""
    from tf_bignas.model import Supernet
    from tf_bignas.run.optimizers import RMSpropTF
    from tf_bignas.space import get_space
    from tf_bignas.train.step import SandwichOptions, SandwichStep

    with strategy.scope():
        keras.utils.set_random_seed(0)
        net = Supernet(get_space("bignas_tiny"), 10)
        opt = RMSpropTF(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
        step = SandwichStep(net, opt, SandwichOptions(), GLOBAL_BATCH, strategy)
    return net, step


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_two_workers_train_the_same_weights_as_one_process(tmp_path):
    ports = ",".join(map(str, _free_ports(2)))
    script = os.path.join(ROOT, "tests", "multiworker_check.py")
    runs = {"w0": ["0", ports], "w1": ["1", ports], "one": ["mirrored", "-"]}
    procs = {
        name: subprocess.Popen(
            [sys.executable, script, *args, str(tmp_path / f"{name}.npz")],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip  (little output: TF_CPP_MIN_LOG_LEVEL=2)
        for name, args in runs.items()
    }
    for name, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{name}: {err[-3000:]}"
        result = json.loads(out.strip().splitlines()[-1])
        assert result["replicas"] == 2
        assert not result["unrolled"]  # the children's loop, as on one device
    weights = {}
    for name in runs:
        with np.load(tmp_path / f"{name}.npz") as f:
            weights[name] = [f[k] for k in sorted(f.files, key=lambda k: int(k[4:]))]
    net, _ = build(tf.distribute.get_strategy())  # the initial weights
    start = [v.numpy() for v in net.trainable_variables]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(start, weights["one"])) > 1e-3
    for name in ("w0", "w1"):
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["one"], weights[name]))
        assert diff <= 1e-5, name


def _train_cmd(workdir, *extra):
    return [
        sys.executable, "-m", "pipelines.train", "--config=configs/quickstart.py",
        f"--workdir={workdir}", "--strategy=multi_worker", "--config.train.batch_size=8",
        "--config.train.checkpoint_every=1", "--config.train.log_every=1",
        "--config.runtime.threads=1", "--max_steps=6", *extra,
    ]  # fmt: skip


def _launch(workdir, ports, logs):
    """Starts the two workers; their output goes to files in `logs` (no pipe can fill up)."""
    procs = []
    for i in range(2):
        config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                  "task": {"type": "worker", "index": i}}  # fmt: skip
        procs.append(
            subprocess.Popen(
                _train_cmd(workdir),
                cwd=ROOT,
                env=_env(TF_CONFIG=json.dumps(config)),
                stdout=open(logs / f"out{i}.txt", "w"),  # noqa: SIM115 - the child owns it
                stderr=open(logs / f"err{i}.txt", "w"),  # noqa: SIM115
            )
        )
    return procs


def test_a_killed_worker_is_reported_and_the_run_resumes(tmp_path):
    workdir = tmp_path / "run"
    first = tmp_path / "first"
    first.mkdir()
    chief, worker = _launch(workdir, _free_ports(2), first)
    # Kill worker 1 once the chief has a checkpoint (the run is then mid-way).
    index = workdir / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while not index.exists() and chief.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert chief.poll() is None, (first / "err0.txt").read_text()[-3000:]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    try:
        chief.wait(timeout=120)
    except subprocess.TimeoutExpired:
        chief.kill()
        pytest.fail("the chief did not notice the killed worker within 120 s")
    err = (first / "err0.txt").read_text()
    assert chief.returncode == 2, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert "another worker died or became unreachable" in message, message
    assert "worker 0 of 2" in message and "resumes from the chief's last checkpoint" in message
    saved = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert saved is not None and not saved.endswith("ckpt-6")
    assert saved.rsplit("/", 1)[-1] in message

    again = tmp_path / "again"
    again.mkdir()
    chief, worker = _launch(workdir, _free_ports(2), again)
    chief.wait(timeout=600)
    worker.wait(timeout=600)
    out = (again / "out0.txt").read_text()
    assert chief.returncode == 0, (again / "err0.txt").read_text()[-3000:]
    assert worker.returncode == 0, (again / "err1.txt").read_text()[-3000:]
    assert f"resumed from {saved}" in out
    assert "step 6/6" in out
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-6")
    # The non-chief worker wrote nothing into the workdir.
    assert not list(workdir.glob("**/*worker*"))
