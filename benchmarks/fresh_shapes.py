"""What new shapes cost a training step: the same steps fresh and again, in one process.

    python -m benchmarks.fresh_shapes --resolution=128 --steps=8
    python -m benchmarks.fresh_shapes --resolution=128 --steps=4 --profile
    python -m benchmarks.fresh_shapes --resolution=128 --steps=12 --compare=pointwise_forward
    python -m benchmarks.fresh_shapes --resolution=128 --steps=12 --compare=batch_norm

A sandwich step of random children (`SandwichStep.run`, as training and
`benchmarks.throughput` run it: children drawn in-graph from the step
number, lanes and threads as training picks them on a CPU host) meets
layer shapes it has not run before at almost every step, and oneDNN builds
a primitive (often JIT code) for each new shape of its convolutions, batch
norms and swishes, and a process's memory grows to new highs. This program
runs steps 1..N, then the same steps 1..N again (the same children, now
seen), and prints the effective rate of each pass (the children's MACs x 3
x batch over the time) and their ratio: what fresh shapes cost.

- `--profile`: the TensorFlow profiler over each pass, op time by op type
  per step, fresh against again, the largest differences first (which ops
  pay for new shapes);
- `--compare=batch_norm`: instead, two supernets whose training steps
  differ only in training's batch norm with the swish after it
  (`layers.batch_norm_native`, as training runs it, against
  `FusedBatchNormV3` then `layers.swish_native_grad`, what the layer runs
  without the native kernels), their steps interleaved on the same fresh
  children (the order alternating per step), and the time ratio "other /
  training's form";
- `--compare=pointwise_forward`: the same for the 1x1 convolutions' forward
  pass (`tf.nn.conv2d`, as training runs it, against one matrix product,
  `layers.pointwise_conv(matmul_forward=True)`).
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.common import matmul_gmacs_on_cores, top_ops
from tf_bignas.model import Supernet, cost, layers
from tf_bignas.run.optimizers import RMSpropTF
from tf_bignas.space import get_space
from tf_bignas.train.step import (
    SandwichOptions,
    SandwichStep,
    available_cores,
    child_lanes,
    lane_threads,
    skip_idle_graph_passes,
)

_SPACE = flags.DEFINE_string("space", "bignas_mobilenetv2", "Search space name.")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Training resolution.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_STEPS = flags.DEFINE_integer("steps", 8, "Steps per pass.", lower_bound=1)
_PROFILE = flags.DEFINE_bool("profile", False, "Op time by type, fresh against again.")
_COMPARE = flags.DEFINE_enum(
    "compare",
    "",
    ["", "pointwise_forward", "batch_norm"],
    "Time training's form of this part against the other one, interleaved, instead.",
)
# The function of `layers` that each --compare swaps for its other form.
_SWAPPED = {"pointwise_forward": "pointwise_conv", "batch_norm": "batch_norm_native"}


def _stock_batch_norm(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    epsilon: float,
    swish: bool,
    library: object,
) -> tf.Tensor:
    """`layers.batch_norm_native`'s function on the stock ops, as `DynamicBatchNorm` runs them."""
    del library
    y, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=gamma,
        offset=beta,
        mean=tf.zeros([0], x.dtype),
        variance=tf.zeros([0], x.dtype),
        epsilon=epsilon,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=True,
    )
    return layers.swish_native_grad(y) if swish else y


