"""RMSProp as the paper's TensorFlow 1 recipe ran it.

BigNAS (like EfficientNet) trains with TF1's `RMSPropOptimizer`, which starts
the mean-square accumulator at 1.0, not 0.0. Started at zero, the first
updates are `lr * g / sqrt(0.1 g^2 + eps)`, about 3x the LR for every weight
whatever its gradient scale; started at one they are about `lr * g`, which is
what the paper's LR of 0.256 (for a batch of 4096) was tuned with.
"""

from __future__ import annotations

import keras


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

    def get_config(self) -> dict:
        return {**super().get_config(), "initial_accumulator": self.initial_accumulator}
