"""What bfloat16 and XLA would give the sandwich step's kernels on this CPU.

The step's effective MAC rate is a small fraction of the matmul rate (see
`benchmarks/sandwich_step.py --profile`): its time goes to depthwise and 1x1
convolution gradients and to elementwise activation and gate traffic. This
benchmark times, in one process and interleaved, the forward+backward of one
representative layer of each kind at the default space's size at 64 px
(batch 32, a 32x32 map, 96 -> 576 channels) in float32 and in bfloat16
(oneDNN uses the AMX units for bfloat16 where the CPU has them), and the
swish activation's forward+backward with and without XLA, against 2048x2048
matmuls in both dtypes.

    python -m benchmarks.kernel_options --threads=2

Ratios against float32 (or against no XLA) in the same round lead; medians
over rounds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags

_THREADS = flags.DEFINE_integer("threads", 2, "Intra-op and inter-op threads.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Calls per timing.")


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds per call of `fn` after two warm-up calls."""
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if hasattr(out, "numpy"):
        out.numpy()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str]) -> None:
    del argv
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
    rng = tf.random.Generator.from_seed(0)

    def grad_fn(layer: Callable[..., tf.Tensor], jit: bool = False) -> Callable:
        @tf.function(jit_compile=jit or None)
        def f(*args: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(args)
                loss = tf.reduce_sum(tf.cast(layer(*args), tf.float32))
            return tape.gradient(loss, args)[0]

        return f

    def pointwise(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return tf.nn.conv2d(x, w, 1, "SAME")

    def depthwise(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")

    cases: dict[str, tuple[Callable, Callable[[tf.DType], tuple]]] = {
        "1x1 conv 96->576": (
            grad_fn(pointwise),
            lambda dt: (
                tf.cast(rng.normal([32, 32, 32, 96]), dt),
                tf.cast(rng.normal([1, 1, 96, 576]), dt),
            ),
        ),
        "5x5 depthwise 576": (
            grad_fn(depthwise),
            lambda dt: (
                tf.cast(rng.normal([32, 32, 32, 576]), dt),
                tf.cast(rng.normal([5, 5, 576, 1]), dt),
            ),
        ),
        "swish 576": (
            grad_fn(tf.nn.silu),
            lambda dt: (tf.cast(rng.normal([32, 32, 32, 576]), dt),),
        ),
    }
    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    swish_xla = grad_fn(tf.nn.silu, jit=True)
    rows: dict[str, list[float]] = {}
    for _ in range(_ROUNDS.value):
        for name, (fn, make) in cases.items():
            for dt in (tf.float32, tf.bfloat16):
                args = make(dt)
                rows.setdefault(f"{name} {dt.name}", []).append(
                    _time(lambda fn=fn, args=args: fn(*args), _REPEATS.value)
                )
        x = tf.cast(rng.normal([32, 32, 32, 576]), tf.float32)
        rows.setdefault("swish 576 float32 XLA", []).append(
            _time(lambda x=x: swish_xla(x), _REPEATS.value)
        )
        for dt in (tf.float32, tf.bfloat16):
            a = tf.cast(rng.normal([2048, 2048]), dt)
            rows.setdefault(f"matmul 2048 {dt.name}", []).append(
                _time(lambda a=a: matmul(a, a), _REPEATS.value)
            )
    med = {k: float(np.median(v)) for k, v in rows.items()}
    print(f"{os.cpu_count()} CPUs, threads={_THREADS.value}, load average {os.getloadavg()[0]:.2f}")
    print(
        f"{'kernel (forward+backward)':34s} {'float32 ms':>10s} {'bfloat16 ms':>11s} {'bf16/f32':>8s}"
    )
    for name in cases:
        f32, bf16 = med[f"{name} float32"], med[f"{name} bfloat16"]
        print(f"{name:34s} {f32 * 1e3:10.1f} {bf16 * 1e3:11.1f} {bf16 / f32:8.2f}")
    f32 = med["swish 576 float32"]
    print(
        f"swish 576 float32 with XLA: {med['swish 576 float32 XLA'] * 1e3:.1f} ms, "
        f"{med['swish 576 float32 XLA'] / f32:.2f}x the time without"
    )
    for dt in ("float32", "bfloat16"):
        rate = 2048**3 / med[f"matmul 2048 {dt}"] / 1e9
        print(f"matmul 2048x2048 {dt}: {rate:.1f} GMAC/s")


if __name__ == "__main__":
    app.run(main)
