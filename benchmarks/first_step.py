"""Time to the first sandwich step: tracing and graph optimisation, per step structure.

The first call of the compiled training step traces the supernet in Python and
then lets TensorFlow's graph optimiser (Grappler) work through the whole
graph; on the default space that used to take a minute or more, before any
training happened. This benchmark measures, each in a fresh process (so no
Python or TensorFlow cache carries over), for the training path
(`SandwichStep.run`: batches from an iterator, children sampled in-graph):

- trace: `get_concrete_function` of the step loop (Python tracing only);
- first call: the first `run` (graph optimisation, then one step);
- step: a later `run` (one step, nothing left to prepare);

in wall seconds and in CPU seconds of the process (the machines are shared;
CPU seconds suffer less from other jobs), plus the size of the traced graph
(nodes in the step and in every function it calls) and the number of call
sites of the child pass (copies of the supernet's forward and backward).

Variants: "loop" (the children of a step as the iterations of one
`tf.while_loop`: one copy of the child pass) and "unrolled" (one inlined copy
per child, the structure before the loop).

    python -m benchmarks.first_step --resolution=64 --threads=2
    python -m benchmarks.first_step --mode=mask --resolution=0 --trace_only

Target (issue 8): time to first step (trace + first call) under 20 s on the
default space at 64 px.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

from benchmarks.common import run_fresh

_SPACE = flags.DEFINE_string("space", "bignas_mobilenetv2", "Search space name.")
_RESOLUTION = flags.DEFINE_integer(
    "resolution", 64, "Training resolution of every child (slice mode; 0 = the space's own)."
)
_MODE = flags.DEFINE_enum("mode", "slice", ["slice", "mask"], "Supernet mode (mask: XLA).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_THREADS = flags.DEFINE_integer("threads", 2, "Intra-op and inter-op threads.")
_VARIANTS = flags.DEFINE_list("variants", ["loop", "unrolled"], "Step structures to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Fresh processes per variant.")
_TRACE_ONLY = flags.DEFINE_bool(
    "trace_only", False, "Only trace: count the copies and nodes, run nothing."
)
_STEPS = flags.DEFINE_integer("steps", 5, "Later steps timed (median).")
_LEAN = flags.DEFINE_bool(
    "lean_grappler",
    True,
    "Skip the Grappler passes that change nothing on a CPU host and optimise the step "
    "in one round, as training does (runtime.lean_grappler).",
)
_CHILD = flags.DEFINE_string("child", "", "Internal: measure this variant in this process.")


def count_child_calls(graph_def: object) -> int:
    """Call sites of the child pass in a graph and every function of its library.

    Args:
        graph_def: A `GraphDef` (from `ConcreteFunction.graph.as_graph_def()`).

    Returns:
        Number of (Stateful)PartitionedCall nodes that call a `_child_pass` function.
    """
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes += list(fn.node_def)
    return sum(
        1
        for n in nodes
        if n.op in ("PartitionedCall", "StatefulPartitionedCall")
        and "_child_pass" in n.attr["f"].func.name
    )


def graph_nodes(graph_def: object) -> int:
    """Nodes in a graph plus every function of its library."""
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def python_reference() -> float:
    """CPU seconds of a fixed single-threaded Python workload (best of 3): the machine reference.

    Tracing is single-threaded Python and Grappler single-threaded C++, so the
    time to the first step scales with one core's speed, which differs between
    machines of one kind and over a day on a shared one. Quote this beside
    absolute seconds.
    """
    times = []
    for _ in range(3):
        start = time.process_time()
        counts: dict[int, int] = {}
        for i in range(2_000_000):
            key = i % 1000
            counts[key] = counts.get(key, 0) + i
        times.append(time.process_time() - start)
    return min(times)


def _measure(variant: str) -> dict[str, float]:
    """Builds the step of one variant and times its trace, first call and a later call."""
    import numpy as np
    import tensorflow as tf

    from tf_bignas.model import Supernet
    from tf_bignas.run.optimizers import RMSpropTF
    from tf_bignas.space import get_space
    from tf_bignas.train.step import SandwichOptions, SandwichStep, skip_idle_graph_passes

    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
    if _LEAN.value:
        skip_idle_graph_passes()
    space = get_space(_SPACE.value)
    if _RESOLUTION.value:
        space = space.with_resolutions([_RESOLUTION.value])
    bs, nc = _BATCH.value, _NUM_CLASSES.value
    net = Supernet(space, num_classes=nc, mode=_MODE.value)
    optimizer = RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    step = SandwichStep(
        net,
        optimizer,
        SandwichOptions(),
        bs,
        jit_compile=_MODE.value == "mask",
        unroll_children=variant == "unrolled",
        lean_grappler=_LEAN.value,
    )
    rng = np.random.default_rng(0)
    batch = {
        "images": {
            r: rng.normal(size=(bs, r, r, 3)).astype(np.float32) for r in space.train_resolutions
        },
        "label": rng.integers(0, nc, size=bs).astype(np.int32),
    }
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())

    def clocks() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    out: dict[str, float] = {}
    w0, c0 = clocks()
    concrete = step._loop_fn.get_concrete_function(
        iterator, tf.constant(0, tf.int64), tf.constant(1, tf.int64), step._knobs(4)
    )
    w1, c1 = clocks()
    out["trace_s"], out["trace_cpu_s"] = w1 - w0, c1 - c0
    graph_def = concrete.graph.as_graph_def()
    out["graph_nodes"] = graph_nodes(graph_def)
    out["child_pass_copies"] = count_child_calls(graph_def)
    if _TRACE_ONLY.value:
        out.update(first_call_s=0.0, first_call_cpu_s=0.0, step_s=0.0, step_cpu_s=0.0, traces=1)
        return out
    w1, c1 = clocks()
    step.run(iterator, 0, 1).losses.numpy()
    w2, c2 = clocks()
    out["first_call_s"], out["first_call_cpu_s"] = w2 - w1, c2 - c1
    walls, cpus = [], []
    for i in range(_STEPS.value):
        w2, c2 = clocks()
        step.run(iterator, 1 + i, 1).losses.numpy()
        w3, c3 = clocks()
        walls.append(w3 - w2)
        cpus.append(c3 - c2)
    out["step_s"], out["step_cpu_s"] = float(np.median(walls)), float(np.median(cpus))
    out["traces"] = step.loop_tracing_count
    return out


def main(argv: list[str]) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(_measure(_CHILD.value)))
        return
    flags_out = [a for a in sys.argv[1:] if not a.startswith(("--variants", "--repeats"))]
    print(
        f"space={_SPACE.value} res={_RESOLUTION.value or 'own'} mode={_MODE.value} "
        f"batch={_BATCH.value} threads={_THREADS.value} lean_grappler={_LEAN.value}, "
        f"{os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'variant':9s} {'copies':>6s} {'nodes':>7s} {'trace s':>8s} {'(cpu)':>7s} "
        f"{'1st call s':>10s} {'(cpu)':>7s} {'to 1st step s':>13s} {'(cpu)':>7s} "
        f"{'step s':>7s} {'(cpu)':>7s}"
    )
    print(header)
    reference = [python_reference()]
    for _ in range(_REPEATS.value):
        for variant in _VARIANTS.value:
            r = run_fresh("benchmarks.first_step", [f"--child={variant}", *flags_out], variant)
            if r is None:
                continue
            total = r["trace_s"] + r["first_call_s"]
            total_cpu = r["trace_cpu_s"] + r["first_call_cpu_s"]
            print(
                f"{variant:9s} {r['child_pass_copies']:6d} {r['graph_nodes']:7d} "
                f"{r['trace_s']:8.1f} {r['trace_cpu_s']:7.1f} {r['first_call_s']:10.1f} "
                f"{r['first_call_cpu_s']:7.1f} {total:13.1f} {total_cpu:7.1f} "
                f"{r['step_s']:7.2f} {r['step_cpu_s']:7.2f}",
                flush=True,
            )
    reference.append(python_reference())
    print(
        f"load average after: {os.getloadavg()[0]:.2f}; machine reference (python_reference, "
        f"CPU s, before/after): {reference[0]:.3f} / {reference[1]:.3f}"
    )


if __name__ == "__main__":
    app.run(main)
