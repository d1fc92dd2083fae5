"""The sandwich training step with inplace distillation (paper section 3.1).

One step, on one batch of shared patches (see `tf_bignas.data`):

1. the largest child runs at the largest training resolution and learns from
   the labels (cross entropy with label smoothing), with dropout;
2. its predictions, with gradients stopped, become the soft labels of every
   other child (inplace distillation, no temperature, from the first step);
3. the smallest child at the smallest resolution and N random children at
   random training resolutions learn from those soft labels;
4. the gradients of all children are summed, weight decay is added once, and
   the optimizer makes one update.

Switches give the paper's ablations: `inplace_distillation=False` (every
child learns from the labels), `regularize_all_children=True` (dropout on
every child, and each child's own weight decay on the kernel slices it uses,
instead of both on the largest child only). Two more, for short
budgets, where the teacher is weak for much of training: `distill_weight`
(children's targets mix the teacher with the labels) and `distill_ramp_steps`
(the teacher's share rises from 0 over the first steps).

Children are drawn from a stateless generator keyed on (seed, step)
(`ChildSampler`): every replica and every host draws the same children, and a
resumed run draws the ones it would have drawn. The training loop samples them
in-graph (`SandwichStep.run`, which runs K steps in one compiled call, reading
its batches from the iterator on the device); `sample_children` runs the same
sampler eagerly and decodes the draw into `ArchConfig`s, so the host can name
the children of any step. Children enter the per-step computation as stacked
int32 tensors (`Supernet.encode_arch`), and a child's resolution as an index
into the batch's resolutions.

The children of a step run one after another as the iterations of a single
`tf.while_loop` (one iteration per child, the largest first), so the step holds
ONE copy of the supernet's forward and backward instead of one per child: the
first call traces and optimises one child pass, and only one child's
activations are alive at a time. In slice mode the loop body picks the images
of the child's resolution with `tf.switch_case` (one child graph with a dynamic
spatial shape serves them all); in mask mode (XLA, static shapes) the body
holds one branch per training resolution. Synchronized BN under
MirroredStrategy needs a cross-replica reduction that cannot sit inside a
nested graph, so then the children are unrolled in Python, one copy each.

On a CPU host the children can run at the same time instead (`lanes`): the
step holds one copy of the child pass per child, and each child runs in a
lane (`assign_lanes`: by expected MACs, so the lanes end together), after
the child before it in its lane; the largest child's
logits are the only thing the others wait for (their loss), so the other
lanes' forward passes overlap its pass. With one thread per op
(`cpu_threads`), the lanes keep the cores busy with whole ops where the
small convolutions of a child split badly over threads. The same ops on the
same values, and the gradients summed in the same order: the weights are
bit-identical to the loop's at the same thread settings. Not a while loop
with parallel iterations: its iterations share kernel instances, and with
oneDNN's kernels that corrupted the heap (TensorFlow 2.21, tried).

`SandwichStep.run_eagerly` runs one step of `run` op by op, with no trace: a
fresh training run's first step, which then need not wait for tracing and
graph optimisation.

Loss scaling for distribution: each replica's loss is the sum of its
per-example losses divided by the global batch size, and the Keras optimizer
sums the gradients across replicas: scaled exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context as tf_context

from tf_bignas.data.device import network_images
from tf_bignas.model.cost import macs as child_macs
from tf_bignas.model.layers import cpu_gradients
from tf_bignas.model.native import native_ops
from tf_bignas.model.supernet import Supernet
from tf_bignas.space import ArchConfig
from tf_bignas.train import trace_cache
from tf_bignas.train.graph_cache import optimized_graph_cache, traced_graph_digest
from tf_bignas.train.sampler import ChildSampler


@dataclasses.dataclass(frozen=True)
class SandwichOptions:
    """Options of the sandwich step.

    Attributes:
        num_random: Random children per step (N; the paper uses 2).
        inplace_distillation: Children learn from the largest child's soft labels.
        distill_weight: The teacher's share of the children's targets (the rest
            is the smoothed labels); 1.0 is the paper's inplace distillation.
        distill_ramp_steps: Steps over which that share rises linearly from 0
            to `distill_weight` (labels first, the teacher once it has
            learnt something); 0 = from the first step, as in the paper.
        label_smoothing: Label smoothing of the largest child's loss.
        weight_decay: L2 weight decay (on conv and dense kernels), once per step.
        regularize_all_children: Dropout on every child, and each child's own
            weight decay on the kernel slices it uses (the paper's ablation;
            slice mode), not only on the largest child.
        seed: Seed of the child sampler and of dropout.
    """

    num_random: int = 2
    inplace_distillation: bool = True
    distill_weight: float = 1.0
    distill_ramp_steps: int = 0
    label_smoothing: float = 0.1
    weight_decay: float = 1e-5
    regularize_all_children: bool = False
    seed: int = 0


def sample_children(net: Supernet, step: int, options: SandwichOptions) -> list[ArchConfig]:
    """The children of one step: largest, smallest, then N random ones.

    The same children that `SandwichStep.run` draws in-graph for that step.

    Args:
        net: The supernet (its space).
        step: Global step.
        options: Sandwich options (seed, N).

    Returns:
        The list of ArchConfigs, largest first.
    """
    return ChildSampler(net, options.num_random).sample(options.seed, step)


# Grappler passes that leave the sandwich step's graph unchanged when no GPU is
# visible (their node and edge counts before and after are equal, measured
# with TF_CPP_VMODULE=meta_optimizer=1): the layout optimiser only rewrites for
# GPUs, and the shape, loop and implementation-selector passes find nothing.
IDLE_CPU_GRAPH_PASSES = (
    "layout_optimizer",
    "shape_optimization",
    "loop_optimization",
    "implementation_selector",
)


def available_cores() -> int:
    """The CPU cores this process may run on.

    Returns:
        The cores of its affinity mask, else the machine's count (at least 1).
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def child_lanes(
    strategy_name: str, jit_compile: bool, num_children: int, cores: int | None = None
) -> int:
    """How many children a host runs at once (`SandwichStep`'s `lanes`), by default.

    On a CPU-only host with one replica and no XLA: one lane per core, at most
    one per child. Elsewhere 1: an accelerator runs a step's ops in one
    stream, where concurrent children only add memory, and XLA and replicas
    keep the loop.

    Args:
        strategy_name: `runtime.strategy` ("default" is one device).
        jit_compile: Whether the child pass is compiled with XLA.
        num_children: Children per step (2 + the random ones).
        cores: CPU cores to fill (default: `available_cores()`).

    Returns:
        The lanes, >= 1.
    """
    if strategy_name != "default" or jit_compile:
        return 1
    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return 1
    return max(1, min(cores or available_cores(), num_children))


