"""The persistent graph cache (`tf_bignas.train.graph_cache`, `runtime.graph_cache_dir`).

Each run is a fresh process (`graph_cache_check.py`), as a resume or the next
run of a sweep would be; TensorFlow's own log says what it did with the cache.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorflow.core.framework import optimized_function_graph_pb2

from tf_bignas.common.files import sha256_path
from tf_bignas.train.graph_cache import (
    CHECKSUM_SUFFIX,
    TF_CACHE_VARIABLE,
    graph_fingerprint,
    optimized_graph_cache,
    traced_graph_digest,
)
from tf_bignas.train.trace_cache import TRACES_DIR

ROOT = pathlib.Path(__file__).resolve().parents[1]
WROTE = "Successfully wrote the optimized Tensorflow graph into cache"
READ = "Successfully restored the Tensorflow optimized graph from the cache"
REMOVED = "has no valid checksum; removed, the graph is optimised again"


def _logged_env() -> dict[str, str]:
    """A child process's environment in which TensorFlow logs what it does with the cache."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TF_CPP_MIN_LOG_LEVEL="0",
        TF_CPP_VMODULE="optimize_function_graph_utils=3",
    )
    env.pop(TF_CACHE_VARIABLE, None)
    return env


def _run(cache: pathlib.Path, num_classes: int, grappler: str = "one_round") -> tuple[dict, str]:
    env = _logged_env()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "graph_cache_check.py"),
            str(cache),
            str(num_classes),
            grappler,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _ops(path: pathlib.Path) -> collections.Counter:
    """How many nodes of each op an optimised graph that TensorFlow cached holds."""
    graph = optimized_function_graph_pb2.OptimizedFunctionGraph.FromString(path.read_bytes())
    return collections.Counter(node.op for node in graph.function_graph.node)


def test_a_later_process_reads_the_graph_back_and_trains_the_same_weights(tmp_path):
    cache = tmp_path / "graphs"
    first, log = _run(cache, 10)
    assert WROTE in log and READ not in log
    graph, checksum = first["entries"]  # <fingerprint>/<job>_<function name>[.sha256]
    assert checksum == graph + CHECKSUM_SUFFIX and len(graph.split(os.sep)[0]) == 32

    assert len(first["stored_traces"]) == 2  # traces/<key>.json, .pb
    assert first["traces"] == 1

    # The second process loads the trace (it traces nothing) and reads the graph.
    second, log = _run(cache, 10)
    assert READ in log and WROTE not in log
    assert second["entries"] == first["entries"]
    assert second["stored_traces"] == first["stored_traces"]
    assert second["losses"] == first["losses"]  # bit for bit
    assert second["traces"] == 0

    # The same trace optimised by TensorFlow's default Grappler (two rounds)
    # instead of the step's one round: another graph under the same function
    # name, so its own entry, never the first one's; and the same graph op for
    # op, so the same losses bit for bit (ONE_ROUND_GRAPH_PASSES reaches what
    # the default reaches).
    other, log = _run(cache, 10, "default")
    assert READ not in log and WROTE in log
    assert len(other["entries"]) == 4 and set(first["entries"]) < set(other["entries"])
    assert other["stored_traces"] == first["stored_traces"] and other["traces"] == 0
    assert other["losses"] == first["losses"]
    (default_graph,) = {
        e for e in set(other["entries"]) - set(first["entries"]) if not e.endswith(CHECKSUM_SUFFIX)
    }
    one_round_ops, default_ops = _ops(cache / graph), _ops(cache / default_graph)
    assert one_round_ops == default_ops
    # Training's swishes are native kernels, the same op by op and compiled:
    # no Sigmoid and Mul are left for the remapper to fuse into oneDNN's swish
    # (the default's second round did that before 2026-12-08).
    assert one_round_ops["BignasSwish"] > 0 and one_round_ops["BignasBatchNorm"] > 0
    assert one_round_ops["_MklSwish"] == 0

    # A damaged file (TensorFlow would read it as an empty graph and fail): it
    # is removed, the graph optimised and written again; the same training.
    path = cache / graph
    path.write_bytes(path.read_bytes()[:1000])
    again, log = _run(cache, 10)
    assert REMOVED in log and WROTE in log and READ not in log
    assert again["losses"] == first["losses"] and again["traces"] == 0
    assert (cache / checksum).read_text() == sha256_path(str(path), 64)

    # A damaged trace is removed and traced again: tests/test_trace_cache.py.


def test_a_resumed_training_run_reads_the_graph_its_first_part_wrote(tmp_path):
    workdir = tmp_path / "run"

    def train(steps: int) -> str:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.train",
                "--config=configs/quickstart.py",
                f"--workdir={workdir}",
                f"--max_steps={steps}",
                # The default space: its step takes TensorFlow over 3 s to optimise.
                "--config.model.space=bignas_mobilenetv2",
                "--config.model.train_resolutions=32",
                "--config.model.resolutions=32",
                "--config.train.batch_size=4",
                "--config.train.eval_every=0",
                "--config.train.eval_batches=1",
                "--config.train.calibration_images=8",
                "--config.train.calibration_batch_size=8",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=_logged_env(),
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    log = train(2)
    assert WROTE in log and READ not in log
    assert "training step: traced and stored in the trace cache" in log
    log = train(4)
    assert "resumed from" in log and READ in log and WROTE not in log
    assert "training step: trace loaded from the trace cache" in log
    cache = workdir / "graph_cache"
    (entry,) = set(os.listdir(cache)) - {TRACES_DIR}
    (graph, checksum) = sorted(os.listdir(cache / entry))
    assert checksum == graph + CHECKSUM_SUFFIX
    assert len(os.listdir(cache / TRACES_DIR)) == 2  # one trace: the resume loaded it


def _traced(scale: float) -> str:
    fn = tf.function(lambda x: x * scale)
    return traced_graph_digest(fn.get_concrete_function(tf.TensorSpec([None], tf.float32)))


def test_fingerprint_follows_the_graph():
    a, b = _traced(2.0), _traced(3.0)
    assert graph_fingerprint(a) == graph_fingerprint(a) and len(a) == 64
    assert graph_fingerprint(a) != graph_fingerprint(b)


def test_cache_variable_is_set_inside_the_block_only(tmp_path, monkeypatch):
    monkeypatch.setenv(TF_CACHE_VARIABLE, "/elsewhere")
    digest = _traced(2.0)
    with optimized_graph_cache(str(tmp_path), digest) as entry:
        assert os.environ[TF_CACHE_VARIABLE] == entry
        assert os.path.dirname(entry) == str(tmp_path)
    # Nothing was written (no call): no empty entry is left behind.
    assert not os.path.exists(entry)
    assert os.environ[TF_CACHE_VARIABLE] == "/elsewhere"
    monkeypatch.delenv(TF_CACHE_VARIABLE)
    with pytest.raises(RuntimeError), optimized_graph_cache(str(tmp_path), digest):
        raise RuntimeError("the first call failed")
    assert TF_CACHE_VARIABLE not in os.environ


def test_unwritable_cache_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="runtime.graph_cache_dir"):
        with optimized_graph_cache(str(blocker / "graphs"), _traced(2.0)):
            pass
