"""Checks every training option, the workdir path and the data before a run writes anything.

`validate_options(config)` checks each option of the tree against a rule (its
type and allowed range or choices, see `option_rules`) and the combinations
that would fail later; `validate_max_steps`, `validate_workdir_path` and
`validate_dataset` check the rest of a run's input. Every error is a
`ConfigError` (a `ValueError`) that names the option, the value it got and
what is allowed, e.g.

    config.train.batch_size = 0 is out of range; allowed: an integer >= 1

so a mistake costs seconds at start-up, not a crash (or a silently wrong run)
hours into training.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from tf_bignas.data.augment import AUGMENT_NAMES
from tf_bignas.run.config import DECAY_FROM, STRATEGIES
from tf_bignas.run.config import SCHEDULE_KINDS as KINDS
from tf_bignas.space import space_names


class ConfigError(ValueError):
    """An option, the workdir path or the data is not allowed (the message says which)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one option may hold.

    Attributes:
        kind: "int", "float", "bool", "str", "choice", "ints" (a list of ints)
            or "pair" (checked by `validate_options` itself).
        low: Smallest allowed number (ints, floats, elements of "ints").
        high: Largest allowed number.
        low_open: `low` itself is not allowed.
        high_open: `high` itself is not allowed.
        choices: The allowed values of a "choice".
        nonempty: A "str" must not be empty.
        note: What the value means, added to the error (e.g. "0 = off").
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    nonempty: bool = False
    note: str = ""

    def allowed(self) -> str:
        """The allowed values, in words."""
        if self.kind == "bool":
            return "True or False"
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind == "str":
            return "a non-empty string" if self.nonempty else "a string"
        noun = {"int": "an integer", "float": "a number", "ints": "a list of integers"}[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = f"{noun} {' and '.join(bounds)}".rstrip()
        if self.kind == "ints" and bounds:
            text = f"a list of integers, each {' and '.join(bounds)}"
        return f"{text} ({self.note})" if self.note else text

    def check(self, name: str, value: Any) -> None:
        """Raises ConfigError naming `name` if `value` breaks the rule."""
        if not self._ok(value):
            raise ConfigError(
                f"config.{name} = {value!r} is "
                f"{'out of range' if self._typed(value) else 'of the wrong type'}; "
                f"allowed: {self.allowed()}"
            )

    def _typed(self, value: Any) -> bool:
        if self.kind == "int":
            return _is_int(value)
        if self.kind == "float":
            return _is_number(value)
        if self.kind == "ints":
            return isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str)
        return True

    def _in_range(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            return False
        return True

    def _ok(self, value: Any) -> bool:
        if self.kind == "pair":
            return True  # (min, max) pairs are checked with their meaning by the caller
        if not self._typed(value):
            return False
        if self.kind in ("int", "float"):
            return self._in_range(float(value))
        if self.kind == "ints":
            return all(self._in_range(float(v)) for v in value)
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "str":
            return bool(value.strip()) or not self.nonempty
        return True


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(low: int | None = None, note: str = "", high: int | None = None) -> Rule:
    return Rule("int", low=low, high=high, note=note)


def _float(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
) -> Rule:
    return Rule("float", low=low, high=high, low_open=low_open, high_open=high_open, note=note)


def _choice(*choices: Any) -> Rule:
    return Rule("choice", choices=tuple(choices))


def option_rules() -> dict[str, Rule]:
    """The rule of every option of `default_config()`, by dotted name.

    Returns:
        {"section.key": Rule}; `tests/test_workdir_integrity.py` checks that
        every option of the default tree has one.
    """
    boolean, text = Rule("bool"), Rule("str")
    name = Rule("str", nonempty=True)
    fraction = _float(0.0, 1.0, high_open=True)
    return {
        "seed": _int(0),
        # model
        "model.space": _choice(*space_names()),
        "model.train_resolutions": Rule("ints", low=8, note="empty = the space's own"),
        "model.resolutions": Rule("ints", low=8, note="empty = the training resolutions"),
        "model.mode": _choice("slice", "mask"),
        "model.zero_init_last_bn": boolean,
        "model.stage_shortcuts": boolean,
        "model.synchronized_bn": boolean,
        "model.dropout_rate": fraction,
        "model.bn_epsilon": _float(0.0, low_open=True),
        # data
        "data.source": name,
        "data.data_dir": text,
        "data.train_split": name,
        "data.eval_split": name,
        "data.minival": _float(0.0, note="images (>= 1) or a fraction (< 1) of train; 0 = none"),
        "data.augment": _choice(*AUGMENT_NAMES),
        "data.base_resolution": _int(0, "0 = the largest training resolution"),
        "data.crop_scale": Rule("pair"),  # checked in validate_options
        "data.strict": boolean,
        "data.shared_patch": boolean,
        "data.transport": name,  # the choices: validate_config (tf_bignas.data.device)
        # sandwich
        "sandwich.num_random": _int(0),
        "sandwich.inplace_distillation": boolean,
        "sandwich.distill_weight": _float(0.0, 1.0),
        "sandwich.distill_ramp": _float(0.0, 1.0, note="a fraction of the training steps"),
        "sandwich.label_smoothing": fraction,
        "sandwich.weight_decay": _float(0.0),
        "sandwich.regularize_all_children": boolean,
        # optimizer
        "optimizer.base_lr": _float(0.0, low_open=True),
        "optimizer.reference_batch": _int(1),
        "optimizer.rho": fraction,
        "optimizer.momentum": fraction,
        "optimizer.epsilon": _float(0.0, low_open=True),
        "optimizer.initial_accumulator": _float(0.0),
        "optimizer.ema": boolean,
        "optimizer.ema_decay": _float(0.0, 1.0, low_open=True, high_open=True),
        # schedule
        "schedule.kind": _choice(*KINDS),
        "schedule.warmup_epochs": _float(0.0),
        "schedule.decay_rate": _float(0.0, 1.0, low_open=True),
        "schedule.decay_epochs": _float(0.0, low_open=True),
        "schedule.final_lr_fraction": _float(0.0, 1.0),
        "schedule.constant_ending": boolean,
        "schedule.staircase": boolean,
        "schedule.decay_from": _choice(*DECAY_FROM),
        # train
        "train.batch_size": _int(1, "the global batch, over all replicas"),
        "train.epochs": _float(0.0, low_open=True),
        "train.log_every": _int(1, "steps"),
        "train.checkpoint_every": _int(1, "steps"),
        "train.keep_checkpoints": _int(1),
        "train.checkpoint_data": boolean,
        "train.eval_every": _int(0, "steps; 0 = only at the end"),
        "train.calibration_images": _int(1),
        "train.calibration_batch_size": _int(1),
        "train.eval_batches": _int(0, "0 = the whole eval split"),
        "train.eval_train_images": _int(0, "0 = none"),
        "train.max_abs_weight": _float(0.0, low_open=True),
        "runtime.steps_per_loop": _int(1, "steps per compiled call"),
        # chain (pipelines/run_all.py; its programs check the values' meaning)
        "chain.budgets": text,
        "chain.search_method": name,
        "chain.search_log_every": _int(1),
        "chain.quantize": text,
        "chain.verify_examples": _int(0, "0 = the whole eval split"),
        "chain.int8_min_agreement": _float(0.0, 1.0),
        "chain.benchmark_threads": _int(1),
        "chain.benchmark_runs": _int(1),
        # runtime
        "runtime.strategy": _choice(*STRATEGIES),
        "runtime.tpu": text,
        "runtime.deterministic": boolean,
        "runtime.jit_compile": boolean,
        "runtime.threads": _int(0, "0 = TensorFlow's default"),
        "runtime.lean_grappler": boolean,
    }


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config (ConfigDict or dict) as {"section.key": value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def validate_options(config: ml_collections.ConfigDict) -> None:
    """Checks every option's type and range, and combinations that would fail later.

    Args:
        config: The resolved config.

    Raises:
        ConfigError: Naming the first bad option, its value and what is allowed.
    """
    rules = option_rules()
    for name, value in flatten(config).items():
        if name in rules:
            rules[name].check(name, value)
    m, d = config.model, config.data
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
        and all(_is_number(v) and math.isfinite(v) for v in crop)
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


def validate_max_steps(max_steps: int | None) -> None:
    """Checks the `max_steps` argument of a run.

    Raises:
        ConfigError: If it is not None or an integer >= 1.
    """
    if max_steps is None:
        return
    if not _is_int(max_steps) or max_steps < 1:
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
