"""Latency on the host: TFLite models run by ai-edge-litert's interpreter.

`to_tflite(model)` converts a Keras model to a float32 TFLite flatbuffer;
`measure_tflite(content)` runs it (XNNPACK, the interpreter's default, with a
fixed number of threads) and reports the median, 90th percentile and minimum
of single invocations after a warmup. `invoke_overhead_ms()` is the cost of an
invocation that does nearly nothing (a one-element model): a latency table
subtracts it from every part, and adds it back once per child.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

STATISTICS = ("median", "min")


@dataclasses.dataclass(frozen=True)
class HostTiming:
    """Timing of one TFLite model on the host.

    Attributes:
        median_ms: Median of the timed invocations.
        p90_ms: Their 90th percentile.
        min_ms: The fastest.
        runs: Timed invocations.
        threads: Interpreter threads.
    """

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    threads: int

    def value(self, statistic: str) -> float:
        """The "median" or the "min" (see `STATISTICS`)."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic {statistic!r} is not one of {STATISTICS}")
        return self.median_ms if statistic == "median" else self.min_ms


def to_tflite(model: keras.Model) -> bytes:
    """Converts a Keras model (fixed input shape) to a float32 TFLite flatbuffer, batch 1.

    The model's inference function is converted with its weights frozen into
    constants (BN folded into the convolutions): the same ops and outputs as
    `TFLiteConverter.from_keras_model`, at a fifth of its cost, since no
    SavedModel is written on the way (a table converts hundreds of models).

    Args:
        model: The model.

    Returns:
        The flatbuffer.
    """
    spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return tf.lite.TFLiteConverter.from_concrete_functions([fn]).convert()


def _interpreter(content: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, size=d["shape"], endpoint=True).astype(dtype)
        else:
            value = rng.standard_normal(d["shape"]).astype(dtype)
        interpreter.set_tensor(d["index"], value)
    return interpreter


def measure_tflite(
    content: bytes | str, threads: int = 1, warmup_runs: int = 5, num_runs: int = 50
) -> HostTiming:
    """Times single invocations of a TFLite model on the host.

    Args:
        content: The flatbuffer, or the path of a .tflite file.
        threads: Interpreter threads.
        warmup_runs: Untimed invocations first.
        num_runs: Timed invocations.

    Returns:
        The timing.

    Raises:
        ValueError: If the counts are not positive.
    """
    if threads < 1 or num_runs < 1 or warmup_runs < 0:
        raise ValueError(
            f"threads and num_runs must be >= 1 and warmup_runs >= 0, got threads={threads}, "
            f"num_runs={num_runs}, warmup_runs={warmup_runs}"
        )
    if isinstance(content, str):
        with open(content, "rb") as f:
            content = f.read()
    interpreter = _interpreter(content, threads)
    invoke = interpreter.invoke
    for _ in range(warmup_runs):
        invoke()
    times = np.empty(num_runs)
    clock = time.perf_counter
    for i in range(num_runs):
        start = clock()
        invoke()
        times[i] = clock() - start
    times *= 1e3
    return HostTiming(
        median_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        min_ms=float(times.min()),
        runs=num_runs,
        threads=threads,
    )


def null_model() -> keras.Model:
    """A model that does nearly nothing (one ReLU of one value): the invocation overhead."""
    inputs = keras.Input((1, 1, 1), name="image")
    return keras.Model(inputs, keras.layers.Activation("relu", name="null")(inputs), name="null")


def host_description(threads: int) -> dict[str, object]:
    """What identifies this host's measurements (CPU, cores, runtime)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        runtime = f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:  # noqa: BLE001 - metadata is best effort
        runtime = "ai-edge-litert"
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "runtime": runtime,
    }
