"""The step's convolutions and swishes: the stock ops against the forms the supernet runs.

In slice mode on a CPU-only host the supernet runs two of its convolutions
and its swish activations with other gradients than the stock ops
(`tf_bignas.model.layers`; the forward ops are the stock ones):

- a depthwise convolution's filter gradient through a native kernel
  (`tf_bignas.model.native`), or where that does not build TensorFlow's own
  kernel (`depthwise_conv2d_same`), where the stock gradient runs oneDNN's,
  which takes a depthwise kernel larger than 3x3 as a grouped convolution on
  dense 16x16 channel blocks;
- a 1x1 convolution's gradients as matrix products (`pointwise_conv`);
- swish's gradient as one native kernel (`swish_native_grad`), where the
  stock one is six element-wise ops;
- the squeeze-excite product's gradient as one native kernel
  (`scale_channels`), where the stock one is two products and a sum.

This benchmark times, interleaved in one process, the forward and backward
pass of every depthwise and 1x1 convolution of the space's largest child at
one resolution (each depthwise one at every kernel size of its stage) and of
its swishes (x -> swish(x) * w, w one scale per channel, so that both have a
weight gradient) and squeeze-excite products, in the stock form and in the
supernet's, and prints the
ratios (stock / supernet's) per layer and over each kind, with this
process's matmul rate beside the absolute times. On one thread per op, as
training runs its children in two lanes on two cores:

    python -m benchmarks.conv_kernels --threads=1

With ``ONEDNN_MAX_CPU_ISA=AVX2 TF_BIGNAS_NATIVE_MARCH=x86-64-v3`` before it,
the code that an AVX2-only machine runs (see `benchmarks.throughput --isa`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags

from benchmarks.common import matmul_gmacs

_SPACE = flags.DEFINE_string("space", "bignas_mobilenetv2", "Search space name.")
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "Input resolution of the largest child.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_THREADS = flags.DEFINE_integer("threads", 1, "Intra-op threads (inter-op: 1).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (medians are printed).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Calls per timing.")


def _seconds(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds per call of `fn` (its outputs read back), after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    for t in out:
        t.numpy()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str]) -> None:
    del argv
    import tensorflow as tf

    from tf_bignas.model.layers import (
        depthwise_conv2d_same,
        pointwise_conv,
        scale_channels,
        swish_native_grad,
    )
    from tf_bignas.model.netplan import net_plan
    from tf_bignas.space import get_space

    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    space = get_space(_SPACE.value)
    arch = dataclasses.replace(space.largest(), resolution=_RESOLUTION.value)
    plan = net_plan(space, arch, 1000, True)
    rng = np.random.default_rng(0)
    spec = [tf.TensorSpec([None] * 4)] * 3

    def fwd_bwd(conv: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Callable:
        @tf.function(input_signature=spec)
        def f(x: tf.Tensor, w: tf.Tensor, dy: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = conv(x, w)
            return [y, *tape.gradient(y, [x, w], output_gradients=dy)]

        return f

    def normal(*shape: int) -> tf.Tensor:
        return tf.constant(rng.normal(size=shape), tf.float32)

    cases = []  # (kind, label, stock, ours, args)
    b = _BATCH.value
    for blk in plan.blocks:
        s = blk.stride
        for k in space.stages[blk.stage].kernels:
            args = (
                normal(b, blk.in_res, blk.in_res, blk.mid_ch),
                normal(k, k, blk.mid_ch, 1),
                normal(b, blk.out_res, blk.out_res, blk.mid_ch),
            )
            stock = fwd_bwd(lambda x, w, s=s: tf.nn.depthwise_conv2d(x, w, [1, s, s, 1], "SAME"))
            ours = fwd_bwd(lambda x, w, s=s: depthwise_conv2d_same(x, w, s))
            label = f"{blk.name} dw {k}x{k}/{s} {blk.in_res}px {blk.mid_ch}ch"
            cases.append(("depthwise", label, stock, ours, args))
        # The swishes after the expand conv (if any) and after the depthwise one.
        for res, after in ([(blk.in_res, "expand")] if blk.expand else []) + [(blk.out_res, "dw")]:
            args = (
                normal(b, res, res, blk.mid_ch),
                normal(1, 1, 1, blk.mid_ch),
                normal(b, res, res, blk.mid_ch),
            )
            stock = fwd_bwd(lambda x, w: tf.nn.silu(x) * w)
            ours = fwd_bwd(lambda x, w: swish_native_grad(x) * w)
            label = f"{blk.name} swish after {after} {res}px {blk.mid_ch}ch"
            cases.append(("swish", label, stock, ours, args))
        if blk.se_ch:  # the squeeze-excite product x * s, s per sample and channel
            args = (
                normal(b, blk.out_res, blk.out_res, blk.mid_ch),
                normal(b, 1, 1, blk.mid_ch),
                normal(b, blk.out_res, blk.out_res, blk.mid_ch),
            )
            stock = fwd_bwd(lambda x, s: x * s)
            ours = fwd_bwd(scale_channels)
            label = f"{blk.name} se product {blk.out_res}px {blk.mid_ch}ch"
            cases.append(("se product", label, stock, ours, args))
        convs = [(blk.out_res, blk.mid_ch, blk.out_ch, "project")]
        if blk.expand:
            convs.insert(0, (blk.in_res, blk.in_ch, blk.mid_ch, "expand"))
        for res, cin, cout, what in convs:
            args = (normal(b, res, res, cin), normal(1, 1, cin, cout), normal(b, res, res, cout))
            stock = fwd_bwd(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
            ours = fwd_bwd(pointwise_conv)
            cases.append(("1x1", f"{blk.name} {what} {res}px {cin}->{cout}", stock, ours, args))
    last = plan.blocks[-1]
    args = (
        normal(b, plan.head_res, plan.head_res, last.out_ch),
        normal(1, 1, last.out_ch, plan.head_ch),
        normal(b, plan.head_res, plan.head_res, plan.head_ch),
    )
    cases.append(
        (
            "1x1",
            f"head {plan.head_res}px {last.out_ch}->{plan.head_ch}",
            fwd_bwd(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME")),
            fwd_bwd(pointwise_conv),
            args,
        )
    )

    times = {label: ([], []) for _, label, *_ in cases}
    for _ in range(_ROUNDS.value):
        for _, label, stock, ours, args in cases:
            times[label][0].append(_seconds(lambda f=stock, a=args: f(*a), _REPEATS.value))
            times[label][1].append(_seconds(lambda f=ours, a=args: f(*a), _REPEATS.value))
    gmacs = matmul_gmacs()
    print(
        f"tf {tf.__version__}, {_THREADS.value} thread(s) per op, space={_SPACE.value} "
        f"largest child at {_RESOLUTION.value} px, batch {b}; forward + both gradients, "
        f"median of {_ROUNDS.value} interleaved rounds"
    )
    print(f"matmul rate (2048x2048 float32, this process, its threads per op): {gmacs:.1f} GMAC/s")
    totals: dict[str, list[float]] = {}
    for kind, label, *_ in cases:
        stock, ours = (float(np.median(t)) * 1e3 for t in times[label])
        totals.setdefault(kind, [0.0, 0.0])
        totals[kind][0] += stock
        totals[kind][1] += ours
        print(
            f"  {label:40s} stock {stock:7.2f} ms  supernet's {ours:7.2f} ms  {stock / ours:5.2f}x"
        )
    for kind, (stock, ours) in totals.items():
        print(
            f"{kind}, all: stock {stock:.1f} ms, supernet's {ours:.1f} ms, "
            f"stock / supernet's = {stock / ours:.2f}"
        )


if __name__ == "__main__":
    app.run(main)
