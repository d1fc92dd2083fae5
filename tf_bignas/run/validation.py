"""Checks every training option, the workdir path and the data before a run writes anything.

`validate_options(config)` rejects an option the schema does not hold
(`tf_bignas.run.schema`, with a "did you mean"), checks each value against
its rule there (type and allowed range or choices, see `option_rules`) and
the combinations that would fail later (`check_model_mode` among them);
`validate_max_steps`, `validate_workdir_path` and `validate_dataset` check
the rest of a run's input. Every error is a `ConfigError` (a `ValueError`)
that names the option, the value it got and what is allowed, e.g.

    config.train.batch_size = 0 is out of range; allowed: an integer >= 1

so a mistake costs seconds at start-up, not a crash (or a silently wrong run)
hours into training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from tf_bignas.run.schema import (
    OPTIONS,
    ConfigError,
    Rule,
    check_known_options,
    is_int,
    is_number,
)

__all__ = [
    "ConfigError",
    "Rule",
    "check_config_keys",
    "check_known_options",
    "check_model_mode",
    "flatten",
    "is_remote",
    "option_rules",
    "validate_dataset",
    "validate_max_steps",
    "validate_options",
    "validate_workdir_path",
]


def option_rules() -> dict[str, Rule]:
    """The rule of every option of `default_config()`, by dotted name (from the schema).

    Returns:
        {"section.key": Rule}, a fresh dict.
    """
    return {name: option.rule for name, option in OPTIONS.items()}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config (ConfigDict or dict) as {"section.key": value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_config_keys(config: ml_collections.ConfigDict, origin: str = "the config") -> None:
    """Rejects an option of a config tree that the schema does not hold (a misspelt key).

    Args:
        config: A config, e.g. as a config file built it.
        origin: Where it came from, e.g. "--config=configs/x.py".

    Raises:
        ConfigError: Naming the option, `origin`, the closest known option and
            the options of its section.
    """
    check_known_options(flatten(config), origin)


def check_model_mode(mode: Any, strategy: str = "default", jit_compile: bool = False) -> None:
    """Checks `model.mode`, alone and with what needs static shapes (TPUs, XLA).

    Every stage that builds a supernet for a strategy checks the mode here.

    Args:
        mode: The value of `model.mode`.
        strategy: The value of `runtime.strategy` ("tpu" needs "mask").
        jit_compile: The value of `runtime.jit_compile` (True needs "mask").

    Raises:
        ConfigError: If the mode is unknown, or "slice" where static shapes
            are needed (the message names --config.model.mode=mask).
    """
    OPTIONS["model.mode"].rule.check("model.mode", mode)
    if strategy == "tpu" and mode != "mask":
        raise ConfigError(
            f"runtime.strategy='tpu' needs static shapes, but model.mode={mode!r} slices "
            "weights to dynamic shapes that XLA cannot compile; use --config.model.mode=mask"
        )
    if jit_compile and mode != "mask":
        raise ConfigError(
            f"runtime.jit_compile=True needs static shapes, but model.mode={mode!r}; "
            "use --config.model.mode=mask"
        )


def _check_combinations(config: ml_collections.ConfigDict) -> None:
    """The checks that need more than one option (each option's own rule passed)."""
    m, d, rt = config.model, config.data, config.runtime
    check_model_mode(m.mode, rt.strategy, rt.jit_compile)
    if rt.steps_per_loop > 1 and rt.strategy == "multi_worker":
        # Measured: the collectives of synchronized BN inside the on-device loop
        # were matched across different steps of the two workers (shape mismatch).
        raise ConfigError(
            f"runtime.steps_per_loop={rt.steps_per_loop} is not supported with "
            "runtime.strategy='multi_worker' (collective ops inside the on-device loop); use 1"
        )
    if not d.shared_patch and d.transport == "patch":
        raise ConfigError(
            "data.shared_patch=False (a patch per resolution) needs data.transport='uint8' or "
            "'float'; 'patch' ships one shared patch"
        )
    if config.sandwich.regularize_all_children and m.mode != "slice":
        raise ConfigError(
            "sandwich.regularize_all_children=True needs model.mode='slice': each child's own "
            f"weight decay falls on the kernel slices it uses; model.mode={m.mode!r}"
        )
    if d.crop_per_child and (not d.shared_patch or d.transport == "patch"):
        raise ConfigError(
            f"data.crop_per_child=True with data.shared_patch={d.shared_patch} and "
            f"data.transport={d.transport!r} is not allowed: a crop per child needs "
            "data.shared_patch=True (it replaces the shared patch) and data.transport='uint8' "
            "or 'float'"
        )
    if m.resolutions and not m.train_resolutions:
        raise ConfigError(
            f"config.model.resolutions = {tuple(m.resolutions)} needs "
            "config.model.train_resolutions too (a subset of it); both empty = the space's own"
        )
    if m.resolutions and not set(m.train_resolutions) <= set(m.resolutions):
        raise ConfigError(
            f"config.model.train_resolutions = {tuple(m.train_resolutions)} is not a subset of "
            f"config.model.resolutions = {tuple(m.resolutions)}"
        )
    crop = d.crop_scale
    if not (
        isinstance(crop, (list, tuple))
        and len(crop) == 2
        and all(is_number(v) and math.isfinite(v) for v in crop)
        and 0.0 < crop[0] <= crop[1] <= 1.0
    ):
        raise ConfigError(
            f"config.data.crop_scale = {crop!r} is not allowed; allowed: two numbers "
            "(min, max) with 0 < min <= max <= 1 (area fraction of the random crop)"
        )
    if d.minival >= 1 and not float(d.minival).is_integer():
        raise ConfigError(
            f"config.data.minival = {d.minival!r} is not allowed; allowed: a whole number of "
            "images (>= 1) or a fraction (< 1) of the training split; 0 = none"
        )


def validate_options(config: ml_collections.ConfigDict, origin: str = "the config") -> None:
    """Checks every option's name, type and range, and combinations that would fail later.

    Args:
        config: The resolved config.
        origin: Where it came from, for the message about an unknown option
            (e.g. "--config=configs/x.py").

    Raises:
        ConfigError: Naming the first unknown or bad option, its value and
            what is allowed.
    """
    values = flatten(config)
    check_known_options(values, origin)  # as check_config_keys
    missing = [name for name in OPTIONS if name not in values]
    if missing:
        raise ConfigError(
            f"{origin} lacks the option(s) {', '.join(missing)}; a config starts from "
            "tf_bignas.run.config.default_config()"
        )
    for name, value in values.items():
        OPTIONS[name].rule.check(name, value)
    _check_combinations(config)


def validate_max_steps(max_steps: int | None) -> None:
    """Checks the `max_steps` argument of a run.

    Raises:
        ConfigError: If it is not None or an integer >= 1.
    """
    if max_steps is None:
        return
    if not is_int(max_steps) or max_steps < 1:
        raise ConfigError(
            f"max_steps = {max_steps!r} is out of range; allowed: an integer >= 1 "
            "(--max_steps=0 on the command line: run all the configured epochs)"
        )


def is_remote(path: str) -> bool:
    """Whether `path` is a URL (gs://, s3://...) rather than a local path."""
    return "://" in path


def validate_workdir_path(workdir: Any) -> None:
    """Checks that `workdir` names a folder the run can create or write.

    Reads only (the folder is not created). Remote paths (gs://...) are not
    checked here.

    Args:
        workdir: The path.

    Raises:
        ConfigError: If it is empty, a file, inside a file, or not writable.
    """
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir).strip():
        raise ConfigError(
            f"workdir {workdir!r} is empty; give the folder for the run's checkpoints and "
            "results (a new folder, or the workdir of a run to resume)"
        )
    path = os.fspath(workdir)
    if is_remote(path):
        return
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(
                f"workdir {path!r} is a file, not a folder; give a new folder or the workdir "
                "of a run to resume"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"workdir {path!r} is not writable (read-only or no permission)")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"cannot create workdir {path!r}: {parent!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot create workdir {path!r}: {parent!r} is not writable "
            "(read-only or no permission)"
        )


def validate_dataset(source: str, split: str, num_classes: int, num_examples: int) -> None:
    """Refuses training data that cannot train a classifier.

    Args:
        source: The data source spec (for the message).
        split: The split.
        num_classes: Classes found.
        num_examples: Images found.

    Raises:
        ConfigError: If there are fewer than two classes or no images.
    """
    if num_examples < 1:
        raise ConfigError(f"data source {source!r} split {split!r} holds no images")
    if num_classes < 2:
        raise ConfigError(
            f"data source {source!r} split {split!r} has {num_classes} class(es); training "
            "a classifier needs at least 2 (for a folder source: one sub-folder per class)"
        )
