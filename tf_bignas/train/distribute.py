"""Building a `tf.distribute` strategy by name, with clear errors for missing devices."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def build_strategy(
    name: str, tpu: str = "", devices: Sequence[str] | None = None
) -> tf.distribute.Strategy:
    """Returns the strategy for a name.

    Args:
        name: "default" (one device), "mirrored" (all local GPUs, or `devices`),
            "multi_worker" (MultiWorkerMirroredStrategy; cluster from TF_CONFIG),
            or "tpu".
        tpu: TPU name or grpc address for "tpu" ("" = the local or Colab TPU).
        devices: Explicit devices for "mirrored", e.g. ["/cpu:0", "/cpu:1"].

    Returns:
        The strategy.

    Raises:
        ValueError: On an unknown name, or a TPU that cannot be reached.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            where = f"at {tpu!r}" if tpu else "on this machine (no --tpu address given)"
            raise ValueError(
                f"strategy 'tpu': no TPU found {where}: {e}. Pass the TPU name or "
                "grpc://host:port address, or use --strategy=default|mirrored|multi_worker"
            ) from e
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; allowed: {list(STRATEGIES)}")
