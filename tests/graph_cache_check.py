"""Run by test_graph_cache.py in a fresh process: the graph and trace caches across processes.

Trains the default space (its step's graph takes TensorFlow seconds to
optimise, above the 3 s from which TensorFlow caches it) for a few sandwich
steps on the embedded digits with a graph cache, and prints the losses, the
graph cache's entries, the stored traces and how often the step was traced
(0: its trace was loaded) as JSON. TensorFlow's own log (stderr, with
TF_CPP_VMODULE=optimize_function_graph_utils=3) says whether the optimised graph
was written, read back or re-optimised.

    python tests/graph_cache_check.py CACHE_DIR NUM_CLASSES [GRAPPLER]

GRAPPLER: "one_round" (the default; training's `runtime.lean_grappler`: the
step's graph optimised in one round, `ONE_ROUND_GRAPH_PASSES`) or "default"
(TensorFlow's own two rounds).
"""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from tf_bignas.data import build_train_dataset
from tf_bignas.model import Supernet
from tf_bignas.run.optimizers import RMSpropTF
from tf_bignas.space import get_space
from tf_bignas.train.step import SandwichOptions, SandwichStep
from tf_bignas.train.trace_cache import TRACES_DIR

BATCH = 2
STEPS = 3
RESOLUTION = 32


def main() -> None:
    cache, num_classes = sys.argv[1], int(sys.argv[2])
    grappler = sys.argv[3] if len(sys.argv) > 3 else "one_round"
    assert grappler in ("one_round", "default"), grappler
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    space = get_space("bignas_mobilenetv2").with_resolutions([RESOLUTION])
    keras.utils.set_random_seed(0)
    net = Supernet(space, num_classes)
    opt = RMSpropTF(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
    step = SandwichStep(
        net,
        opt,
        SandwichOptions(),
        BATCH,
        graph_cache_dir=cache,
        lean_grappler=grappler == "one_round",
    )
    train = build_train_dataset(
        "embedded", "train", (RESOLUTION,), BATCH, augment="none", seed=1
    ).map(lambda b: {**b, "label": b["label"] % num_classes})
    iterator = iter(train)
    losses = [step.run(iterator, s, 1).losses.numpy().tolist() for s in range(STEPS)]
    files = sorted(
        os.path.relpath(os.path.join(d, f), cache) for d, _, fs in os.walk(cache) for f in fs
    )
    graphs = [f for f in files if not f.startswith(TRACES_DIR + os.sep)]
    stored = [f for f in files if f.startswith(TRACES_DIR + os.sep)]
    out = {"losses": losses, "entries": graphs, "stored_traces": stored}
    print(json.dumps({**out, "traces": step.loop_tracing_count}))
    assert np.all(np.isfinite(losses))


if __name__ == "__main__":
    main()
