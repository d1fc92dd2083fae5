"""Supernet vs sliced static models: forward+backward time per child, in one process.

For the smallest, the largest and two random children, times one training
forward+backward pass (BN batch statistics, gradients of all trainable
weights) through the supernet running that child and through the child's
sliced static Keras model, and prints the ratio. Both run as `tf.function`s
on the same images; timings interleave supernet and static rounds so that
machine noise hits both alike, and the per-child figure is the median.

    python -m benchmarks.supernet_vs_static --space=bignas_mobilenetv2 \
        --resolution=96 --batch_size=16 --repeats=15

Target (issue 3): the supernet costs at most 1.10x the static models on CPU.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.common import timed
from tf_bignas.model import Supernet
from tf_bignas.model.slicing import extract_child
from tf_bignas.space import get_space

_SPACE = flags.DEFINE_string("space", "bignas_mobilenetv2", "Search space name.")
_RESOLUTION = flags.DEFINE_integer("resolution", 96, "Input resolution of every child.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed rounds per child.")
_THREADS = flags.DEFINE_integer("threads", 2, "Intra-op threads.")
_MODE = flags.DEFINE_enum("mode", "slice", ["slice", "mask"], "Supernet mode.")


def main(argv: list[str]) -> None:
    del argv
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
    res = _RESOLUTION.value
    space = get_space(_SPACE.value).with_resolutions([res])
    net = Supernet(space, num_classes=1000, mode=_MODE.value)
    images = tf.random.normal([_BATCH.value, res, res, 3])

    @tf.function
    def supernet_step(x, arch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(x, arch=arch, training=True)))
        return tape.gradient(loss, net.trainable_variables)

    children = {
        "smallest": space.smallest(res),
        "largest": space.largest(res),
        "random0": space.sample(0).with_resolution(res),
        "random1": space.sample(1).with_resolution(res),
    }
    total_super = total_static = 0.0
    print(f"space={space.name} res={res} batch={_BATCH.value} mode={_MODE.value}")
    for name, arch in children.items():
        model = extract_child(net, arch, allow_uncalibrated=True)

        @tf.function
        def static_step(x, model=model):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True)))
            return tape.gradient(loss, model.trainable_variables)

        encoded = net.encode_arch(arch)
        for _ in range(3):  # warm-up (traces, allocator)
            timed(supernet_step, images, encoded)
            timed(static_step, images)
        sup, sta = [], []
        for _ in range(_REPEATS.value):
            sup.append(timed(supernet_step, images, encoded))
            sta.append(timed(static_step, images))
        s, t = float(np.median(sup)), float(np.median(sta))
        total_super += s
        total_static += t
        print(f"{name:9s} supernet {s * 1e3:8.1f} ms  static {t * 1e3:8.1f} ms  ratio {s / t:.3f}")
    print(f"supernet traces: {supernet_step.experimental_get_tracing_count()}")
    print(f"overall ratio (sum of medians): {total_super / total_static:.3f}")


if __name__ == "__main__":
    app.run(main)
