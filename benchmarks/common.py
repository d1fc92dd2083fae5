"""Helpers every benchmark shares: timing, a machine reference to print
beside any absolute figure (these machines are shared and differ in speed),
and a measurement in a fresh process.

TensorFlow is imported where it is used, so that a benchmark's parent
process, which only starts fresh ones, stays light.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds to run `fn(*args)` and materialise every tensor it returns.

    Args:
        fn: The function.
        *args: Its arguments.

    Returns:
        Wall seconds.
    """
    import tensorflow as tf

    start = time.perf_counter()
    out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
    return time.perf_counter() - start


def matmul_gmacs(size: int = 2048, repeats: int = 5, parallel: int = 1) -> float:
    """This process's float32 matmul rate, in GMAC/s (best of `repeats`).

    The same measurement as the model cards' machine reference
    (`tf_bignas.export.host_benchmark.machine_reference`), on larger matrices.
    With `parallel` > 1, that many independent matmuls run in one call, so a
    process with fewer threads per op than cores (children in lanes) is
    measured on all of its cores, as its step runs.

    Args:
        size: Side of the square matrices.
        repeats: Timed runs.
        parallel: Matmuls at once (one per inter-op thread that an op leaves).

    Returns:
        Multiply-adds per second / 1e9.
    """
    if parallel <= 1:
        from tf_bignas.export.host_benchmark import machine_reference

        return machine_reference(size, repeats)
    import tensorflow as tf

    from tf_bignas.export.host_benchmark import best_seconds

    pairs = [
        (
            tf.random.stateless_normal((size, size), seed=(i, 1)),
            tf.random.stateless_normal((size, size), seed=(i, 2)),
        )
        for i in range(parallel)
    ]
    matmuls = tf.function(lambda ps: [tf.matmul(a, b) for a, b in ps])
    best = best_seconds(lambda: [m.numpy() for m in matmuls(pairs)], repeats)
    return parallel * size**3 / best / 1e9


def matmul_gmacs_on_cores(threads_per_op: int, cores: int) -> float:
    """The matmul rate on all `cores`, as a step with `threads_per_op` runs its ops.

    One matmul per `threads_per_op` cores, at once (children in lanes leave
    cores to other ops); `threads_per_op` 0 (TensorFlow's default) or at
    least `cores` is one matmul on all of them.

    Args:
        threads_per_op: The process's intra-op threads (0 = TensorFlow's default).
        cores: Cores the process may run on.

    Returns:
        Multiply-adds per second / 1e9 (`matmul_gmacs`).
    """
    return matmul_gmacs(parallel=max(1, cores // (threads_per_op or cores)))


def memory_gbs(mib: int = 256, repeats: int = 5, parallel: int = 1) -> float:
    """This process's memory copy rate, in GB/s read + written (best of `repeats`).

    A reference for steps bound by memory traffic (element-wise ops, batch
    norm), which the matmul rate does not reflect: other tenants of a shared
    host can take memory bandwidth and leave the arithmetic units alone.
    `parallel` copies of `mib` MiB each run at once, one per thread.

    Args:
        mib: Size of each copy, well above the caches.
        repeats: Timed runs.
        parallel: Copies at once (one per core, as the step's lanes run).

    Returns:
        Bytes read and written per second / 1e9.
    """
    import concurrent.futures

    import numpy as np

    from tf_bignas.export.host_benchmark import best_seconds

    n = mib * 2**20 // 4
    pairs = [(np.ones(n, np.float32), np.empty(n, np.float32)) for _ in range(parallel)]
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        # The warm-up call also touches the destination's pages.
        best = best_seconds(lambda: list(pool.map(lambda p: np.copyto(p[1], p[0]), pairs)), repeats)
    return parallel * 2 * n * 4 / best / 1e9


def run_fresh(module: str, args: Sequence[str], label: str) -> dict[str, Any] | None:
    """Runs `python -m module *args` in a fresh process and reads what it measured.

    Nothing traced, compiled or cached in this process carries over.

    Args:
        module: The benchmark module; its child mode prints a JSON object as
            the last line of its output.
        args: Its command-line arguments.
        label: Names the measurement in a failure message.

    Returns:
        The parsed JSON object, or None if the process failed (its exit code
        and the end of its error output are printed).
    """
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        print(f"{label}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Profiler events that span many ops (a function, the executor, the process).
_CONTAINERS = ("Run", "RunGraph", "Process", "PartitionedCall", "StatefulPartitionedCall")


def top_ops(fn: Callable[[], object], steps: int = 3, top: int = 15) -> list[tuple[str, float]]:
    """Milliseconds per call by op type, from a TensorFlow profiler trace of `steps` calls.

    Args:
        fn: One call (already traced).
        steps: Calls traced.
        top: Op types returned.

    Returns:
        [(op type, ms per call)], largest first, plus ("all ops", total).
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="sandwich_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        timed(fn)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    by_type: collections.Counter = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # TF op events are named "op_name:OpType"; skip the spans of whole
                # functions and of the executor, which contain the ops.
                kind = name.rsplit(":", 1)[1].strip() if ":" in name else ""
                if kind and not kind.startswith("__") and kind not in _CONTAINERS:
                    by_type[kind] += event.duration_ps / 1e9 / steps
    total = sum(by_type.values())
    return [*by_type.most_common(top), ("all ops", total)]
