"""Training throughput and time to first step, as issue 22 compares them with AttentiveNAS.

    python -m benchmarks.throughput
    python -m benchmarks.throughput --isa=avx2
    python -m benchmarks.throughput --resolutions=64 --steps=4

For each resolution, in a fresh process (so nothing traced or cached carries
over), the training path a user runs: the default space at that resolution,
batch 32, 1000 classes, `SandwichStep.run` (batches from an iterator,
largest + smallest + 2 random children drawn in-graph, inplace distillation,
one RMSProp update), the lean Grappler that training uses on CPU hosts (idle
passes skipped, one round over the step's graph), and the children's lanes
and threads that training chooses (`runtime.child_lanes=0`,
`runtime.threads=0`: on a CPU host the children run at the same time, one
lane per core, one thread per op on 2 cores; `--lanes=1 --threads=2` measures
one child after another with 2 threads per op, as before). It
prints, per resolution:

- to first step: wall seconds from the moment the process was started to the
  end of the first training step, with its parts and the process's CPU
  seconds. As a fresh training run does (`runtime.eager_first_step`), that
  step runs op by op (Python start, imports, supernet, one step op by op),
  and the compiled step is traced after it: the line goes on with the time
  to the end of the first compiled step (tracing, graph optimisation, one
  step); `--noeager_first_step` measures the compiled step first. The
  native gradient kernels (`tf_bignas.model.native`) come from the user's
  cache; on a machine where they were never built, the first process also
  builds them (7.7 s on the host of benchmarks/README.md, once);
- cached: the same for a second fresh process that loads the first one's
  trace (`tf_bignas.train.trace_cache`) and reads its optimised graph
  (`tf_bignas.train.graph_cache`) from the cache (`runtime.graph_cache_dir`),
  as a resumed run or the next run of a sweep does; `--nograph_cache` skips it;
- step: mean wall seconds of the next `--steps` steps (each with its own
  children, as in training: the uniform sampler of the peer comparison);
- GMAC/s: the MACs the children of those steps actually ran (forward + 2x
  backward: MACs x 3 x batch) over their time, comparable across frameworks;
- matmul: the same process's float32 2048x2048 matmul rate (the machine
  reference; with fewer threads per op than cores, one matmul per core at
  once, so that it uses every core as the step does) and the ratio
  GMAC/s / matmul;
- memory: the same process's memory copy rate on every core (a second
  machine reference: much of the step is bound by memory traffic, which
  other tenants of a shared host can slow while the matmul rate holds);
- ours / peer: that ratio over the peer's, as issue 22 measured it on one
  idle 2-core machine (AttentiveNAS, PyTorch eager, the same space, batch and
  sampler): ours at 0.20 of that process's matmul, and ours / peer 1.44 and
  1.58 at 64 px, 1.16 and 1.25 at 128 px, so the peer ran at about 0.20 /
  1.51 = 0.132 of matmul at 64 px and 0.20 / 1.205 = 0.166 at 128 px. The
  ratio to an in-process matmul carries that comparison to another machine
  of the same kind; it is an estimate, not a side-by-side run;
- peak RSS: the process's high-water resident memory over all of it;
- code: the instruction set that ran. Issue 22's machine has AVX2 and no
  AVX-512; on a newer x86 host, `--isa=avx2` runs the code that machine
  runs (oneDNN's AVX2 kernels, for the step and the matmul alike, and the
  native kernels built for x86-64-v3), so the ratio to matmul compares like
  with like.

Targets (issue 22): ours / peer >= 2.0 at 64 and 128 px; first step <= 15 s at
64 px.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import types
from typing import Any

from absl import app, flags

from benchmarks.common import run_fresh

_RESOLUTIONS = flags.DEFINE_list("resolutions", ["64", "128"], "Training resolutions to measure.")
_SPACE = flags.DEFINE_string("space", "bignas_mobilenetv2", "Search space name.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_THREADS = flags.DEFINE_integer(
    "threads",
    0,
    "Intra-op and inter-op threads; 0 = as training sets them (runtime.threads=0: with "
    "lanes, train.step.lane_threads; else TensorFlow's default).",
)
_LANES = flags.DEFINE_integer(
    "lanes",
    0,
    "Children at once (SandwichStep lanes); 0 = as training chooses (runtime.child_lanes=0: "
    "train.step.child_lanes, one per core on a CPU host); 1 = one after another in a loop.",
)
_STEPS = flags.DEFINE_integer("steps", 8, "Steps timed after the first.")
_CHILD = flags.DEFINE_integer("child", 0, "Internal: measure this resolution in this process.")
_SPAWNED = flags.DEFINE_float("spawned_at", 0.0, "Internal: the parent's clock at the spawn.")
_GRAPH_CACHE = flags.DEFINE_bool(
    "graph_cache",
    True,
    "Also measure a second fresh process that reads the first one's optimised graph "
    "(runtime.graph_cache_dir; a new empty cache per resolution).",
)
_EAGER = flags.DEFINE_bool(
    "eager_first_step",
    True,
    "The first step runs op by op and the step is traced after it, as a fresh training "
    "run does (runtime.eager_first_step); --noeager_first_step: the compiled step first.",
)
_CACHE_DIR = flags.DEFINE_string("cache_dir", "", "Internal: the graph cache of this process.")
# --isa: the environment of the measured processes (TensorFlow's own Eigen
# kernels are built for AVX in the pip wheel and take no such limit).
ISA_ENV = types.MappingProxyType(
    {
        "native": types.MappingProxyType({}),
        "avx2": types.MappingProxyType(
            {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_BIGNAS_NATIVE_MARCH": "x86-64-v3"}
        ),
    }
)
_ISA = flags.DEFINE_enum(
    "isa",
    "native",
    list(ISA_ENV),
    "Instruction set of the measured processes: native = the machine's own; avx2 = "
    "oneDNN's AVX2 kernels (ONEDNN_MAX_CPU_ISA) and native kernels built for x86-64-v3 "
    "(TF_BIGNAS_NATIVE_MARCH), the code an AVX2-only machine such as issue 22's runs, "
    "on a newer x86 host.",
)

# Issue 22's side-by-side measurement (see the module docstring): the peer's
# effective MAC rate as a fraction of the same process's 2048^2 matmul rate.
PEER_RATIO_TO_MATMUL = types.MappingProxyType({64: 0.20 / 1.51, 128: 0.20 / 1.205})
TARGET_OVER_PEER = 2.0
TARGET_FIRST_STEP_S = 15.0


def _rss_peak_mib() -> float:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) / 1024


def _measure(resolution: int, spawned_at: float) -> dict[str, Any]:
    """Everything of one resolution, in this (fresh) process.

    Args:
        resolution: Training resolution of every child.
        spawned_at: `time.time()` of the parent just before it started this process.

    Returns:
        The figures, in seconds, GMAC/s and MiB.
    """
    started = time.time()
    import numpy as np
    import tensorflow as tf

    from benchmarks.common import matmul_gmacs_on_cores, memory_gbs
    from tf_bignas.model import Supernet, cost, native
    from tf_bignas.run.optimizers import RMSpropTF
    from tf_bignas.space import get_space
    from tf_bignas.train.graph_cache import CHECKSUM_SUFFIX
    from tf_bignas.train.step import (
        SandwichOptions,
        SandwichStep,
        available_cores,
        child_lanes,
        lane_threads,
        skip_idle_graph_passes,
    )
    from tf_bignas.train.trace_cache import TRACES_DIR

    imported = time.time()
    cache = _CACHE_DIR.value
    cached_graphs = sum(
        not name.endswith(CHECKSUM_SUFFIX)
        for d, _, names in os.walk(cache)
        if os.path.basename(d) != TRACES_DIR
        for name in names
    )
    traces = os.path.join(cache, TRACES_DIR)
    cached_traces = len(os.listdir(traces)) // 2 if os.path.isdir(traces) else 0
    children = SandwichOptions().num_random + 2
    lanes = min(_LANES.value or child_lanes("default", False, children), children)
    if _THREADS.value:
        intra = inter = _THREADS.value
    elif lanes > 1:
        intra, inter = lane_threads(lanes)
    else:
        intra = inter = 0
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    skip_idle_graph_passes()
    space = get_space(_SPACE.value).with_resolutions([resolution])
    bs, nc = _BATCH.value, _NUM_CLASSES.value
    net = Supernet(space, num_classes=nc)
    optimizer = RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    step = SandwichStep(
        net,
        optimizer,
        SandwichOptions(),
        bs,
        graph_cache_dir=cache or None,
        lean_grappler=True,
        lanes=lanes,
    )
    rng = np.random.default_rng(0)
    batch = {
        "images": {resolution: rng.normal(size=(bs, resolution, resolution, 3)).astype("float32")},
        "label": rng.integers(0, nc, size=bs).astype(np.int32),
    }
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    built = time.time()
    first = first_cpu = eager_s = None
    if _EAGER.value:
        step.run_eagerly(iterator, 0).losses.numpy()
        first, first_cpu = time.time(), time.process_time()
        eager_s = first - built
    start = time.time()
    step.trace(iterator)
    traced = time.time()
    step.run(iterator, int(_EAGER.value), 1).losses.numpy()
    compiled = time.time()
    compiled_cpu = time.process_time()
    times = []
    begin = 1 + int(_EAGER.value)
    for i in range(begin, begin + _STEPS.value):
        t0 = time.perf_counter()
        step.run(iterator, i, 1).losses.numpy()
        times.append(time.perf_counter() - t0)
    macs = sum(
        cost.macs(space, child, nc)
        for i in range(begin, begin + _STEPS.value)
        for child in step.sample_children(i)
    )
    gmacs = macs * 3 * bs / sum(times) / 1e9
    rss = _rss_peak_mib()
    # On every core, as the step runs: one matmul per core that an op leaves free.
    cores = available_cores()
    matmul = matmul_gmacs_on_cores(intra, cores)
    memory = memory_gbs(parallel=cores)
    kernels = native.native_ops()
    return {
        "native_kernels": os.path.basename(kernels.path) if kernels.library else kernels.reason,
        "native_march": native.target_arch(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"),
        "python_start_s": started - spawned_at,
        "import_s": imported - started,
        "build_s": built - imported,
        "eager_step_s": eager_s,
        "trace_s": traced - start,
        "first_call_s": compiled - traced,
        "to_first_step_s": (first or compiled) - spawned_at,
        "to_first_step_cpu_s": first_cpu or compiled_cpu,
        "to_compiled_step_s": compiled - spawned_at,
        "to_compiled_step_cpu_s": compiled_cpu,
        "step_s": float(np.mean(times)),
        "step_spread_s": float(np.max(times) - np.min(times)),
        "gmacs": gmacs,
        "matmul_gmacs": matmul,
        "memory_gbs": memory,
        "peak_rss_mib": rss,
        "lanes": lanes,
        "intra_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "traces": step.loop_tracing_count,
        "cached_graphs_before": cached_graphs,
        "cached_traces_before": cached_traces,
    }


def _report(res: int, r: dict[str, Any], warm: dict[str, Any] | None) -> None:
    """Prints one resolution's figures (and those of the process that read the graph cache)."""
    ratio = r["gmacs"] / r["matmul_gmacs"]
    peer = PEER_RATIO_TO_MATMUL.get(res)
    vs_peer = f"{ratio / peer:.2f} (target >= {TARGET_OVER_PEER})" if peer else "n/a"
    target = f"  (target <= {TARGET_FIRST_STEP_S:.0f} s)" if res == 64 else ""

    def first(m: dict[str, Any]) -> str:
        start = (
            f"python {m['python_start_s']:.1f} + imports {m['import_s']:.1f} + "
            f"build {m['build_s']:.1f}"
        )
        compiled = (
            f"{'load' if m['cached_traces_before'] else 'trace'} {m['trace_s']:.1f} + "
            f"{'read graph' if m['cached_graphs_before'] else 'optimise'} and first compiled "
            f"step {m['first_call_s']:.1f}"
        )
        if m["eager_step_s"] is None:
            return (
                f"{m['to_first_step_s']:6.1f} s from process start "
                f"({m['to_first_step_cpu_s']:.1f} CPU s): {start} + {compiled}"
            )
        return (
            f"{m['to_first_step_s']:6.1f} s from process start "
            f"({m['to_first_step_cpu_s']:.1f} CPU s): {start} + step op by op "
            f"{m['eager_step_s']:.1f}; compiled step at {m['to_compiled_step_s']:.1f} s "
            f"({m['to_compiled_step_cpu_s']:.1f} CPU s): + {compiled}"
        )

    lines = [f"\n{res} px", f"  to first step  {first(r)}{target}"]
    if warm is not None:
        lines.append(f"  cached         {first(warm)}; later step {warm['step_s']:.2f} s")
        if not warm["cached_graphs_before"]:
            lines.append(
                "                 (no graph to read: TensorFlow caches graphs optimised in >= 3 s)"
            )
    lines += [
        f"  step           {r['step_s']:6.2f} s (mean of {_STEPS.value}, "
        f"spread {r['step_spread_s']:.2f} s; traces {r['traces']}; {r['lanes']} lane(s) of "
        f"children, threads {r['intra_threads']} per op / {r['inter_threads']} op threads, "
        "0 = TensorFlow's default)",
        f"  throughput     {r['gmacs']:6.2f} GMAC/s; matmul {r['matmul_gmacs']:.1f} GMAC/s "
        f"in the same process; ratio {ratio:.3f}",
        f"  memory         copy {r['memory_gbs']:.1f} GB/s read + written on all cores, "
        "the same process (the step is partly bound by memory traffic; the matmul is not)",
        f"  ours / peer    {vs_peer}  (peer {peer or float('nan'):.3f} of matmul, issue 22)",
        f"  peak RSS       {r['peak_rss_mib']:6.0f} MiB",
        f"  code           oneDNN ISA {r['onednn_max_isa']}, native kernels "
        f"-march={r['native_march']}: {r['native_kernels']}",
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str]) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(_measure(_CHILD.value, _SPAWNED.value)))
        return
    passed = [a for a in sys.argv[1:] if not a.startswith("--resolutions")]
    os.environ.update(ISA_ENV[_ISA.value])  # the measured processes inherit it
    print(
        f"space={_SPACE.value} batch={_BATCH.value} classes={_NUM_CLASSES.value} "
        f"threads={_THREADS.value} lanes={_LANES.value} steps={_STEPS.value}, "
        f"isa={_ISA.value} {dict(ISA_ENV[_ISA.value])}, "
        f"{os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for res in (int(r) for r in _RESOLUTIONS.value):
        with tempfile.TemporaryDirectory(prefix="graph_cache_") as cache:
            cached = [f"--cache_dir={cache}"] if _GRAPH_CACHE.value else []
            child = [f"--child={res}", *cached, *passed]
            spawned = time.time()
            r = run_fresh("benchmarks.throughput", [*child, f"--spawned_at={spawned}"], f"{res} px")
            warm = None
            if r is not None and _GRAPH_CACHE.value:
                spawned = time.time()
                warm = run_fresh(
                    "benchmarks.throughput",
                    [*child, f"--spawned_at={spawned}"],
                    f"{res} px, graph cache read",
                )
        if r is not None:
            _report(res, r, warm)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