def lane_threads(lanes: int, cores: int | None = None) -> tuple[int, int]:
    """TensorFlow's (intra-op, inter-op) threads for children in `lanes` lanes.

    Each lane's ops get cores // lanes threads, and there is one inter-op
    thread per core, so the lanes fill the cores with whole ops: on 2 cores
    and 2 lanes, one thread per op (the step 1.3-1.4x faster than 2 threads
    per op; `benchmarks/README.md`, "Children at the same time").

    Args:
        lanes: Lanes of children (see `child_lanes`).
        cores: CPU cores (default: `available_cores()`).

    Returns:
        (intra-op threads, inter-op threads).
    """
    cores = cores or available_cores()
    return max(1, cores // max(1, lanes)), cores


def assign_lanes(costs: Sequence[float], lanes: int) -> list[int]:
    """The lane of each child: the costliest first, each to the least loaded lane.

    Greedy longest-first scheduling on the children's expected costs, so the
    lanes end close together: with the largest, the smallest and two random
    children in 2 lanes at one resolution, the largest and the smallest
    share one lane and the random ones the other. (Child i in lane i mod 2
    put the largest with a random child: for the four children of
    `benchmarks/sandwich_step.py` at 64 px, 644 against 470 ms of their
    static steps, where this rule gives 605 against 509.)

    Args:
        costs: Each child's expected cost (e.g. its MACs), in the step's order.
        lanes: Lanes (>= 1).

    Returns:
        A lane index per child; ties go to the earlier child and the lower lane.
    """
    load = [0.0] * max(1, lanes)
    lane = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        lane[i] = min(range(len(load)), key=lambda j: (load[j], j))
        load[lane[i]] += costs[i]
    return lane


def expected_child_macs(net: Supernet, num_random: int, samples: int = 64) -> list[float]:
    """The expected MACs of a step's children: largest, smallest, then each random one.

    Args:
        net: The supernet (its space and classes).
        num_random: Random children per step.
        samples: Random children drawn (fixed seeds) for their mean.

    Returns:
        2 + num_random floats.
    """
    space, nc, short = net.space, net.num_classes, net.stage_shortcuts
    mean = float(np.mean([child_macs(space, space.sample(s), nc, short) for s in range(samples)]))
    largest = child_macs(space, space.largest(), nc, short)
    smallest = child_macs(space, space.smallest(), nc, short)
    return [float(largest), float(smallest)] + [mean] * num_random


def skip_idle_graph_passes() -> bool:
    """Turns off the Grappler passes that change nothing in the step on a CPU-only host.

    The first call of the training step lets Grappler work through a graph of
    about 25,000 nodes; these passes cost about 0.9 CPU s of it on the
    default space at 64 px (the first-step benchmark, `benchmarks/first_step.py`,
    run with `--nolean_grappler` against its default) and leave the graph,
    hence the step, as it was. The setting is TensorFlow's, for the whole
    process; with a GPU visible nothing changes (the layout optimiser matters
    there).

    Returns:
        True if the passes were turned off, False if a GPU is visible.
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    tf.config.optimizer.set_experimental_options({p: False for p in IDLE_CPU_GRAPH_PASSES})
    return True


# Grappler's passes over the step's graph in ONE round, in an order that
# reaches what TensorFlow's default (its list of passes run twice, then the
# memory optimiser) reaches. On the default space at 64 px the default's second
# round did two things: its common-subgraph pass merged the 358 duplicates that
# the dependency optimiser leaves (constants, Merge nodes), and its remapper
# fused the 51 forward swishes (Sigmoid + Mul -> _MklSwish), which it finds
# only once the dependency optimiser has removed the Identity nodes between
# them (since 2026-12-08 training's swishes are native kernels, which it
# leaves alone); the memory optimiser changed nothing. In this order one round gives
# the same optimised graph (the same 16,304 nodes, op for op, up to which of
# two equal constants is kept) and bit-identical losses, and Grappler's time in
# the first call falls from 10.8 to 5.5 s (from its first log line to its last
# with TF_CPP_VMODULE=meta_optimizer=1; `benchmarks/README.md`, "One round of
# Grappler").
ONE_ROUND_GRAPH_PASSES = (
    "pruning",
    "common_subgraph_elimination",
    "constfold",
    "arithmetic",
    "dependency",
    "common_subgraph_elimination",
    "remap",
    "pruning",
)


def one_round_call_options() -> tf_context.FunctionCallOptions | None:
    """Function-call options that optimise a function with `ONE_ROUND_GRAPH_PASSES`.

    The options are this thread's current ones (threads, devices, the
    process's Grappler switches) with the list of passes replaced. TensorFlow
    reads them from each function call, so they apply to the calls made under
    them, not to the process.

    Returns:
        The options, or None when a GPU is visible (its layout optimiser and
        the default rounds matter there).
    """
    if tf.config.list_physical_devices("GPU"):
        return None
    current = tf_context.context().function_call_options
    config = config_pb2.ConfigProto.FromString(current.config_proto_serialized)
    rewrites = config.graph_options.rewrite_options
    rewrites.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    del rewrites.optimizers[:]
    rewrites.optimizers.extend(ONE_ROUND_GRAPH_PASSES)
    return tf_context.FunctionCallOptions(executor_type=current.executor_type, config_proto=config)


@contextlib.contextmanager
def function_call_options(options: tf_context.FunctionCallOptions | None) -> Iterator[None]:
    """Makes the function calls of this thread in the block use `options` (None: as they are).

    Args:
        options: From `one_round_call_options`, or None.

    Yields:
        Nothing; the thread's previous options are back after the block.
    """
    if options is None:
        yield
        return
    ctx = tf_context.context()
    before = ctx.function_call_options
    ctx.function_call_options = options
    try:
        yield
    finally:
        ctx.function_call_options = before


def smoothed_labels(labels: tf.Tensor, num_classes: int, eps: tf.Tensor | float) -> tf.Tensor:
    """One-hot labels with label smoothing: (1 - eps) on the label, plus eps / classes on all.

    Written as eps times 1 / classes, not eps / classes: in a compiled step,
    Grappler's constant folding turns a division by a constant into that
    product, which rounds apart from the division that a step run op by op
    computes (0.1 / 10 is 0.0099999998 in float32, 0.1 * 0.1 is 0.0100000007),
    and the largest child's loss would then differ by a rounding step between
    the two (`SandwichStep.run_eagerly`).

    Args:
        labels: [B] int class indices.
        num_classes: Number of classes.
        eps: Label smoothing in [0, 1] (a float32 scalar tensor or a float).

    Returns:
        [B, num_classes] float32 targets, each row summing to 1 up to rounding.
    """
    return tf.one_hot(labels, num_classes) * (1.0 - eps) + eps * (1.0 / num_classes)


def is_decayed(variable: keras.Variable) -> bool:
    """Whether weight decay applies to a variable (conv, depthwise and dense kernels)."""
    name = variable.path.rsplit("/", 1)[-1]
    return name in ("kernel", "depthwise_kernel")


@dataclasses.dataclass(frozen=True)
class LoopOutput:
    """What `SandwichStep.run` returns (device tensors: reading them syncs the host).

    Attributes:
        losses: [num_children] global mean loss per child at the last step.
        bad_step: The first step of the call with a non-finite loss, or -1.
        bad_losses: The losses of that step (zeros if none).
    """

    losses: tf.Tensor
    bad_step: tf.Tensor
    bad_losses: tf.Tensor


class SandwichStep:
    """Builds and runs the compiled sandwich step for a supernet and optimizer.

    Two entry points share the per-step computation: `run(iterator, step, n)`
    (the training loop: n steps in one compiled call, batches read from the
    iterator and children sampled in-graph) and `__call__(batch, children,
    step)` (one step on given children, for tests and benchmarks).

    Args:
        net: The supernet (created under `strategy.scope()` when distributed).
        optimizer: A Keras optimizer (created under the same scope).
        options: Sandwich options. They enter the compiled step as tensors, so
            `step.options` may be replaced between steps without retracing
            (except `num_random`, which sets the number of children).
        global_batch_size: Global batch size (the loss divisor).
        strategy: The distribution strategy (default strategy if None).
        jit_compile: Compile the child pass with XLA (needs the supernet in mask mode).
        unroll_children: Run the children as unrolled Python code, one copy of
            the child pass per child, instead of one loop body (the structure
            before the loop: a longer first call; kept for benchmarks). Always
            on for synchronized BN across replicas.
        graph_cache_dir: A directory where the step's trace and optimised
            graph are kept across processes (`tf_bignas.train.trace_cache`,
            keyed by what the trace is built from; `tf_bignas.train.graph_cache`,
            keyed by the graph's content): a later process with the same step
            loads the trace instead of tracing (one device, no XLA) and skips
            graph optimisation in its first call. None or "" for no cache.
        lean_grappler: Optimise the step's graph with one round of Grappler
            (`ONE_ROUND_GRAPH_PASSES`) instead of TensorFlow's default two: the
            same graph in about half the time. CPU-only hosts without XLA;
            elsewhere the default.
        lanes: Run the children in this many concurrent lanes, one copy of
            the child pass per child (see the module doc; `child_lanes`
            chooses it for a host). 1: one after another in one loop body.
            More than the children count as one lane per child.

    Raises:
        ValueError: If `jit_compile` is asked for a slice-mode supernet, or
            `lanes` < 1.
    """

    def __init__(
        self,
        net: Supernet,
        optimizer: keras.optimizers.Optimizer,
        options: SandwichOptions,
        global_batch_size: int,
        strategy: tf.distribute.Strategy | None = None,
        jit_compile: bool = False,
        unroll_children: bool = False,
        graph_cache_dir: str | None = None,
        lean_grappler: bool = False,
        lanes: int = 1,
    ) -> None:
        if jit_compile and net.mode != "mask":
            raise ValueError("jit_compile=True needs a supernet with mode='mask' (static shapes)")
        self.net = net
        self.optimizer = optimizer
        self.options = options
        self.global_batch_size = int(global_batch_size)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.resolutions = tuple(sorted(net.space.train_resolutions))
        self.sampler = ChildSampler(net, options.num_random)
        # A cross-replica reduction (synchronized BN) cannot run inside a nested
        # graph (a tf.function or a while loop) under MirroredStrategy: then
        # the child pass is inlined and the children unrolled.
        cross_replica = (
            self.strategy.num_replicas_in_sync > 1 and net.synchronized_bn and not jit_compile
        )
        if lanes < 1:
            raise ValueError(
                f"lanes must be >= 1 (1 = the children one after another), got {lanes}"
            )
        self.lanes = min(int(lanes), self.sampler.num_children)
        self.child_lane = (
            assign_lanes(expected_child_macs(net, options.num_random), self.lanes)
            if self.lanes > 1
            else [0] * self.sampler.num_children
        )
        self.unrolled = cross_replica or unroll_children or self.lanes > 1
        if cross_replica:
            self._child_fn = self._child_pass
        else:
            self._child_fn = tf.function(
                self._child_pass, jit_compile=jit_compile or None, autograph=False
            )
        # No AutoGraph: the step's control flow is explicit (tf.while_loop,
        # tf.switch_case), and converting the supernet's code costs seconds of
        # tracing for nothing.
        self._step_fn = tf.function(self._distributed_step, autograph=False)
        self._loop_fn = tf.function(self._distributed_loop, autograph=False)
        self.graph_cache_dir = graph_cache_dir or None
        self._instantiated: set[str] = set()
        # Every call of the step uses the same options (they are part of what
        # TensorFlow instantiates), taken at its first call (`_call_options`).
        self._one_round = lean_grappler and not jit_compile
        self.jit_compile = bool(jit_compile)
        # Create the optimizer's slots now: variable creation inside the first
        # call would make tf.function trace the step twice.
        with self.strategy.scope():
            optimizer.build(net.trainable_variables)
        # The trace cache (with the graph cache): one device, no XLA. The
        # variables a stored trace may capture, in a fixed order.
        self._trace_cached = (
            self.graph_cache_dir is not None
            and self.strategy.num_replicas_in_sync == 1
            and not jit_compile
        )
        self._variables = list(net.variables) + list(optimizer.variables)
        # Per argument signature: the stored step and its captured handles, or None.
        self._stored_loops: dict[object, tuple[trace_cache.StoredStep, list] | None] = {}

    @property
    def tracing_count(self) -> int:
        """How many times the one-step function (`__call__`) has been traced."""
        return self._step_fn.experimental_get_tracing_count()

    @property
    def loop_tracing_count(self) -> int:
        """How many times the K-step function (`run`) has been traced."""
        return self._loop_fn.experimental_get_tracing_count()

    @property
    def child_tracing_count(self) -> int:
        """Traces of the per-child forward/backward (0 when it is inlined)."""
        fn = self._child_fn
        return (
            fn.experimental_get_tracing_count()
            if hasattr(fn, "experimental_get_tracing_count")
            else 0
        )

    def sample_children(self, step: int) -> list[ArchConfig]:
        """The children that `run` draws at a step (largest, smallest, random...)."""
        return self.sampler.sample(self.options.seed, step)

    def encode_children(self, children: Sequence[ArchConfig]) -> dict[str, np.ndarray]:
        """Stacks the children's encodings and their resolution indices.

        Args:
            children: Largest, smallest, then random children.

        Returns:
            Encoded arrays, each with a leading [num_children] axis, plus
            "res_index" ([num_children] int32).
        """
        encoded = [self.net.encode_arch(c) for c in children]
        out = {k: np.stack([e[k] for e in encoded]) for k in encoded[0]}
        out["res_index"] = np.asarray(
            [self.resolutions.index(c.resolution) for c in children], np.int32
        )
        return out

    def __call__(
        self,
        batch: Mapping[str, object],
        children: Sequence[ArchConfig],
        step: int,
    ) -> dict[str, np.ndarray]:
        """Runs one step on given children.

        Args:
            batch: A (distributed) batch {"images": {res: ...}, "label": ...}.
            children: From `sample_children` (largest, smallest, random...).
            step: Global step (seeds dropout).

        Returns:
            {"losses": [num_children] float array, global mean loss per child}.
        """
        archs = self.encode_children(children)
        losses = self._call(
            self._step_fn, batch, archs, tf.constant(step, tf.int64), self._knobs(len(children))
        )
        return {"losses": losses.numpy()}

    def run(self, iterator: object, step: int, num_steps: int = 1) -> LoopOutput:
        """Runs `num_steps` steps in one compiled call (the on-device training loop).

        Each step reads its batch from the iterator and draws its children
        in-graph from (seed, step). The function is traced once whatever
        `num_steps` is, and K calls of one step equal one call of K steps
        (the same graph, the same ops, the same order).

        Args:
            iterator: An iterator over (distributed) batches, as from
                `iter(strategy.distribute_datasets_from_function(...))`.
            step: Global step of the first step (the optimizer's iteration count).
            num_steps: Steps to run (>= 1).

        Returns:
            The LoopOutput (tensors; nothing is copied to the host here).

        Raises:
            ValueError: If num_steps < 1.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        args = self._loop_args(iterator, step, num_steps)
        stored = self._stored_loop(args)
        if stored is None:
            losses, bad_step, bad_losses = self._call(self._loop_fn, *args)
        else:
            losses, bad_step, bad_losses = self._call_stored(*stored)
        return LoopOutput(losses, bad_step, bad_losses)

    @property
    def can_run_eagerly(self) -> bool:
        """Whether `run_eagerly` can run this step (one replica, no XLA)."""
        return (
            self.strategy.num_replicas_in_sync == 1
            and not self.jit_compile
            and not isinstance(self.strategy, tf.distribute.TPUStrategy)
        )

    def run_eagerly(self, iterator: object, step: int) -> LoopOutput:
        """Runs one step op by op, without tracing: what `run(iterator, step, 1)` computes.

        The first step of a fresh run need not wait for the compiled step
        (tracing and graph optimisation take most of a cold start): run op by
        op, it starts as soon as the supernet is built. It reads its batch
        from the iterator and draws its children from (seed, step) as `run`
        does, with the same ops on the same values. Its losses equal the
        compiled step's bit for bit; the weights after it agree to float
        rounding, not bit for bit (the traced gradients add some terms in
        another order, with Grappler off too): `tests/test_step_loop.py`.
        It takes several times the compiled step's time
        (`benchmarks/throughput.py`), and no trace.

        Args:
            iterator: The iterator that `run` reads.
            step: Global step (the optimizer's iteration count).

        Returns:
            The LoopOutput of the step.

        Raises:
            ValueError: If the step cannot run op by op (`can_run_eagerly`).
        """
        if not self.can_run_eagerly:
            raise ValueError(
                "run_eagerly needs one replica and no XLA (jit_compile); this step has "
                f"{self.strategy.num_replicas_in_sync} replicas under "
                f"{type(self.strategy).__name__}, jit_compile={self.jit_compile}"
            )
        knobs = self._knobs(self.sampler.num_children)
        losses, bad_step, bad_losses = self._distributed_loop(
            iterator, tf.constant(step, tf.int64), tf.constant(1, tf.int64), knobs
        )
        return LoopOutput(losses, bad_step, bad_losses)

    def trace(self, iterator: object) -> str:
        """Traces `run` now, for batches from `iterator` (its later calls reuse the trace).

        Graph names come from process-wide counters, so a trace taken before
        anything else builds graphs (restoring a checkpoint does) is the same
        graph, names included, in a fresh run and in its resume: the graph
        cache (`graph_cache_dir`) then serves the resume.

        With a graph cache, a trace stored by an earlier process with the
        same key is loaded instead (`tf_bignas.train.trace_cache`), and a new
        trace is stored.

        Args:
            iterator: The iterator that `run` will read.

        Returns:
            What was done, for the run's log: "traced", "traced and stored in
            the trace cache" or "trace loaded from the trace cache".
        """
        args = self._loop_args(iterator, 0, 1)
        traces = self.loop_tracing_count
        stored = self._stored_loop(args)
        if stored is None:
            self._loop_fn.get_concrete_function(*args)
            return "traced"
        if self.loop_tracing_count > traces:
            return "traced and stored in the trace cache"
        return "trace loaded from the trace cache"

    def _stored_loop(
        self, args: tuple
    ) -> tuple[trace_cache.StoredStep, list[tf.Tensor], list[tf.Tensor]] | None:
        """The K-step function from the trace cache for these arguments, with its inputs.

        Loads the trace an earlier process stored under the step's key, or
        traces and stores it; once per argument signature in a process.

        Args:
            args: The K-step function's arguments (`_loop_args`).

        Returns:
            (stored function, flat inputs, its captured variables' handles),
            or None when the trace cache is off or cannot hold this step
            (then `_loop_fn` runs).
        """
        if not self._trace_cached:
            return None
        constants, flat = trace_cache.split_arguments(args)
        # An iterator enters as a resource handle whatever it yields: its spec too.
        signature = (
            repr(constants),
            tuple((t.dtype, tuple(t.shape)) for t in flat),
            repr(getattr(args[0], "element_spec", None)),
        )
        if signature not in self._stored_loops:
            key = trace_cache.TraceKey.of(
                self._trace_settings(args[0]),
                (self.net, self.optimizer, self),
                self._variables,
                constants,
                flat,
            )
            stored = trace_cache.load(self.graph_cache_dir, key)
            if stored is None:
                concrete = self._loop_fn.get_concrete_function(*args)
                stored = trace_cache.store(
                    self.graph_cache_dir,
                    key,
                    concrete,
                    flat,
                    self._variables,
                    traced_graph_digest(concrete),
                )
            self._stored_loops[signature] = (
                None if stored is None else (stored, stored.captured_inputs(self._variables))
            )
        stored = self._stored_loops[signature]
        return None if stored is None else (stored[0], flat, stored[1])

    def _native_gradients(self) -> bool:
        """Whether the step's gradients use the native kernels (`tf_bignas.model.native`).

        Only asks for the kernels (a build on a machine's first run) where the
        supernet would use them: slice mode, no GPU, `native_kernels`.
        """
        net = self.net
        return bool(
            net.native_kernels and cpu_gradients(net.mode) and native_ops().library is not None
        )

    def _trace_settings(self, iterator: object) -> list[str]:
        """What the K-step function's trace is built from, besides code, variables and inputs.

        Not the options: they enter as the knobs' tensors and constants (the
        inputs), and `num_random` as the number of children; so the runs of
        a sweep over seeds or distillation weights share one trace.

        Args:
            iterator: The iterator the step reads.

        Returns:
            Lines of text for the key (`trace_cache.TraceKey`).
        """
        net, strategy = self.net, self.strategy
        try:
            devices = strategy.extended.worker_devices
        except RuntimeError:  # the default strategy has none
            devices = None
        return [
            f"step={type(self).__qualname__} batch={self.global_batch_size} "
            f"resolutions={self.resolutions} unrolled={self.unrolled} "
            f"children={self.sampler.num_children} lanes={self.lanes}",
            f"strategy={type(strategy).__qualname__} devices={devices!r}",
            f"net={type(net).__qualname__} {net.space!r} classes={net.num_classes} "
            f"mode={net.mode} zero_init={net.zero_init_last_bn} "
            f"shortcuts={net.stage_shortcuts} sync_bn={net.synchronized_bn} "
            f"dropout={net.dropout_rate} eps={net.bn_epsilon} "
            f"shared_blocks={net.share_block_traces} native={self._native_gradients()}",
            f"optimizer={type(self.optimizer).__qualname__} "
            f"{sorted(self.optimizer.get_config().items())!r}",
            f"iterator={getattr(iterator, 'element_spec', None)!r}",
        ]

    def _call_stored(
        self, stored: trace_cache.StoredStep, flat: list[tf.Tensor], captured: list[tf.Tensor]
    ) -> list[tf.Tensor]:
        """Calls a stored function; its first call goes through the graph cache."""
        with function_call_options(self._call_options):
            if stored.name in self._instantiated:
                return stored(flat, captured)
            with optimized_graph_cache(self.graph_cache_dir, stored.graph_digest):
                out = stored(flat, captured)
        self._instantiated.add(stored.name)
        return out

    @functools.cached_property
    def _call_options(self) -> tf_context.FunctionCallOptions | None:
        """The function-call options of every call of the step (None: the thread's own)."""
        return one_round_call_options() if self._one_round else None

    def _loop_args(self, iterator: object, step: int, num_steps: int) -> tuple:
        """The arguments of the K-step function: `run` calls it with them, `trace` traces it."""
        return (
            iterator,
            tf.constant(step, tf.int64),
            tf.constant(num_steps, tf.int64),
            self._knobs(self.sampler.num_children),
        )

    def _call(self, fn: tf.types.experimental.PolymorphicFunction, *args: object) -> object:
        """Calls a compiled entry point; its first call goes through the graph cache.

        Only the first call: a later retrace (a new input signature, rare in
        training) optimises its graph without the cache, and no call pays for
        looking up its trace twice.
        """
        with function_call_options(self._call_options):
            if self.graph_cache_dir is None or fn.__name__ in self._instantiated:
                return fn(*args)
            digest = traced_graph_digest(fn.get_concrete_function(*args))
            with optimized_graph_cache(self.graph_cache_dir, digest):
                out = fn(*args)
        self._instantiated.add(fn.__name__)
        return out

    def _knobs(self, num_children: int) -> dict[str, np.ndarray]:
        """The options as tensors: changing `self.options` between steps never retraces."""
        opts = self.options
        every = opts.regularize_all_children
        regularized = [1.0] + [1.0 if every else 0.0] * (num_children - 1)
        return {
            "distill": np.float32(opts.distill_weight if opts.inplace_distillation else 0.0),
            "distill_ramp_steps": np.float32(opts.distill_ramp_steps),
            "label_smoothing": np.float32(opts.label_smoothing),
            "dropout": np.asarray(regularized, np.float32),
            "weight_decay": np.float32(opts.weight_decay),
            # Each other child's own decay, on the kernel slices it uses. A
            # Python bool: the step's graph holds the decay only when it is on
            # (switching it retraces once).
            "own_decay": bool(every),
            "child_decay": np.asarray(
                [0.0] + [opts.weight_decay if every else 0.0] * (num_children - 1), np.float32
            ),
            "seed": np.int64(opts.seed),
        }

    # ---- compiled parts -------------------------------------------------------
    def _distributed_step(self, batch, archs, step, knobs):
        per_replica = self.strategy.run(self._replica_step, args=(batch, archs, step, knobs))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _distributed_loop(self, iterator, first_step, num_steps, knobs):
        num_children = self.sampler.num_children

        def sampled_step(batch, step):
            archs = self.sampler.encode(knobs["seed"], step)
            return self._replica_step(batch, archs, step, knobs)

        def body(k, losses, bad_step, bad_losses):
            step = first_step + k
            per_replica = self.strategy.run(sampled_step, args=(next(iterator), step))
            losses = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            first_bad = tf.logical_and(
                bad_step < 0, tf.logical_not(tf.reduce_all(tf.math.is_finite(losses)))
            )
            bad_step = tf.where(first_bad, step, bad_step)
            bad_losses = tf.where(first_bad, losses, bad_losses)
            return k + 1, losses, bad_step, bad_losses

        zeros = tf.zeros([num_children], tf.float32)
        _, losses, bad_step, bad_losses = tf.while_loop(
            lambda k, *_: k < num_steps,
            body,
            (tf.constant(0, tf.int64), zeros, tf.constant(-1, tf.int64), zeros),
            parallel_iterations=1,
        )
        return losses, bad_step, bad_losses

    def _child_pass(self, x, arch, targets, seed, dropout, decay=None):
        """Forward and backward of one child: (logits, loss, gradients).

        `decay` (None or a scalar tensor): the child's own weight decay, added
        to the gradients of the kernel slices it uses.
        """
        net = self.net
        variables = net.trainable_variables
        with tf.GradientTape() as tape:
            logits = net(
                x,
                arch=arch,
                training=True,
                dropout=dropout,
                dropout_seed=seed,
                weight_decay=decay,
            )
            per_example = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
        # The TensorFlow variables: the tape's zeros for an unconnected weight (a
        # child's skipped block, op by op) need a dtype, and a Keras variable's
        # is a string.
        sources = [v.value for v in variables]
        grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # Static shapes (a sliced weight's gradient is padded to an unknown shape):
        # the gradients are the loop variables of the children's loop.
        return logits, loss, [tf.reshape(g, v.shape) for g, v in zip(grads, variables)]

    def _replica_step(self, batch, archs, step, knobs):
        net = self.net
        variables = net.trainable_variables
        # Normalised float32 at every resolution, from any transport (uint8 pixels
        # are normalised here, a shared patch is resized here: tf_bignas.data.device).
        images = network_images(batch, self.resolutions)
        labels = tf.cast(batch["label"], tf.int32)
        num_children = archs["res_index"].shape[0]
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        base_seed = tf.stack([knobs["seed"], step])
        eps = knobs["label_smoothing"]
        smooth = smoothed_labels(labels, net.num_classes, eps)
        resolutions = self.resolutions
        # Ablation (data.crop_per_child): [B, K, r, r, 3], the k-th crop for the k-th child.
        crops = images[resolutions[0]].shape[1] if images[resolutions[0]].shape.rank == 5 else 0
        if crops and crops != num_children:
            raise ValueError(
                f"the batch holds {crops} crops per example, one per child, but the step has "
                f"{num_children} children; build the data with child_crops={num_children}"
            )

        def child(i, targets):
            def image(r):
                return tf.gather(images[r], i, axis=1) if crops else images[r]

            arch = {k: tf.gather(v, i) for k, v in archs.items() if k != "res_index"}
            salt = tf.cast(i * 1009 + replica, tf.int64)
            seed = tf.cast(tf.random.experimental.stateless_fold_in(base_seed, salt), tf.int32)
            dropout = tf.gather(knobs["dropout"], i)
            decay = tf.gather(knobs["child_decay"], i) if knobs["own_decay"] else None
            index = tf.gather(archs["res_index"], i)
            # Op by op (`run_eagerly`): the pass itself, not its compiled function.
            child_fn = self._child_pass if tf.executing_eagerly() else self._child_fn
            if len(resolutions) == 1:
                return child_fn(image(resolutions[0]), arch, targets, seed, dropout, decay)
            if self.net.mode == "slice":
                # Pick the images in-graph: one child graph, with a dynamic
                # spatial shape, serves every child and resolution.
                x = tf.switch_case(index, [lambda r=r: image(r) for r in resolutions])
                return child_fn(x, arch, targets, seed, dropout, decay)
            # Mask mode (XLA): static shapes, so one branch per resolution.
            branches = [
                (lambda r=r: child_fn(image(r), arch, targets, seed, dropout, decay))
                for r in resolutions
            ]
            return tf.switch_case(index, branches)

        # The teacher's share of the children's targets at this step (ramped).
        ramp = (tf.cast(step, tf.float32) + 1.0) / tf.maximum(knobs["distill_ramp_steps"], 1.0)
        distill = knobs["distill"] * tf.minimum(1.0, ramp)

        def soft_labels(teacher_logits):
            """The targets of the other children: the teacher's predictions (or the labels)."""
            teacher = tf.stop_gradient(tf.nn.softmax(teacher_logits))
            return distill * teacher + (1.0 - distill) * smooth

        if self.unrolled:
            # 1. The largest child on the labels; 2. the others on its soft
            # labels. Child i runs in lane `child_lane[i]`, after its lane's
            # last child (the lanes run at the same time; the sum keeps its order).
            lanes, lane = self.lanes, self.child_lane
            teacher_logits, loss, grads = child(0, smooth)
            targets = soft_labels(teacher_logits)
            losses = [loss]
            ends = [[] for _ in range(lanes)]
            ends[lane[0]] = [loss, *grads]
            for i in range(1, num_children):
                with tf.control_dependencies(ends[lane[i]] if lanes > 1 else []):
                    _, loss_i, grads_i = child(i, targets)
                ends[lane[i]] = [loss_i, *grads_i]
                losses.append(loss_i)
                grads = [g + gi for g, gi in zip(grads, grads_i)]
            losses = tf.stack(losses)
        else:
            # One loop body for every child: child 0 (the largest) learns from
            # the labels and its predictions become the targets of the rest.
            def body(i, targets, losses, grads):
                logits, loss, grads_i = child(i, targets)
                targets = tf.where(i == 0, soft_labels(logits), targets)
                losses = losses + tf.one_hot(i, num_children) * loss
                return i + 1, targets, losses, [g + gi for g, gi in zip(grads, grads_i)]

            _, _, losses, grads = tf.while_loop(
                lambda i, *_: i < num_children,
                body,
                (
                    tf.constant(0),
                    smooth,
                    tf.zeros([num_children]),
                    [tf.zeros(v.shape, v.dtype) for v in variables],
                ),
                parallel_iterations=1,
            )
        # 3. The largest child's weight decay, on every weight (all of them are
        # its own), once per step (the optimizer sums replicas: divide here).
        scale = knobs["weight_decay"] / self.strategy.num_replicas_in_sync
        grads = [g + scale * v if is_decayed(v) else g for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        return losses
