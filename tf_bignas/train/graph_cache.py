"""A persistent cache of the training step's optimised graph, keyed by its content.

The first call of the compiled training step spends about 10 s of its time in
TensorFlow's graph optimiser (Grappler) on the default space; a second process
that trains the same step (a resumed run, another seed, the next run of a
sweep) would spend them again on the same graph. TensorFlow (2.13 and later)
can store the optimised graph of a function and read it back instead of
optimising: set the environment variable ``TF_GRAPH_CACHING`` to a directory,
and a function whose optimisation took 3 s or more is written there, as
``<dir>/<job name>_<function name>``. That key is the function's NAME only,
not its content: two different steps traced under the same name (another
space, batch size or number of classes, in another process) would read each
other's graph back, and train the wrong network without a word.

So this module keys the directory itself by a fingerprint of everything the
optimised graph depends on (`graph_fingerprint`): the traced graph with its
whole function library, every op, name, shape and constant (its digest,
`traced_graph_digest`, which `tf_bignas.train.trace_cache` stores with a
trace, so a process that loads the trace needs no graph to find its entry),
TensorFlow's version and build, the Grappler options in force (the process's
and those the call carries: the step's own list of passes), the logical
devices, the GPUs' names and compute capabilities, the CPU's model and
instruction set (oneDNN's rewrites depend on it), whether op determinism is
on, and the environment switches that change TensorFlow's graph rewrites. A
step that differs in any of them gets its own directory; values that enter
the step as tensors (the seed, the learning rate, the distillation weights:
`SandwichStep`'s knobs) are not part of the graph, so runs that differ only
in them share one entry. Names inside a traced graph come from process-wide
counters: a process that builds other graphs before it traces the step
(restoring a checkpoint does) traces the same step under other names and
misses the entry, so the training run traces its step first
(`SandwichStep.trace`), and a resume finds what its first part wrote. With
the trace cache the names are those of the stored trace, renamed with its
key, in every process that loads it.

TensorFlow writes each file through a temporary name and a rename, but reads
a damaged file without noticing (a truncated one parses as an empty graph and
the step fails with an internal error): so each file is used only with its
SHA-256 beside it (`<file>.sha256`, written once the process that wrote the
file has run its first call), and a file without a matching one is removed
before the call, which then optimises the graph and writes it again. Nothing
here changes the numerics: the graph read back is the graph that was
optimised (`tests/test_graph_cache.py` checks the losses bit for bit against
the process that wrote it, and a resume of a training run that reads it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from collections.abc import Iterator

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context as tf_context

from tf_bignas.common.files import atomic_write_bytes, sha256_path

#: The environment variable that TensorFlow's function runtime reads.
TF_CACHE_VARIABLE = "TF_GRAPH_CACHING"

#: The suffix of the checksum file written beside each cached graph.
CHECKSUM_SUFFIX = ".sha256"

#: Environment switches that change TensorFlow's graph rewrites on a host.
_REWRITE_SWITCHES = (
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_ENABLE_MKL_NATIVE_FORMAT",
    "TF_ONEDNN_USE_SYSTEM_ALLOCATOR",
    "TF_XLA_FLAGS",
    "TF_ENABLE_AUTO_MIXED_PRECISION",
)


def _cpu_identity() -> str:
    """The CPU's model name and instruction-set flags (Linux), else the platform's name."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def op_determinism() -> str:
    """Whether `tf.config.experimental.enable_op_determinism` is on (no public reader)."""
    from tensorflow.python.framework import config as tf_config  # noqa: PLC0415

    reader = getattr(tf_config, "is_op_determinism_enabled", None)
    return "unknown" if reader is None else str(reader())


def traced_graph_digest(concrete: tf.types.experimental.ConcreteFunction) -> str:
    """A hex digest of a traced function's graph with its whole function library.

    Args:
        concrete: A traced function (`tf.function(...).get_concrete_function(...)`).

    Returns:
        64 hex characters (stored with a trace by `tf_bignas.train.trace_cache`,
        so a process that loads the trace needs no graph to compute it).
    """
    graph = concrete.graph.as_graph_def(add_shapes=True)
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


