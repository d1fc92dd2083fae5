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
child learns from the labels), `regularize_all_children=True` (dropout and
weight decay on every child instead of the largest only).

Children are sampled in Python from a stateless generator keyed on
(seed, step), so every replica and every host draws the same children, and a
resumed run draws the ones it would have drawn. They enter the compiled step
as stacked int32 tensors (`Supernet.encode_arch`), and a random child's
resolution as an index into the batch's resolutions, dispatched in-graph with
`tf.switch_case` whose branches each have static shapes: the step function is
traced once for the whole run, in slice mode and under XLA alike.

Loss scaling for distribution: each replica's loss is the sum of its
per-example losses divided by the global batch size, and the Keras optimizer
sums the gradients across replicas: scaled exactly once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_bignas.data.device import network_images
from tf_bignas.model.supernet import Supernet
from tf_bignas.space import ArchConfig


@dataclasses.dataclass(frozen=True)
class SandwichOptions:
    """Options of the sandwich step.

    Attributes:
        num_random: Random children per step (N; the paper uses 2).
        inplace_distillation: Children learn from the largest child's soft labels.
        label_smoothing: Label smoothing of the largest child's loss.
        weight_decay: L2 weight decay (on conv and dense kernels), once per step.
        regularize_all_children: Dropout and weight decay on every child.
        seed: Seed of the child sampler and of dropout.
    """

    num_random: int = 2
    inplace_distillation: bool = True
    label_smoothing: float = 0.1
    weight_decay: float = 1e-5
    regularize_all_children: bool = False
    seed: int = 0


def sample_children(net: Supernet, step: int, options: SandwichOptions) -> list[ArchConfig]:
    """The children of one step: largest, smallest, then N random ones.

    Args:
        net: The supernet (its space).
        step: Global step.
        options: Sandwich options (seed, N).

    Returns:
        The list of ArchConfigs, largest first.
    """
    space = net.space
    rng = np.random.default_rng([options.seed, int(step)])
    children = [space.largest(), space.smallest()]
    children += [space.sample(rng) for _ in range(options.num_random)]
    return children


def _is_decayed(variable: keras.Variable) -> bool:
    name = variable.path.rsplit("/", 1)[-1]
    return name in ("kernel", "depthwise_kernel")


