"""The option tree of a run, with the paper's values as defaults, and what it builds.

Every config in `configs/` starts from `default_config()` and changes what its
experiment needs. The tree is written once, in `tf_bignas.run.schema` (each
option's default, rule, resume policy and doc); `default_config()` builds it
from there and `validate_config` checks a config against it
(`tf_bignas.run.validation`). The objects every stage rebuilds from a stored
config live here too: the space (`build_space`), the supernet
(`build_supernet`) and the minival size as the data package takes it
(`minival_size`). The training-only builders (schedule, optimizer) are in
`tf_bignas.train.config`.
"""

from __future__ import annotations

import ml_collections

from tf_bignas.model import Supernet
from tf_bignas.run import schema
from tf_bignas.run.schema import DECAY_FROM, SCHEDULE_KINDS, STRATEGIES
from tf_bignas.run.validation import validate_options
from tf_bignas.space import SearchSpace, get_space

__all__ = [
    "DECAY_FROM",
    "SCHEDULE_KINDS",
    "STRATEGIES",
    "build_space",
    "build_supernet",
    "default_config",
    "minival_size",
    "validate_config",
]


def default_config() -> ml_collections.ConfigDict:
    """The BigNAS recipe (paper sections 3.1 and 4.2) on ImageNet-sized data.

    Built from the defaults of `tf_bignas.run.schema.OPTIONS` (whose docs say
    what each option means).

    Returns:
        A ConfigDict with the option seed and the sections train, runtime,
        model, data, sandwich, optimizer, schedule and chain.
    """
    tree: dict = {}
    for name, value in schema.defaults().items():
        *sections, key = name.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return ml_collections.ConfigDict(tree)


def validate_config(config: ml_collections.ConfigDict, origin: str = "the config") -> None:
    """Rejects unknown options, bad values and combinations that would fail later.

    The same checks as `tf_bignas.run.validation.validate_options`, before
    anything is written.

    Args:
        config: The resolved config.
        origin: Where it came from, for the message about an unknown option.

    Raises:
        ConfigError: A `ValueError` naming the option, its value and what is allowed.
    """
    validate_options(config, origin)


def build_space(config: ml_collections.ConfigDict) -> SearchSpace:
    """The config's search space, with its resolution overrides applied."""
    space = get_space(config.model.space)
    if config.model.train_resolutions:
        space = space.with_resolutions(
            config.model.train_resolutions, config.model.resolutions or None
        )
    return space


def build_supernet(
    config: ml_collections.ConfigDict, space: SearchSpace, num_classes: int
) -> Supernet:
    """The supernet that the config describes."""
    m = config.model
    return Supernet(
        space,
        num_classes,
        mode=m.mode,
        zero_init_last_bn=m.zero_init_last_bn,
        stage_shortcuts=m.stage_shortcuts,
        synchronized_bn=m.synchronized_bn,
        dropout_rate=m.dropout_rate,
        bn_epsilon=m.bn_epsilon,
        native_kernels=config.runtime.native_kernels,
    )


def minival_size(config: ml_collections.ConfigDict) -> int | float | None:
    """`config.data.minival` as the data package takes it: images, a fraction, or None."""
    value = config.data.minival
    if not value:
        return None
    return int(value) if value >= 1 else float(value)