def graph_fingerprint(traced_digest: str) -> str:
    """A hex digest of everything a function's optimised graph depends on in this process.

    Args:
        traced_digest: The traced graph's digest (`traced_graph_digest`).

    Returns:
        A 32-character hex digest; equal digests mean the same optimised graph.
    """
    h = hashlib.sha256(traced_digest.encode())
    build = tf.sysconfig.get_build_info()
    gpus = tf.config.list_physical_devices("GPU")
    context = [
        f"tf={tf.__version__} git={tf.__git_version__} build={sorted(build.items())}",
        f"grappler={sorted(tf.config.optimizer.get_experimental_options().items())}",
        f"call_rewrites={_call_rewrites()}",
        f"jit={tf.config.optimizer.get_jit()}",
        f"deterministic={op_determinism()}",
        f"devices={[d.name for d in tf.config.list_logical_devices()]}",
        f"gpus={[tf.config.experimental.get_device_details(g) for g in gpus]}",
        f"cpu={_cpu_identity()}",
        f"env={[(k, os.environ.get(k)) for k in _REWRITE_SWITCHES]}",
    ]
    h.update("\n".join(context).encode())
    return h.hexdigest()[:32]


def _call_rewrites() -> str:
    """The Grappler settings that this thread's function calls carry (text of the proto).

    A step may call its function with its own list of passes
    (`tf_bignas.train.step.function_call_options`); the fingerprint is taken
    under them.
    """
    options = tf_context.context().function_call_options
    config = config_pb2.ConfigProto.FromString(options.config_proto_serialized)
    return text_format.MessageToString(config.graph_options.rewrite_options, as_one_line=True)


def _checked_entries(entry: str) -> list[str]:
    """Removes every graph file of an entry that its checksum does not vouch for.

    TensorFlow reads a damaged file without noticing (a truncated one parses
    as an empty graph, and the step then fails with an internal error), so a
    file is used only with a matching `<file>.sha256` beside it, written after
    the process that wrote the file finished its first call.

    Args:
        entry: The entry's directory.

    Returns:
        The names of the files removed (each is optimised and written again).
    """
    removed = []
    for name in sorted(os.listdir(entry)) if os.path.isdir(entry) else []:
        path = os.path.join(entry, name)
        if name.endswith(CHECKSUM_SUFFIX) or not os.path.isfile(path):
            continue
        try:
            with open(path + CHECKSUM_SUFFIX) as f:
                good = f.read().strip() == sha256_path(path, 64)
        except OSError:
            good = False
        if not good:
            for stale in (path, path + CHECKSUM_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)
            removed.append(name)
    return removed


def _vouch(entry: str) -> None:
    """Writes the checksum of every graph file of the entry that has none yet."""
    for name in os.listdir(entry) if os.path.isdir(entry) else []:
        path = os.path.join(entry, name)
        if name.endswith(CHECKSUM_SUFFIX) or os.path.exists(path + CHECKSUM_SUFFIX):
            continue
        atomic_write_bytes(path + CHECKSUM_SUFFIX, sha256_path(path, 64).encode())


@contextlib.contextmanager
def optimized_graph_cache(root: str, traced_digest: str) -> Iterator[str]:
    """Lets the first call of a function inside the block read or write its optimised graph.

    The cache entry is `<root>/<graph_fingerprint(traced_digest)>`. A graph file
    whose checksum is missing or wrong is removed first (and reported in the
    log), so TensorFlow optimises the graph and writes it again; a file
    TensorFlow writes in the block gets its checksum when the block ends
    without an error. The environment variable is set for the block only
    (restored after, also on an error), so other functions of the process
    (evaluation, calibration) are not cached under this key; call the
    function for the first time inside the block, since TensorFlow optimises
    (or reads) a function's graph once per process.

    Args:
        root: The cache's root directory (created if missing).
        traced_digest: The digest (`traced_graph_digest`) of the traced
            function about to be called for the first time.

    Yields:
        The entry's directory (TensorFlow creates it when it writes a graph).

    Raises:
        OSError: If the directory cannot be created (names the path).
    """
    entry = os.path.join(root, graph_fingerprint(traced_digest))
    try:
        # The root only: TensorFlow creates the entry when it writes a graph
        # (not for one optimised in under 3 s), so no empty entries pile up.
        os.makedirs(root, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise OSError(
            f"cannot create the graph cache directory {root!r} ({e.strerror}); "
            "set runtime.graph_cache_dir to a writable directory, or '' for no cache"
        ) from e
    for name in _checked_entries(entry):
        logging.getLogger(__name__).warning(
            "graph cache: %s has no valid checksum; removed, the graph is optimised again",
            os.path.join(entry, name),
        )
    before = os.environ.get(TF_CACHE_VARIABLE)
    os.environ[TF_CACHE_VARIABLE] = entry
    try:
        yield entry
    finally:
        if before is None:
            os.environ.pop(TF_CACHE_VARIABLE, None)
        else:
            os.environ[TF_CACHE_VARIABLE] = before
    _vouch(entry)
