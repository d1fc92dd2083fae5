"""Run by test_multiworker.py: one worker of a two-process MultiWorkerMirroredStrategy,
or the one-process reference.

    python tests/multiworker_check.py INDEX PORT0,PORT1 OUT.npz
    python tests/multiworker_check.py mirrored - OUT.npz

Sets TF_CONFIG for worker INDEX of a cluster on localhost (or, for
"mirrored", splits this process's CPU into two logical devices under
MirroredStrategy), trains the tiny supernet for a few sandwich steps on fixed
batches of embedded digits (each replica gets its half of every global
batch), and saves the final weights to OUT.npz.
"""

from __future__ import annotations

import json
import os
import sys

MIRRORED = sys.argv[1] == "mirrored"
INDEX, PORTS, OUT = 0 if MIRRORED else int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
if not MIRRORED:
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"localhost:{p}" for p in PORTS]},
            "task": {"type": "worker", "index": INDEX},
        }
    )

import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
if MIRRORED:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

import numpy as np  # noqa: E402

from tests.test_multiworker import GLOBAL_BATCH, STEPS, build, fixed_batches  # noqa: E402


def main() -> None:
    batches = tf.data.Dataset.from_tensor_slices(fixed_batches())
    net, step = build(strategy)
    if MIRRORED:  # each global batch split in two, in order, over the two replicas
        iterator = iter(strategy.experimental_distribute_dataset(batches))
    else:  # worker i feeds the i-th half of each global batch
        per_worker = GLOBAL_BATCH // len(PORTS)

        def shard(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            lo = ctx.input_pipeline_id * per_worker
            return batches.map(
                lambda b: tf.nest.map_structure(lambda t: t[lo : lo + per_worker], b)
            )

        iterator = iter(strategy.distribute_datasets_from_function(shard))
    for s in range(STEPS):
        step.run(iterator, s, 1)
    np.savez(OUT, *[v.numpy() for v in net.trainable_variables])
    print(
        json.dumps(
            {"worker": INDEX, "replicas": strategy.num_replicas_in_sync, "unrolled": step.unrolled}
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
