"""Learning-rate schedules of the BigNAS recipe (paper section 3.1 and 4.2).

The paper trains with RMSProp at an initial LR of 0.256 for a global batch of
4096 (scaled linearly with the batch), a linear warmup, exponential decay by
0.97 every 2.4 epochs, and then holds the LR constant once it reaches 5% of
the initial value ("exponential decay with a constant ending"). Switches give
the ablations: cosine decay, and exponential decay without the constant end.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

KINDS = ("exponential", "cosine")


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
    """Warmup, then exponential (staircase-free) or cosine decay, with an optional floor.

    Args:
        initial_lr: Peak LR, reached at the end of warmup.
        steps_per_epoch: Optimizer steps per epoch.
        total_steps: Steps of the whole run (cosine only).
        kind: "exponential" or "cosine".
        warmup_epochs: Linear warmup length, in epochs.
        decay_rate: Exponential decay factor per `decay_epochs`.
        decay_epochs: Epochs per decay factor.
        final_lr_fraction: The floor, as a fraction of `initial_lr`.
        constant_ending: Hold the LR at the floor once it gets there (exponential);
            cosine decays to the floor at `total_steps`. False: no floor.

    Raises:
        ValueError: On an unknown kind or a non-positive length.
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
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; allowed: {list(KINDS)}")
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

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warmup = self.warmup_epochs * self.steps_per_epoch
        after = tf.maximum(step - warmup, 0.0)
        floor = self.initial_lr * self.final_lr_fraction
        if self.kind == "exponential":
            decay_steps = self.decay_epochs * self.steps_per_epoch
            lr = self.initial_lr * tf.pow(self.decay_rate, after / decay_steps)
            if self.constant_ending:
                lr = tf.maximum(lr, floor)
        else:
            span = max(self.total_steps - warmup, 1.0)
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
        }
