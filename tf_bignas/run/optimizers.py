"""RMSProp as the paper's TensorFlow 1 recipe ran it.

BigNAS (like EfficientNet) trains with TF1's `RMSPropOptimizer`, which starts
the mean-square accumulator at 1.0, not 0.0. Started at zero, the first
updates are `lr * g / sqrt(0.1 g^2 + eps)`, about 3x the LR for every weight
whatever its gradient scale; started at one they are about `lr * g`, which is
what the paper's LR of 0.256 (for a batch of 4096) was tuned with.

The weight average (EMA, `use_ema=True`) follows EfficientNet's
`tf.train.ExponentialMovingAverage(decay, num_updates=global_step)`: the
decay of update n is `min(decay, (1 + n) / (10 + n))`, so the average follows
the weights closely early in training and settles to `decay` (0.9999 means
an average over about the last 10,000 steps) later. Keras' own EMA uses
`decay` from the second step, which leaves the average of a 0.9999 run mostly
made of the initial weights for the first several thousand steps.
`ema_weights` swaps the average into the model for evaluation and back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops


class RMSpropTF(keras.optimizers.RMSprop):
    """Keras RMSprop whose mean-square accumulators start at `initial_accumulator`.

    Args:
        initial_accumulator: Initial value of the mean-square accumulators.
        **kwargs: `keras.optimizers.RMSprop` arguments.
    """

    def __init__(self, initial_accumulator: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.initial_accumulator = float(initial_accumulator)

    def build(self, var_list: list) -> None:
        """Creates the slots, then sets the accumulators to `initial_accumulator`."""
        if self.built:
            return
        super().build(var_list)
        for velocity in self._velocities:
            velocity.assign(keras.ops.full(velocity.shape, self.initial_accumulator))

    def update_step(self, gradient: object, variable: object, learning_rate: object) -> None:
        """One variable's update: TF1's fused `ApplyRMSProp` kernel on TensorFlow.

        The same arithmetic as Keras' RMSprop with momentum (epsilon inside the
        square root), as one op per variable instead of about fifteen: the
        training step's graph is smaller, traced and optimised faster, and its
        update reads each slot once. Keras' own update runs on other backends,
        on TPUs, and for the centred or momentum-free variants.

        Args:
            gradient: The variable's gradient.
            variable: The (TensorFlow) variable.
            learning_rate: This step's learning rate.
        """
        if not self._fused_update():
            super().update_step(gradient, variable, learning_rate)
            return
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyRMSProp(
            var=variable.handle,
            ms=self._velocities[index].value.handle,
            mom=self._momentums[index].value.handle,
            lr=tf.cast(learning_rate, dtype),
            rho=tf.constant(self.rho, dtype),
            momentum=tf.constant(self.momentum, dtype),
            epsilon=tf.constant(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )

    def _fused_update(self) -> bool:
        if keras.backend.backend() != "tensorflow" or self.centered or not self.momentum > 0:
            return False
        return not isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)

    def _update_model_variables_moving_average(self, trainable_variables: list) -> None:
        """EMA update with TF1's `num_updates` warm-up of the decay (see the module docstring)."""
        if not self.use_ema:
            return
        n = ops.cast(self.iterations, "float32") + 1.0  # this update's number, from 1
        warm = ops.minimum(self.ema_momentum, (1.0 + n) / (10.0 + n))
        not_first = ops.cast(ops.not_equal(self.iterations, 0), "float32")
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is None:
                continue
            momentum = ops.cast(warm * not_first, var.dtype)
            average.assign(momentum * average + (1.0 - momentum) * var)

    def get_config(self) -> dict:
        return {**super().get_config(), "initial_accumulator": self.initial_accumulator}


@contextlib.contextmanager
def ema_weights(
    optimizer: keras.optimizers.Optimizer, variables: Sequence[keras.Variable]
) -> Iterator[bool]:
    """Puts the optimizer's weight averages into `variables`, and the weights back after.

    Does nothing when the optimizer keeps no averages (`use_ema=False`) or
    has not been built.

    Args:
        optimizer: The optimizer (the one that trains `variables`).
        variables: The model's trainable variables, in the optimizer's order.

    Yields:
        True if the averages are in the model, False if nothing was swapped.
    """
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        yield False
        return
    saved = [np.array(v.numpy(), copy=True) for v in variables]
    optimizer.finalize_variable_values(list(variables))
    try:
        yield True
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)
