"""BN re-calibration and evaluation of children (paper section 3.1).

Supernet training keeps no BN running statistics, so before a child is
evaluated (during training, in search, before export) its statistics are
re-calibrated: reset, then an exact cumulative average of the batch moments
over a fixed random sample of training images, summed across replicas when
distributed. The result is stored with the arch in the supernet's `bn_stats`,
where `extract_child` and export find it.

How many images: US-Nets (Yu and Huang, 2019), where these post-training
statistics come from, compute them on a random sample of training images, a
few thousand, not on the whole set: an exact average of per-channel moments
over N random images has a sampling error that falls as 1/sqrt(N). The
default, `DEFAULT_CALIBRATION_IMAGES` = 2,048 images in batches of
`DEFAULT_CALIBRATION_BATCH_SIZE` = 256, does not grow with the training batch
(64 training batches of 4,096 would be 262,144 images per child).
`tests/test_calibration.py` shows the statistics converging on real data as
N grows: on the digits, the error of the calibrated means at 2,048 images is
about 0.05% of a standard deviation, a fifth of the error at 128 images. The
sample must be random, not the first images of the split: folder and
embedded sources list their images class by class
(`tf_bignas.data.build_calibration_dataset` draws it).

Images arrive either normalised (float32, as `build_eval_dataset` yields by
default) or as uint8 pixels, which `ChildEvaluator` normalises on the device
with the same `Normalization` as the input pipeline (a quarter of the bytes
to move).

`ChildEvaluator` compiles one calibration and one evaluation function per
input resolution; a new child is new tensor values, never a new trace.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf

from tf_bignas.data.device import network_input
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization
from tf_bignas.model.bn_stats import BNStats
from tf_bignas.model.supernet import Supernet
from tf_bignas.space import ArchConfig

DEFAULT_CALIBRATION_IMAGES = 2048
DEFAULT_CALIBRATION_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Top-1 and top-5 accuracy of a child on a split.

    Attributes:
        top1: Fraction of examples whose top prediction is right.
        top5: Fraction whose label is among the top 5 predictions.
        num_examples: Examples evaluated.
    """

    top1: float
    top5: float
    num_examples: int


class ChildEvaluator:
    """Calibrates and evaluates children of a supernet.

    Args:
        net: The supernet.
        strategy: Distribution strategy; datasets passed in must then be
            distributed datasets of that strategy. Default strategy if None.
        normalization: Applied on the device to uint8 images
            (`tf_bignas.data.device.network_input`).
    """

    def __init__(
        self,
        net: Supernet,
        strategy: tf.distribute.Strategy | None = None,
        normalization: Normalization = DEFAULT_NORMALIZATION,
    ) -> None:
        self.net = net
        self.strategy = strategy or tf.distribute.get_strategy()
        self.normalization = normalization
        self._calib_fn = tf.function(self._calibrate_batch)
        self._eval_fn = tf.function(self._evaluate_batch)
        self._stats_fn = tf.function(self._read_stats)

    @property
    def tracing_count(self) -> int:
        """Traces of the calibration and evaluation functions together."""
        return (
            self._calib_fn.experimental_get_tracing_count()
            + self._eval_fn.experimental_get_tracing_count()
        )

    # ---- compiled parts ------------------------------------------------------
    def _calibrate_batch(self, images, arch):
        def replica(x):
            x = network_input(x, self.normalization)
            self.net(x, arch=arch, training=False, bn_mode="calibrate")

        self.strategy.run(replica, args=(images,))

    def _evaluate_batch(self, images, labels, arch):
        def replica(x, y):
            x = network_input(x, self.normalization)
            logits = self.net(x, arch=arch, training=False, bn_mode="stored")
            y = tf.cast(y, tf.int32)
            top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(y, logits, 1), tf.float32))
            k = min(5, self.net.num_classes)
            top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(y, logits, k), tf.float32))
            return tf.stack([top1, top5, tf.cast(tf.shape(y)[0], tf.float32)])

        counts = self.strategy.run(replica, args=(images, labels))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, counts, axis=None)

    def _read_stats(self):
        return {name: layer.calibrated_stats() for name, layer in self.net.bn_layers().items()}

    # ---- public API -------------------------------------------------------------
    def calibrate(
        self,
        arch: ArchConfig,
        batches: Iterable[tf.Tensor | Mapping[str, tf.Tensor]],
        num_batches: int | None = None,
        store: bool = True,
    ) -> BNStats:
        """Re-calibrates a child's BN statistics.

        Args:
            arch: The child.
            batches: Images at `arch.resolution` (tensors, or dicts with "image",
                e.g. from `tf_bignas.data.build_calibration_dataset`): normalised
                float or uint8 pixels.
            num_batches: Average over at most this many batches; None reads
                `batches` to its end (which also completes a `tf.data` cache).
            store: Put the result in `net.bn_stats` and load it into the BN layers.

        Returns:
            The child's statistics, {bn name: (mean, variance)}.

        Raises:
            ValueError: If `batches` yields fewer than one batch.
        """
        encoded = self.net.encode_arch(arch)
        self.net.reset_calibration()
        seen = 0
        for batch in itertools.islice(batches, num_batches):
            images = batch["image"] if isinstance(batch, Mapping) else batch
            self._calib_fn(images, encoded)
            seen += 1
        if seen == 0:
            raise ValueError("calibration got no batches: the calibration dataset is empty")
        raw = {k: (m.numpy(), v.numpy()) for k, (m, v) in self._stats_fn().items()}
        stats = {
            name: (raw[name][0][:ch], raw[name][1][:ch])
            for name, ch in self.net.bn_channels(arch).items()
        }
        if store:
            self.net.bn_stats.put(arch, stats)
            self.net.load_bn_stats(arch, stats)
        return stats

    def evaluate(
        self,
        arch: ArchConfig,
        dataset: Iterable[Mapping[str, tf.Tensor]],
        num_batches: int | None = None,
    ) -> Accuracy:
        """Top-1/top-5 of a calibrated child.

        Args:
            arch: The child; its stored statistics are loaded first.
            dataset: Evaluation batches {"image": ..., "label": ...} at the
                child's resolution.
            num_batches: Stop after this many batches (all if None).

        Returns:
            The Accuracy.

        Raises:
            KeyError: If the child has not been calibrated.
        """
        self.net.load_bn_stats(arch)
        encoded = self.net.encode_arch(arch)
        totals = np.zeros(3)
        for batch in itertools.islice(dataset, num_batches):
            totals += self._eval_fn(batch["image"], batch["label"], encoded).numpy()
        n = max(totals[2], 1.0)
        return Accuracy(float(totals[0] / n), float(totals[1] / n), int(totals[2]))
