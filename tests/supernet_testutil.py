"""Helpers shared by the supernet tests."""

from __future__ import annotations

import keras
import numpy as np


def randomize_weights(model: keras.Model, seed: int = 0) -> None:
    """Gives every weight random values, so no zero-init gamma hides a mismatch.

    Variances get positive values around 1; everything else small normals.

    Args:
        model: The model (supernet or child) to overwrite in place.
        seed: Random seed.
    """
    rng = np.random.default_rng(seed)
    values = []
    for v in model.weights:
        shape = tuple(v.shape)
        if "variance" in v.path:
            values.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif "calib" in v.path:
            values.append(np.zeros(shape, np.float32))
        elif "gamma" in v.path:
            values.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            values.append(rng.normal(0.0, 0.2, shape).astype(np.float32))
    model.set_weights(values)


def graph_op_types(fn) -> set[str]:
    """The op types of a traced function's graph, those of its nested functions included.

    Args:
        fn: A concrete function (`tf.function(...).get_concrete_function(...)`).

    Returns:
        Every op type in the graph and in its library's functions (`tf.cond`
        branches, gradients).
    """
    graph = fn.graph.as_graph_def()
    return {n.op for n in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]}
