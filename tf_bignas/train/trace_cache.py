"""A persistent cache of the training step's trace: a later process skips Python tracing.

Before its first step, a process traces the compiled training loop in
Python: on the default space that builds about 18,000 graph nodes and takes
7-10 s, every time a run starts or resumes (`benchmarks/README.md`). The
graph cache (`tf_bignas.train.graph_cache`) already spares a later process
the graph optimisation; this module spares it the trace. The traced
function and every function it calls are stored as TensorFlow's own
`FunctionDef`s; a later process with the same key registers them with the
eager runtime and calls the step by name, with its own variables in the
places the trace captured, without running any Python of the supernet.

The key (`TraceKey`) is a SHA-256 of everything the traced graph is built
from: the source of every module of `tf_bignas` and of the classes of the
supernet, optimizer and step, TensorFlow's and Keras's versions with Keras's
dtype policy and image layout, whether op determinism is on, the supernet's
and the step's settings, the optimizer's configuration, every variable's
path, shape and dtype in order, the iterator's element spec and the
arguments' dtypes and shapes. Anything
else would have to change the trace without changing any of them (code
patched into TensorFlow at run time, say); for that case `graph_cache_dir=''`
turns the cache off.

Every function is renamed with the key (`<name>_tc<key[:12]>`) when it is
stored: names that TensorFlow gives later traces in the same process come
from counters that the loaded functions did not advance, and a clash would
make the runtime refuse one of them. The process that traced runs the
renamed copy too, so the process that wrote an entry and every process that
reads it run the same functions (and read the same optimised graph from the
graph cache): `tests/test_trace_cache.py` checks the losses bit for bit.

An entry is `<root>/traces/<key>.pb` (a `FunctionDefLibrary`) with
`<key>.json` beside it, which holds the outer function's name, the variables
it captures (their indices), the traced graph's digest (the graph cache's
key) and the `.pb`'s SHA-256; a `.pb` whose digest does not match is removed
and the step traced again. Both files are written atomically. A process
runs the functions it finds under its key, as it reads the optimised graph
TensorFlow finds: keep the cache where the run's checkpoints are (the
default, `<workdir>/graph_cache`) or in another directory you trust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.python.eager import context

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json
from tf_bignas.train.graph_cache import op_determinism

#: Sub-directory of the cache root that holds the traces.
TRACES_DIR = "traces"

#: Version of the entry format (part of the key).
FORMAT = 1

#: Ops that call back into the process that traced them: a trace that holds
#: one cannot run in another process, so it is not stored.
_PROCESS_BOUND_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def split_arguments(args: Sequence[object]) -> tuple[list[object], list[tf.Tensor]]:
    """Splits a function's arguments into its trace constants and its flat tensor inputs.

    Tensors, NumPy arrays and scalars become the flat inputs (in the order of
    `tf.nest.flatten`, composites such as iterators expanded to their
    components), as `tf.function` flattens them; Python values (bool, int,
    float, str, None) are constants of the trace.

    Args:
        args: The positional arguments of the call.

    Returns:
        (constants, flat tensor inputs).
    """
    constants: list[object] = []
    flat: list[tf.Tensor] = []
    for leaf in tf.nest.flatten(list(args), expand_composites=True):
        if isinstance(leaf, (bool, int, float, str)) or leaf is None:
            constants.append(leaf)
        elif isinstance(leaf, (np.ndarray, np.generic)):
            flat.append(tf.constant(leaf))
        else:
            flat.append(leaf)
    return constants, flat


def _source_digest(files: dict[str, str]) -> str:
    """A digest of source files, each under its name (not its path: a moved checkout hits)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        with open(files[name], "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _sources(objects: Sequence[object]) -> dict[str, str]:
    """Every .py and .cc file of the tf_bignas package and the modules that define `objects`' classes.

    Returns:
        Name (a path inside the package, or a module's name) -> file path.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {
        os.path.relpath(os.path.join(d, name), package): os.path.join(d, name)
        for d, _, names in os.walk(package)
        for name in names
        if name.endswith((".py", ".cc"))
    }
    for obj in objects:
        for cls in type(obj).__mro__:
            module = sys.modules.get(cls.__module__)
            path = getattr(module, "__file__", None)
            if path and path.endswith(".py") and not path.startswith(os.path.dirname(tf.__file__)):
                files[cls.__module__] = path
    return files


@dataclasses.dataclass(frozen=True)
class TraceKey:
    """The key of a trace: a digest of what the traced graph is built from.

    Attributes:
        digest: 64 hex characters.
        text: What was hashed, apart from the sources (for the entry's JSON).
    """

    digest: str
    text: str

    @classmethod
    def of(
        cls,
        settings: Sequence[str],
        owners: Sequence[object],
        variables: Sequence[Any],
        constants: Sequence[object],
        flat: Sequence[tf.Tensor],
    ) -> TraceKey:
        """Builds the key.

        Args:
            settings: Lines that describe the step (its model's, options' and
                optimizer's settings, its strategy, the iterator's spec).
            owners: Objects whose classes' source files are part of the key
                (the supernet, optimizer, step).
            variables: The variables the trace may capture, in order.
            constants: The trace's constant arguments (`split_arguments`).
            flat: The flat tensor inputs (`split_arguments`).

        Returns:
            The key.
        """
        lines = [
            f"format={FORMAT}",
            f"tf={tf.__version__} git={tf.__git_version__} keras={keras.__version__}",
            f"floatx={keras.config.floatx()} policy={keras.config.dtype_policy().name} "
            f"layout={keras.config.image_data_format()}",
            # Some of TensorFlow's Python picks other ops under op determinism.
            f"deterministic={op_determinism()}",
            # The depthwise filter gradient's form depends on it
            # (`tf_bignas.model.layers.depthwise_conv2d_same`).
            f"gpu={bool(tf.config.list_physical_devices('GPU'))}",
            *settings,
            f"constants={constants!r}",
            "inputs=" + repr([(t.dtype.name, tuple(t.shape)) for t in flat]),
            *(f"var {v.path} {tuple(v.shape)} {v.dtype} {v.trainable}" for v in variables),
        ]
        text = "\n".join(lines)
        h = hashlib.sha256(text.encode())
        h.update(_source_digest(_sources(owners)).encode())
        return cls(h.hexdigest(), text)


def _handle(variable: Any) -> tf.Tensor | None:
    """The resource handle a traced graph captures for a (Keras or TensorFlow) variable.

    None for a variable without one handle (a distributed variable outside a
    replica, say): a trace that captures it is not stored.
    """
    for owner in (variable, getattr(variable, "value", None)):
        try:
            handle = getattr(owner, "handle", None)
        except (ValueError, RuntimeError):
            continue
        if isinstance(handle, tf.Tensor):
            return handle
    return None


def _rename(library: function_pb2.FunctionDefLibrary, suffix: str) -> dict[str, str]:
    """Renames every function of a library, and every reference to it, in place.

    Args:
        library: The functions.
        suffix: Appended to each name.

    Returns:
        Old name -> new name.
    """
    names = {f.signature.name: f.signature.name + suffix for f in library.function}

    def fix(attr: Any) -> None:
        if attr.HasField("func") and attr.func.name in names:
            attr.func.name = names[attr.func.name]
        for fn in attr.list.func:
            if fn.name in names:
                fn.name = names[fn.name]

    for f in library.function:
        f.signature.name = names[f.signature.name]
        for node in f.node_def:
            for attr in node.attr.values():
                fix(attr)
        for attr in f.attr.values():
            fix(attr)
    return names


@dataclasses.dataclass(frozen=True)
class StoredStep:
    """A traced function registered with the eager runtime, callable by name.

    Attributes:
        name: The (renamed) outer function.
        num_outputs: Its flat outputs.
        captures: For each captured input, the index of its variable.
        graph_digest: The traced graph's digest (`graph_cache.traced_graph_digest`).
    """

    name: str
    num_outputs: int
    captures: tuple[int, ...]
    graph_digest: str

    def captured_inputs(self, variables: Sequence[Any]) -> list[tf.Tensor]:
        """The handles of `variables` that go where the trace captured them (once per process).

        Args:
            variables: The variables the key was built with, in the same order.

        Returns:
            The handles, in the trace's order of captures.
        """
        return [_handle(variables[i]) for i in self.captures]

    def __call__(self, flat: Sequence[tf.Tensor], captured: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Runs the function on flat inputs and the captured variables' handles.

        Args:
            flat: The flat tensor inputs (`split_arguments`).
            captured: `captured_inputs(variables)`.

        Returns:
            The flat outputs.
        """
        inputs = [*flat, *captured]
        return context.context().call_function(self.name.encode(), inputs, self.num_outputs)


def _register(library: function_pb2.FunctionDefLibrary) -> None:
    ctx = context.context()
    for fdef in library.function:
        ctx.add_function_def(fdef)


def _paths(root: str, key: TraceKey) -> tuple[str, str]:
    base = os.path.join(root, TRACES_DIR, key.digest)
    return base + ".pb", base + ".json"


def load(root: str, key: TraceKey) -> StoredStep | None:
    """Registers the stored trace of `key`, if there is an intact one.

    Args:
        root: The cache's root directory.
        key: The step's key.

    Returns:
        The stored step, or None (no entry, or a damaged one, which is removed).
    """
    pb, meta_path = _paths(root, key)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        with open(pb, "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        logging.getLogger(__name__).warning(
            "trace cache: %s does not match its checksum; removed, the step is traced again", pb
        )
        for path in (pb, meta_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return None
    library = function_pb2.FunctionDefLibrary()
    library.ParseFromString(data)
    _register(library)
    logging.getLogger(__name__).info("trace cache: loaded the step's trace from %s", pb)
    return StoredStep(
        meta["function"], int(meta["num_outputs"]), tuple(meta["captures"]), meta["graph_digest"]
    )


def store(
    root: str,
    key: TraceKey,
    concrete: tf.types.experimental.ConcreteFunction,
    flat: Sequence[tf.Tensor],
    variables: Sequence[Any],
    graph_digest: str,
) -> StoredStep | None:
    """Stores a traced function under `key` and registers its renamed copy.

    Args:
        root: The cache's root directory (created if missing).
        key: The step's key.
        concrete: The traced function.
        flat: The flat inputs it was traced for (`split_arguments`).
        variables: The variables of the key, in order.
        graph_digest: The traced graph's digest.

    Returns:
        The stored step, or None when the trace cannot be stored: it captures
        something other than these variables, or its inputs are not `flat`'s
        (the caller then runs `concrete` itself).

    Raises:
        OSError: If the directory cannot be written (names the path).
    """
    log = logging.getLogger(__name__)
    handles = [_handle(v) for v in variables]
    index = {id(h): i for i, h in enumerate(handles) if h is not None}
    captured = concrete.captured_inputs
    if any(id(c) not in index for c in captured):
        log.info("trace cache: the step captures values other than variables; not stored")
        return None
    inputs = concrete.inputs[: len(concrete.inputs) - len(captured)]
    if [(t.dtype, t.shape.as_list() if t.shape.rank is not None else None) for t in inputs] != [
        (t.dtype, t.shape.as_list()) for t in flat
    ]:
        log.info("trace cache: the step's inputs are not the flattened arguments; not stored")
        return None
    atomic = concrete._inference_function  # noqa: SLF001  (the function eager execution runs)
    library = function_pb2.FunctionDefLibrary()
    library.function.extend(concrete.graph.as_graph_def().library.function)
    library.function.append(atomic.definition)
    python_ops = {n.op for f in library.function for n in f.node_def if n.op in _PROCESS_BOUND_OPS}
    if python_ops:
        log.info("trace cache: the step calls Python (%s); not stored", sorted(python_ops))
        return None
    names = _rename(library, "_tc" + key.digest[:12])
    step = StoredStep(
        names[atomic.name.decode() if isinstance(atomic.name, bytes) else atomic.name],
        len(atomic.function_type.flat_outputs),
        tuple(index[id(c)] for c in captured),
        graph_digest,
    )
    data = library.SerializeToString(deterministic=True)
    pb, meta_path = _paths(root, key)
    try:
        os.makedirs(os.path.dirname(pb), exist_ok=True)
        atomic_write_bytes(pb, data)
        atomic_write_json(
            meta_path,
            {
                "function": step.name,
                "num_outputs": step.num_outputs,
                "captures": list(step.captures),
                "graph_digest": graph_digest,
                "sha256": hashlib.sha256(data).hexdigest(),
                "key": key.text.splitlines()[:8],
            },
        )
    except OSError as e:
        raise OSError(
            f"cannot write the trace cache entry {pb!r} ({e.strerror}); "
            "set runtime.graph_cache_dir to a writable directory, or '' for no cache"
        ) from e
    _register(library)
    return step