def _step(space: object, lanes: int) -> SandwichStep:
    """A training step of a new default supernet, as training builds it on a CPU host."""
    net = Supernet(space, num_classes=_NUM_CLASSES.value)
    optimizer = RMSpropTF(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    return SandwichStep(
        net, optimizer, SandwichOptions(), _BATCH.value, lean_grappler=True, lanes=lanes
    )


def main(argv: list[str]) -> None:
    del argv
    children = SandwichOptions().num_random + 2
    lanes = min(child_lanes("default", False, children), children)
    intra, inter = lane_threads(lanes) if lanes > 1 else (0, 0)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    skip_idle_graph_passes()
    res, bs, nc = _RESOLUTION.value, _BATCH.value, _NUM_CLASSES.value
    space = get_space(_SPACE.value).with_resolutions([res])
    rng = np.random.default_rng(0)
    batch = {
        "images": {res: rng.normal(size=(bs, res, res, 3)).astype("float32")},
        "label": rng.integers(0, nc, size=bs).astype(np.int32),
    }
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    indices = range(1, _STEPS.value + 1)
    steps = {}
    forms = ("training", "other") if _COMPARE.value else ("training",)
    name = _SWAPPED.get(_COMPARE.value, "pointwise_conv")
    own = getattr(layers, name)
    for form in forms:
        step = _step(space, lanes)
        if form == "other":  # this step's trace takes the other form of the part compared
            setattr(
                layers,
                name,
                _stock_batch_norm
                if name == "batch_norm_native"
                else lambda x, w, matmul_forward=False: own(x, w, True),
            )
        try:
            step.trace(iterator)
            step.run(iterator, 0, 1).losses.numpy()
        finally:
            setattr(layers, name, own)
        steps[form] = step
    gmac = [
        sum(cost.macs(space, c, nc) for c in steps["training"].sample_children(i)) * 3 * bs / 1e9
        for i in indices
    ]
    print(
        f"tf {tf.__version__}, {available_cores()} cores, {lanes} lane(s), space={_SPACE.value} "
        f"res={res} batch={bs}; matmul "
        f"{matmul_gmacs_on_cores(intra, available_cores()):.1f} GMAC/s in this process"
    )
    if _COMPARE.value:
        times = {form: [] for form in forms}
        for n, i in enumerate(indices):
            for form in forms if n % 2 == 0 else forms[::-1]:
                start = time.perf_counter()
                steps[form].run(iterator, i, 1).losses.numpy()
                times[form].append(time.perf_counter() - start)
        for form in forms:
            print(
                f"{_COMPARE.value} {form:8s}: {sum(gmac) / sum(times[form]):6.2f} GMAC/s, "
                f"steps (s) {np.round(times[form], 2).tolist()}"
            )
        ratios = np.array(times["other"]) / np.array(times["training"])
        print(
            f"other / training's form, step time: "
            f"{sum(times['other']) / sum(times['training']):.3f} in all, "
            f"median per step {np.median(ratios):.3f}, training's form faster in "
            f"{int((ratios > 1).sum())} of {len(ratios)} steps"
        )
        return
    step = steps["training"]
    passes, profiles = {}, {}
    for name in ("fresh", "again"):
        times = []
        order = iter(indices)

        def one(times: list[float] = times, order=order) -> None:
            start = time.perf_counter()
            step.run(iterator, next(order), 1).losses.numpy()
            times.append(time.perf_counter() - start)

        if _PROFILE.value:
            profiles[name] = dict(top_ops(one, steps=len(indices), top=60))
        else:
            for _ in indices:
                one()
        passes[name] = times
        print(
            f"{name}: {sum(gmac) / sum(times):6.2f} GMAC/s, steps (s) {np.round(times, 2).tolist()}"
        )
    print(f"fresh / again time: {sum(passes['fresh']) / sum(passes['again']):.3f}")
    if _PROFILE.value:
        fresh, again = profiles["fresh"], profiles["again"]
        print(f"\n{'op type':46s} fresh ms  again ms   diff (per step, profiler)")
        for name in sorted(fresh, key=lambda n: again.get(n, 0.0) - fresh[n])[:16]:
            print(
                f"{name:46s} {fresh[name]:8.1f} {again.get(name, 0.0):8.1f} "
                f"{fresh[name] - again.get(name, 0.0):8.1f}"
            )


if __name__ == "__main__":
    app.run(main)
