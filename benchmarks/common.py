"""Helpers every benchmark shares: timing, and a machine reference to print
beside any absolute figure (these machines are shared and differ in speed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from tf_bignas.export.host_benchmark import machine_reference


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds to run `fn(*args)` and materialise every tensor it returns.

    Args:
        fn: The function.
        *args: Its arguments.

    Returns:
        Wall seconds.
    """
    start = time.perf_counter()
    out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
    return time.perf_counter() - start


def matmul_gmacs(size: int = 2048, repeats: int = 5) -> float:
    """This process's float32 matmul rate, in GMAC/s (best of `repeats`).

    The same measurement as the model cards' machine reference
    (`tf_bignas.export.host_benchmark.machine_reference`), on larger matrices.

    Args:
        size: Side of the square matrices.
        repeats: Timed runs.

    Returns:
        Multiply-adds per second / 1e9.
    """
    return machine_reference(size, repeats)
