"""Learning-rate schedules of the BigNAS recipe (paper section 3.1 and 4.2).

The paper trains with RMSProp at an initial LR of 0.256 for a global batch of
4096 (scaled linearly with the batch), a linear warmup, exponential decay by
0.97 every 2.4 epochs, and then holds the LR constant once it reaches 5% of
the initial value ("exponential decay with a constant ending"). Switches give
the ablations: cosine decay, and exponential decay without the constant end.

Two details the paper leaves to the EfficientNet code it follows, both
options here:

- `staircase`: EfficientNet's TPU code (`tf.train.exponential_decay(...,
  staircase=True)`) multiplies the LR by 0.97 once every 2.4 epochs; False
  decays smoothly (0.97 ** (t / 2.4 epochs)).
- `decay_from`: where the decay clock starts. ``"step0"`` (EfficientNet) counts
  from step 0, warmup included, so the first post-warmup LR is already decayed
  (0.97**2 after 5 warmup epochs, staircase) and the 5% floor comes at about
  epoch 236; ``"warmup_end"`` starts the clock when warmup ends, so the LR
  starts decaying from its peak and reaches the floor 5 epochs later.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tf_bignas.run.config import DECAY_FROM
from tf_bignas.run.config import SCHEDULE_KINDS as KINDS


def scaled_learning_rate(base_lr: float, batch_size: int, reference_batch: int = 4096) -> float:
    """Linear scaling rule: `base_lr * batch_size / reference_batch`.

    Args:
        base_lr: LR for the reference batch (0.256 in the paper).
        batch_size: Global batch size.
        reference_batch: Batch size that `base_lr` is for.

    Returns:
        The scaled LR.
    """
    return base_lr * batch_size / reference_batch


class BigNASSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warmup, then exponential (smooth or staircase) or cosine decay, with an optional floor.

    During warmup the LR is `initial_lr * (step + 1) / warmup_steps`; after it,
    the decay's value at that step (see the module docstring for `decay_from`).

    Args:
        initial_lr: The LR that warmup climbs to and the decay starts from.
        steps_per_epoch: Optimizer steps per epoch.
        total_steps: Steps of the whole run (cosine only).
        kind: "exponential" or "cosine".
        warmup_epochs: Linear warmup length, in epochs.
        decay_rate: Exponential decay factor per `decay_epochs`.
        decay_epochs: Epochs per decay factor.
        final_lr_fraction: The floor, as a fraction of `initial_lr`.
        constant_ending: Hold the LR at the floor once it gets there (exponential);
            cosine decays to the floor at `total_steps`. False: no floor.
        staircase: Decay in whole steps of `decay_rate` every `decay_epochs`
            (EfficientNet) instead of smoothly. Exponential only: cosine
            decay is always smooth.
        decay_from: "step0" (the decay clock counts from step 0, warmup
            included, as EfficientNet) or "warmup_end" (from the end of warmup).

    Raises:
        ValueError: On an unknown kind or `decay_from`, or a non-positive length.
    """

    def __init__(
        self,
        initial_lr: float,
        steps_per_epoch: int,
        total_steps: int,
        kind: str = "exponential",
        warmup_epochs: float = 5.0,
        decay_rate: float = 0.97,
        decay_epochs: float = 2.4,
        final_lr_fraction: float = 0.05,
        constant_ending: bool = True,
        staircase: bool = True,
        decay_from: str = "step0",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; allowed: {list(KINDS)}")
        if decay_from not in DECAY_FROM:
            raise ValueError(
                f"unknown schedule decay_from {decay_from!r}; allowed: {list(DECAY_FROM)}"
            )
        if decay_epochs <= 0:
            raise ValueError(f"decay_epochs must be > 0, got {decay_epochs}")
        if steps_per_epoch <= 0 or total_steps <= 0:
            raise ValueError(
                f"steps_per_epoch ({steps_per_epoch}) and total_steps ({total_steps}) must be > 0"
            )
        self.initial_lr = float(initial_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.warmup_epochs = float(warmup_epochs)
        self.decay_rate = float(decay_rate)
        self.decay_epochs = float(decay_epochs)
        self.final_lr_fraction = float(final_lr_fraction)
        self.constant_ending = bool(constant_ending)
        self.staircase = bool(staircase)
        self.decay_from = decay_from

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warmup = self.warmup_epochs * self.steps_per_epoch
        start = warmup if self.decay_from == "warmup_end" else 0.0
        after = tf.maximum(step - start, 0.0)
        floor = self.initial_lr * self.final_lr_fraction
        if self.kind == "exponential":
            decay_steps = self.decay_epochs * self.steps_per_epoch
            exponent = after / decay_steps
            if self.staircase:
                exponent = tf.floor(exponent)
            lr = self.initial_lr * tf.pow(self.decay_rate, exponent)
            if self.constant_ending:
                lr = tf.maximum(lr, floor)
        else:
            span = max(self.total_steps - start, 1.0)
            progress = tf.minimum(after / span, 1.0)
            end = floor if self.constant_ending else 0.0
            lr = end + 0.5 * (self.initial_lr - end) * (1.0 + tf.cos(math.pi * progress))
        if warmup > 0:
            lr = tf.where(step < warmup, self.initial_lr * (step + 1.0) / warmup, lr)
        return lr

    def get_config(self) -> dict:
        return {
            "initial_lr": self.initial_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "kind": self.kind,
            "warmup_epochs": self.warmup_epochs,
            "decay_rate": self.decay_rate,
            "decay_epochs": self.decay_epochs,
            "final_lr_fraction": self.final_lr_fraction,
            "constant_ending": self.constant_ending,
            "staircase": self.staircase,
            "decay_from": self.decay_from,
        }
