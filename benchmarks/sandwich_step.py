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

    python -m benchmarks.sandwich_step --resolution=64 --batch_size=32 --threads=2

Target (issue 4): sandwich step <= 1.10x the sum of its children's static steps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.common import timed
from tf_bignas.model import Supernet, cost
from tf_bignas.model.slicing import extract_child
from tf_bignas.space import ArchConfig, get_space
from tf_bignas.train.optimizers import RMSpropTF
from tf_bignas.train.step import SandwichOptions, SandwichStep, sample_children

_SPACE = flags.DEFINE_string("space", "bignas_mobilenetv2", "Search space name.")
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "Input resolution of every child.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed rounds after the first (tracing) call.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Timed rounds.")
_THREADS = flags.DEFINE_integer("threads", 2, "Intra-op and inter-op threads.")
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown", False, "Also time bare supernet passes (where the overhead goes)."
)

_NAMES = ("largest", "smallest", "random0", "random1")


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


def main(argv: list[str]) -> None:
    del argv
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
    start = time.perf_counter()
    res, bs, nc = _RESOLUTION.value, _BATCH.value, _NUM_CLASSES.value
    space = get_space(_SPACE.value).with_resolutions([res])
    net = Supernet(space, num_classes=nc)
    options = SandwichOptions()
    optimizer = RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    step_fn = SandwichStep(net, optimizer, options, global_batch_size=bs)
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

    print(
        f"tf {tf.__version__}, {os.cpu_count()} CPUs, {_THREADS.value} threads, "
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
    print(f"ratio, median of per-round ratios:        {float(np.median(per_round)):.3f}")
    print(
        f"throughput: {gmacs:.2f} GMAC/s (sum of MACs x 3 x batch / step), {bs / sandwich:.1f} img/s"
    )
    print(f"traces: step {step_fn.tracing_count}, child pass {step_fn.child_tracing_count}")


if __name__ == "__main__":
    app.run(main)
