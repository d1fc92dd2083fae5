"""Building a `tf.distribute` strategy by name, with clear errors for missing devices,
and the role of this process in a multi-worker cluster.

Multi-worker training (`MultiWorkerMirroredStrategy`, the cluster from the
`TF_CONFIG` environment variable) runs the same program in every worker
process. The chief (task "chief", or worker 0 when the cluster has no chief)
owns the workdir: it takes its lock, writes the run record, the checkpoints,
TensorBoard logs and results. Every other worker restores from the chief's
checkpoints and writes its own copies (every worker must take part in a
save) into a temporary folder that it deletes. When a worker dies or becomes
unreachable, the others' next collective operation fails; the training loop
reports it as a `WorkerFailureError` that names the lost step and the
checkpoint to resume from, and starting every worker again with the same
command resumes the run there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

from tf_bignas.run.config import STRATEGIES

# What a collective operation raises when a peer worker died or cannot be reached.
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


class WorkerFailureError(RuntimeError):
    """A worker of a multi-worker run died or became unreachable; this worker stopped."""


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """Where this process sits in a (multi-worker) cluster.

    Attributes:
        task_type: "chief" or "worker" in a multi-worker cluster; "" for one process.
        task_id: Index among the tasks of its type.
        num_workers: Worker processes in the cluster (chief included).
        is_chief: Whether this process owns the workdir.
    """

    task_type: str = ""
    task_id: int = 0
    num_workers: int = 1
    is_chief: bool = True

    @property
    def name(self) -> str:
        """E.g. "worker 1" ("this process" outside a cluster)."""
        return f"{self.task_type} {self.task_id}" if self.task_type else "this process"


def worker_role(strategy: tf.distribute.Strategy | None) -> WorkerRole:
    """This process's role under a strategy (one process unless multi-worker).

    Args:
        strategy: The run's strategy (None: one process).

    Returns:
        The WorkerRole.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return WorkerRole()
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return WorkerRole()
    spec = resolver.cluster_spec().as_dict()
    num = sum(len(spec.get(kind, ())) for kind in ("chief", "worker"))
    kind, index = resolver.task_type, int(resolver.task_id)
    chief = kind == "chief" or ("chief" not in spec and kind == "worker" and index == 0)
    return WorkerRole(kind, index, num, chief)


def build_strategy(
    name: str, tpu: str = "", devices: Sequence[str] | None = None
) -> tf.distribute.Strategy:
    """Returns the strategy for a name.

    Args:
        name: "default" (one device), "mirrored" (all local GPUs, or `devices`),
            "multi_worker" (MultiWorkerMirroredStrategy; cluster from TF_CONFIG),
            or "tpu".
        tpu: For "tpu": a TPU name or grpc://host:port address reachable from
            this machine, "local" (a TPU VM's own TPU), or "" (the TPU that
            the environment names, e.g. on Colab).
        devices: Explicit devices for "mirrored", e.g. ["/cpu:0", "/cpu:1"].

    Returns:
        The strategy.

    Raises:
        ValueError: On an unknown name, or a TPU that cannot be reached (see
            `connect_tpu`).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return tf.distribute.TPUStrategy(connect_tpu(tpu))
    raise ValueError(f"unknown strategy {name!r}; allowed: {list(STRATEGIES)}")


def connect_tpu(tpu: str = "") -> tf.distribute.cluster_resolver.TPUClusterResolver:
    """Finds a TPU, connects to it and initialises it.

    Args:
        tpu: A TPU name or grpc://host:port address reachable from this
            machine, "local" (a TPU VM's own TPU), or "" (the TPU that the
            environment names, e.g. on Colab).

    Returns:
        The resolver, connected.

    Raises:
        ValueError: Naming the TPU, what went wrong and what is expected, if
            the TPU cannot be found or reached (the resolver's own errors, such
            as a raw ``urlopen error`` for an unknown name, are wrapped).
    """
    where = f"named {tpu!r}" if tpu else "on this machine (no --tpu given)"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # noqa: BLE001 - the resolver raises whatever its transport raises
        # An unknown name: urllib's URLError (an OSError) from the metadata or
        # Cloud TPU API lookup; no TPU: ValueError / RuntimeError; an
        # unreachable address: a tf.errors.OpError; no client library: ImportError.
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(
            f"strategy 'tpu': no TPU found {where} ({reason}); expected --tpu=NAME or "
            "--tpu=grpc://HOST:PORT of a TPU reachable from this VM, or --tpu=local on a TPU "
            "VM; or use --strategy=default|mirrored|multi_worker"
        ) from e
    return resolver