class SandwichStep:
    """Builds and runs the compiled sandwich step for a supernet and optimizer.

    Args:
        net: The supernet (created under `strategy.scope()` when distributed).
        optimizer: A Keras optimizer (created under the same scope).
        options: Sandwich options. They enter the compiled step as tensors, so
            `step.options` may be replaced between steps without retracing.
        global_batch_size: Global batch size (the loss divisor).
        strategy: The distribution strategy (default strategy if None).
        jit_compile: Compile the step with XLA (needs the supernet in mask mode).
    """

    def __init__(
        self,
        net: Supernet,
        optimizer: keras.optimizers.Optimizer,
        options: SandwichOptions,
        global_batch_size: int,
        strategy: tf.distribute.Strategy | None = None,
        jit_compile: bool = False,
    ) -> None:
        if jit_compile and net.mode != "mask":
            raise ValueError("jit_compile=True needs a supernet with mode='mask' (static shapes)")
        self.net = net
        self.optimizer = optimizer
        self.options = options
        self.global_batch_size = int(global_batch_size)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.resolutions = tuple(sorted(net.space.train_resolutions))
        if self.strategy.num_replicas_in_sync > 1 and net.synchronized_bn and not jit_compile:
            # A cross-replica reduction (synchronized BN) cannot run inside a
            # nested tf.function under MirroredStrategy: inline the child pass.
            self._child_fn = self._child_pass
        else:
            self._child_fn = tf.function(self._child_pass, jit_compile=jit_compile or None)
        self._step_fn = tf.function(self._distributed_step)
        # Create the optimizer's slots now: variable creation inside the first
        # call would make tf.function trace the step twice.
        with self.strategy.scope():
            optimizer.build(net.trainable_variables)

    @property
    def tracing_count(self) -> int:
        """How many times the step function has been traced."""
        return self._step_fn.experimental_get_tracing_count()

    @property
    def child_tracing_count(self) -> int:
        """Traces of the per-child forward/backward (0 when it is inlined)."""
        fn = self._child_fn
        return (
            fn.experimental_get_tracing_count()
            if hasattr(fn, "experimental_get_tracing_count")
            else 0
        )

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
        """Runs one step.

        Args:
            batch: A (distributed) batch {"images": {res: ...}, "label": ...}.
            children: From `sample_children` (largest, smallest, random...).
            step: Global step (seeds dropout).

        Returns:
            {"losses": [num_children] float array, global mean loss per child}.
        """
        archs = self.encode_children(children)
        losses = self._step_fn(
            batch, archs, tf.constant(step, tf.int64), self._knobs(len(children))
        )
        return {"losses": losses.numpy()}

    def _knobs(self, num_children: int) -> dict[str, np.ndarray]:
        """The options as tensors: changing `self.options` between steps never retraces."""
        opts = self.options
        regularized = [1.0] + [1.0 if opts.regularize_all_children else 0.0] * (num_children - 1)
        per_step = num_children if opts.regularize_all_children else 1
        return {
            "distill": np.float32(1.0 if opts.inplace_distillation else 0.0),
            "label_smoothing": np.float32(opts.label_smoothing),
            "dropout": np.asarray(regularized, np.float32),
            "weight_decay": np.float32(opts.weight_decay * per_step),
            "seed": np.int64(opts.seed),
        }

    # ---- compiled parts -------------------------------------------------------
    def _distributed_step(self, batch, archs, step, knobs):
        per_replica = self.strategy.run(self._replica_step, args=(batch, archs, step, knobs))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _child_pass(self, x, arch, targets, seed, dropout):
        """Forward and backward of one child: (logits, loss, gradients)."""
        net = self.net
        variables = net.trainable_variables
        with tf.GradientTape() as tape:
            logits = net(x, arch=arch, training=True, dropout=dropout, dropout_seed=seed)
            per_example = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
        return logits, loss, tape.gradient(loss, variables)

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
        smooth = tf.one_hot(labels, net.num_classes) * (1.0 - eps) + eps / net.num_classes
        resolutions = self.resolutions

        def child(i, targets):
            arch = {k: v[i] for k, v in archs.items() if k != "res_index"}
            salt = tf.cast(i * 1009 + replica, tf.int64)
            seed = tf.cast(tf.random.experimental.stateless_fold_in(base_seed, salt), tf.int32)
            dropout = knobs["dropout"][i]
            index = archs["res_index"][i]
            if len(resolutions) == 1:
                return self._child_fn(images[resolutions[0]], arch, targets, seed, dropout)
            if self.net.mode == "slice":
                # Pick the images in-graph: one child graph, with a dynamic
                # spatial shape, serves every child and resolution.
                x = tf.switch_case(index, [lambda r=r: images[r] for r in resolutions])
                return self._child_fn(x, arch, targets, seed, dropout)
            # Mask mode (XLA): static shapes, so one branch per resolution.
            branches = [
                (lambda r=r: self._child_fn(images[r], arch, targets, seed, dropout))
                for r in resolutions
            ]
            return tf.switch_case(index, branches)

        # 1. The largest child, on the labels, at the largest resolution.
        teacher_logits, loss, grads = child(0, smooth)
        teacher = tf.stop_gradient(tf.nn.softmax(teacher_logits))
        # Inplace distillation: the others learn from the teacher (or, ablated, the labels).
        targets = knobs["distill"] * teacher + (1.0 - knobs["distill"]) * smooth
        losses = [loss]
        # 2. The smallest child (smallest resolution), then the random children.
        for i in range(1, num_children):
            _, loss_i, grads_i = child(i, targets)
            losses.append(loss_i)
            grads = [g + gi for g, gi in zip(grads, grads_i)]
        # 3. Weight decay once per step (the optimizer sums replicas: divide here).
        scale = knobs["weight_decay"] / self.strategy.num_replicas_in_sync
        grads = [g + scale * v if _is_decayed(v) else g for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        return tf.stack(losses)
