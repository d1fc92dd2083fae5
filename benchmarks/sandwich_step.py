"""One sandwich step vs the static training steps of its four children, in one process.

Times one full sandwich step (`tf_bignas.train.step.SandwichStep`: the
largest, the smallest and two random children forward and backward through
the supernet, inplace distillation, summed gradients, weight decay, one
RMSProp update) and, for the same four children, one static training step of
each child's sliced Keras model (`extract_child`: forward, softmax cross
entropy, gradients, an RMSProp update of its own), and prints

- the sandwich step's time as a ratio to the sum of the four static steps;
- its effective training throughput, sum over the children of MACs x 3
  (forward + backward) x batch / step time, in GMAC/s (comparable across
  frameworks), and the images per second it consumes.

Rounds interleave the sandwich step and the four static steps so that machine
noise hits both alike; figures are medians over the timed rounds. The images
are random (this measures the step, not the input pipeline). With
`--breakdown`, each round also times the four children's forward+backward
through the supernet as four bare `tf.function` calls (no optimizer, no
distillation) and the same four passes plus one RMSProp update in one
`tf.function`, to show where any overhead of the sandwich step goes.

Machine reference and memory (issue 8), in the same process: the float32
matmul rate (`benchmarks.common.matmul_gmacs`) and the ratio of the step's
effective MAC rate to it; the peak memory during one sandwich step and
during the largest child's static step (above what was held before the call:
activations, gradients, workspace), and their ratio: from TensorFlow's CPU
allocator where the build keeps its statistics, else from the process's peak
RSS (`peak_bytes`). With `--profile`, a TensorFlow profiler trace of a few sandwich steps,
summed by op type: the top ops by time. With `--compare_native`, each round
also times the same sandwich step of a second supernet with the same weights
and `native_kernels=False` (the depthwise filter and swish gradients on
TensorFlow's ops instead of `tf_bignas.model.native`'s kernels), and the
ratio of the two is printed:

    python -m benchmarks.sandwich_step --resolution=64 --rounds=6 --lanes=2 --threads=1 --compare_native
    python -m benchmarks.sandwich_step --resolution=64 --batch_size=32 --threads=2
    python -m benchmarks.sandwich_step --resolution=128 --rounds=3 --profile
    python -m benchmarks.sandwich_step --resolution=64 --lanes=2 --threads=1 --profile

Targets: sandwich step <= 1.10x the sum of its children's static steps
(issue 4); effective MAC/s >= 0.3x the matmul rate and peak memory <= 1.5x
the largest child's static step (issue 8).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.common import matmul_gmacs_on_cores, timed, top_ops
from tf_bignas.model import Supernet, cost
from tf_bignas.model.native import native_ops
from tf_bignas.model.slicing import extract_child
from tf_bignas.run.optimizers import RMSpropTF
from tf_bignas.space import ArchConfig, get_space
from tf_bignas.train.step import (
    SandwichOptions,
    SandwichStep,
    lane_threads,
    sample_children,
)

_SPACE = flags.DEFINE_string("space", "bignas_mobilenetv2", "Search space name.")
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "Input resolution of every child.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed rounds after the first (tracing) call.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Timed rounds.")
_THREADS = flags.DEFINE_integer("threads", 2, "Intra-op and inter-op threads.")
_LANES = flags.DEFINE_integer(
    "lanes",
    1,
    "Children of the sandwich step at the same time (SandwichStep's lanes); above 1, "
    "one op thread per core (--threads sets the threads per op).",
    lower_bound=1,
)
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown", False, "Also time bare supernet passes (where the overhead goes)."
)
_PROFILE = flags.DEFINE_bool("profile", False, "Profile sandwich steps: top ops by time.")
_COMPARE_NATIVE = flags.DEFINE_bool(
    "compare_native",
    False,
    "Also time the same sandwich step of a supernet with the same weights and "
    "native_kernels=False (TensorFlow's ops for the depthwise filter and swish gradients), "
    "interleaved, and print the ratio.",
)
_UNROLL = flags.DEFINE_bool(
    "unroll", False, "Unrolled children (one inlined copy each) instead of the children's loop."
)

_NAMES = ("largest", "smallest", "random0", "random1")
_TF_OPS = "sandwich step, TensorFlow's gradient ops"


def _static_step(
    model: keras.Model, images: tf.Tensor, one_hot: tf.Tensor
) -> Callable[[], tf.Tensor]:
    """A compiled static training step of one child model, with its own RMSProp."""
    optimizer = RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return lambda: step(images, one_hot)


def _breakdown_fns(
    net: Supernet, children: list[ArchConfig], images: tf.Tensor, one_hot: tf.Tensor
) -> dict[str, Callable[[], object]]:
    """Bare supernet passes of the four children, without the sandwich machinery."""
    encoded = [net.encode_arch(c) for c in children]
    variables = net.trainable_variables
    optimizer = RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    optimizer.build(variables)

    def grads_of(x, y, arch):
        with tf.GradientTape() as tape:
            logits = net(x, arch=arch, training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, logits))
        return loss, tape.gradient(loss, variables)

    @tf.function
    def one_child(x, y, arch):
        # Return something of every gradient, or the backward pass is pruned away.
        loss, grads = grads_of(x, y, arch)
        return loss + 0.0 * tf.add_n([tf.reduce_sum(g) for g in grads])

    @tf.function
    def four_and_update(x, y, archs):
        total, grads = None, None
        for arch in archs:
            loss, g = grads_of(x, y, arch)
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            total = loss if total is None else total + loss
        optimizer.apply_gradients(zip(grads, variables))
        return total

    return {
        "4 bare supernet fwd+bwd calls": lambda: [one_child(images, one_hot, e) for e in encoded],
        "4 fwd+bwd + 1 update, one fn": lambda: four_and_update(images, one_hot, encoded),
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def peak_bytes(fn: Callable[[], object]) -> tuple[int, str]:
    """Peak memory during `fn()` above what was held before, and what measured it.

    TensorFlow's CPU allocator keeps statistics on some builds only (TF 2.21's
    CPU wheel raises "Allocator stats not available for device 'CPU:0'");
    there, the process's peak RSS is used: the kernel's high-water mark is
    reset (`/proc/self/clear_refs`, Linux) before the call and read after.

    Args:
        fn: One step.

    Returns:
        (bytes, "allocator" or "process RSS").
    """
    timed(fn)  # nothing left to build or trace
    try:
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        tf.config.experimental.reset_memory_stats("CPU:0")
        timed(fn)
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before, "allocator"
    except (ValueError, tf.errors.OpError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    timed(fn)
    return (_status_kib("VmHWM") - before) * 1024, "process RSS"


def main(argv: list[str]) -> None:
    del argv
    # Above one lane, training's op threads (`lane_threads`: one per core).
    lanes = _LANES.value
    inter = max(_THREADS.value, lane_threads(lanes)[1]) if lanes > 1 else _THREADS.value
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    start = time.perf_counter()
    res, bs, nc = _RESOLUTION.value, _BATCH.value, _NUM_CLASSES.value
    space = get_space(_SPACE.value).with_resolutions([res])
    net = Supernet(space, num_classes=nc)
    options = SandwichOptions()
    optimizer = RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    step_fn = SandwichStep(
        net,
        optimizer,
        options,
        global_batch_size=bs,
        unroll_children=_UNROLL.value,
        lanes=lanes,
    )
    children = sample_children(net, 0, options)
    assert len(children) == len(_NAMES)

    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(bs, res, res, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, nc, size=bs).astype(np.int32))
    one_hot = tf.one_hot(labels, nc)
    batch = {"images": {res: images}, "label": labels}

    macs = [cost.macs(space, c, nc) for c in children]
    variants: dict[str, Callable[[], object]] = {
        "sandwich": lambda: step_fn(batch, children, 0)["losses"]
    }
    for name, arch in zip(_NAMES, children):
        variants[name] = _static_step(
            extract_child(net, arch, allow_uncalibrated=True), images, one_hot
        )
    if _BREAKDOWN.value:
        variants.update(_breakdown_fns(net, children, images, one_hot))
    if _COMPARE_NATIVE.value:
        tf_net = Supernet(space, num_classes=nc, native_kernels=False)
        tf_net.set_weights(net.get_weights())
        tf_step = SandwichStep(
            tf_net,
            RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3),
            options,
            global_batch_size=bs,
            unroll_children=_UNROLL.value,
            lanes=lanes,
        )
        variants[_TF_OPS] = lambda: tf_step(batch, children, 0)["losses"]

    print(
        f"tf {tf.__version__}, {os.cpu_count()} CPUs, {_THREADS.value} threads per op, "
        f"{inter} op threads, {step_fn.lanes} lane(s) of children, "
        f"space={space.name} res={res} batch={bs} classes={nc}"
    )
    print(f"setup (supernet, 4 extract_child): {time.perf_counter() - start:.1f} s")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for name, arch, m in zip(_NAMES, children, macs):
        print(f"  {name:9s} {m / 1e6:7.1f} MMAC  {arch.to_paper_notation()}")
    first = {name: timed(fn) for name, fn in variants.items()}  # traces
    print("first calls (trace + run): " + ", ".join(f"{k} {v:.1f} s" for k, v in first.items()))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(_WARMUP.value + _ROUNDS.value):
        for name, fn in variants.items():
            t = timed(fn)
            if r >= _WARMUP.value:
                times[name].append(t)
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    med = {k: float(np.median(v)) for k, v in times.items()}
    static_sum = sum(med[n] for n in _NAMES)
    # Per-round sums give a second, noise-paired estimate of the ratio.
    per_round = np.asarray(times["sandwich"]) / np.sum([times[n] for n in _NAMES], axis=0)
    sandwich = med["sandwich"]
    gmacs = sum(macs) * 3 * bs / sandwich / 1e9
    print()
    for name in _NAMES:
        print(f"static step {name:9s} {med[name] * 1e3:8.1f} ms")
    print(f"static steps, sum     {static_sum * 1e3:8.1f} ms")
    print(f"sandwich step         {sandwich * 1e3:8.1f} ms")
    for name in variants:
        if name != "sandwich" and name not in _NAMES:
            print(f"{name:30s} {med[name] * 1e3:8.1f} ms  ({med[name] / static_sum:.3f}x static)")
    print(
        f"ratio sandwich / sum of static (medians): {sandwich / static_sum:.3f}  (target <= 1.10)"
    )
    if _TF_OPS in times:
        tf_over_native = np.asarray(times[_TF_OPS]) / np.asarray(times["sandwich"])
        print(
            f"{_TF_OPS} / sandwich step: {med[_TF_OPS] / sandwich:.3f} (medians), "
            f"{float(np.median(tf_over_native)):.3f} (median of per-round ratios); native "
            f"kernels: {native_ops().reason or 'built and checked'}"
        )
    print(f"ratio, median of per-round ratios:        {float(np.median(per_round)):.3f}")
    print(
        f"throughput: {gmacs:.2f} GMAC/s (sum of MACs x 3 x batch / step), {bs / sandwich:.1f} img/s"
    )
    print(f"traces: step {step_fn.tracing_count}, child pass {step_fn.child_tracing_count}")

    # Machine reference and memory, in this process (matmul before and after the
    # rounds would bracket them; here once, right after).
    # On every core, as the step runs: one matmul per core that an op leaves free.
    reference = matmul_gmacs_on_cores(_THREADS.value, inter)
    print(
        f"matmul rate (2048x2048 float32, this process): {reference:.1f} GMAC/s; "
        f"effective / matmul = {gmacs / reference:.3f}  (target >= 0.3)"
    )
    largest = max(zip(macs, _NAMES))[1]
    mem = {name: peak_bytes(variants[name]) for name in ("sandwich", largest)}
    source = mem["sandwich"][1]
    ratio = mem["sandwich"][0] / max(mem[largest][0], 1)
    print(
        f"peak memory above the resting state ({source}): sandwich "
        f"{mem['sandwich'][0] / 2**20:.0f} MiB, largest child's static step "
        f"{mem[largest][0] / 2**20:.0f} MiB, ratio {ratio:.2f}  (target <= 1.5)"
    )
    print(f"process peak RSS: {_status_kib('VmHWM') / 2**10:.0f} MiB (since the last reset)")
    if _PROFILE.value:
        print("\ntop ops of the sandwich step by time (ms per step, profiler, 3 steps):")
        ops = top_ops(variants["sandwich"])
        total = ops[-1][1]
        for name, ms in ops:
            print(f"  {name:34s} {ms:8.1f} ms  {ms / total:6.1%}")


if __name__ == "__main__":
    app.run(main)
