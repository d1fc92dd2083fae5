"""Run by test_distributed.py in a fresh process: two logical CPUs need a fresh runtime.

Trains the same supernet for a few sandwich steps on one device and with
MirroredStrategy over two logical CPU devices (synchronized BN, the same global
batch), then calibrates a child both ways, and prints the largest differences
as JSON.
"""

from __future__ import annotations

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_bignas.data import build_eval_dataset, build_train_dataset  # noqa: E402
from tf_bignas.model import Supernet  # noqa: E402
from tf_bignas.run.evaluator import ChildEvaluator  # noqa: E402
from tf_bignas.run.optimizers import RMSpropTF  # noqa: E402
from tf_bignas.space import get_space  # noqa: E402
from tf_bignas.train.step import SandwichOptions, SandwichStep, sample_children  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3


def run(strategy: tf.distribute.Strategy, batches: dict, calib: tf.Tensor) -> tuple:
    space = get_space("bignas_tiny")
    options = SandwichOptions()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        net = Supernet(space, 10, synchronized_bn=True, dropout_rate=0.0)
        opt = RMSpropTF(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
        step = SandwichStep(net, opt, options, GLOBAL_BATCH, strategy)
    start = [v.numpy() for v in net.trainable_variables]
    ds = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(batches).unbatch().batch(GLOBAL_BATCH)
    )
    for s, batch in zip(range(STEPS), ds):
        step(batch, sample_children(net, s, options), s)
    arch = space.sample(3, resolutions=[16])
    evaluator = ChildEvaluator(net, strategy)
    calib_ds = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(calib).unbatch().batch(GLOBAL_BATCH)
    )
    stats = evaluator.calibrate(arch, iter(calib_ds), num_batches=2)
    weights = [v.numpy() for v in net.trainable_variables]
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(start, weights))
    return weights, stats, moved


def main() -> None:
    space = get_space("bignas_tiny")
    train = build_train_dataset(
        "embedded", "train", space.train_resolutions, GLOBAL_BATCH, augment="none", seed=1
    )
    raw = [b for b, _ in zip(train, range(STEPS))]
    batches = {
        "images": {r: tf.stack([b["images"][r] for b in raw]) for r in space.train_resolutions},
        "label": tf.stack([b["label"] for b in raw]),
    }
    evals = [
        b["image"]
        for b, _ in zip(build_eval_dataset("embedded", "train", 16, GLOBAL_BATCH), range(2))
    ]
    calib = tf.stack(evals)
    one_w, one_s, moved = run(tf.distribute.OneDeviceStrategy("/cpu:0"), batches, calib)
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two_w, two_s, _ = run(two, batches, calib)
    print(
        json.dumps(
            {
                "replicas": two.num_replicas_in_sync,
                "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(one_w, two_w)),
                "max_stat_diff": max(
                    float(np.max(np.abs(one_s[k][i] - two_s[k][i]))) for k in one_s for i in (0, 1)
                ),
                "max_stat": max(float(np.max(np.abs(one_s[k][i]))) for k in one_s for i in (0, 1)),
                "max_weight_change": moved,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
