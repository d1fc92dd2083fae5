"""What the training stage builds from a run's config: the schedule and the optimizer.

The option tree itself is written once in `tf_bignas.run.schema` (defaults,
rules, resume policy, docs); `tf_bignas.run.config` builds it, checks it and
holds the builders every stage shares (space, supernet).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from tf_bignas.run.optimizers import RMSpropTF
from tf_bignas.train.schedules import BigNASSchedule, scaled_learning_rate


def build_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> BigNASSchedule:
    """The config's learning-rate schedule (LR scaled linearly to the batch size).

    Args:
        config: The resolved config (sections optimizer, schedule, train).
        steps_per_epoch: Optimizer steps per epoch.
        total_steps: Steps of the whole run.

    Returns:
        The schedule.
    """
    o, s = config.optimizer, config.schedule
    return BigNASSchedule(
        scaled_learning_rate(o.base_lr, config.train.batch_size, o.reference_batch),
        steps_per_epoch,
        total_steps,
        kind=s.kind,
        warmup_epochs=s.warmup_epochs,
        decay_rate=s.decay_rate,
        decay_epochs=s.decay_epochs,
        final_lr_fraction=s.final_lr_fraction,
        constant_ending=s.constant_ending,
        staircase=s.staircase,
        decay_from=s.decay_from,
    )


def build_optimizer(
    config: ml_collections.ConfigDict, learning_rate: Any, *, use_ema: bool | None = None
) -> RMSpropTF:
    """The config's RMSProp (TF1 flavour) at a learning rate or schedule.

    Args:
        config: The resolved config (section optimizer).
        learning_rate: A float or a `LearningRateSchedule`.
        use_ema: Keep an exponential moving average of the weights; None:
            `optimizer.ema` of the config.

    Returns:
        The optimizer.
    """
    o = config.optimizer
    return RMSpropTF(
        initial_accumulator=o.initial_accumulator,
        learning_rate=learning_rate,
        rho=o.rho,
        momentum=o.momentum,
        epsilon=o.epsilon,
        use_ema=o.ema if use_ema is None else use_ema,
        ema_momentum=o.ema_decay,
    )
