"""The option tree of a run, written once: each option's default, rule, resume policy and doc.

`OPTIONS` maps every dotted option name (``"train.epochs"``) to an `Option`:
its default, its `Rule` (type and allowed range or choices), whether it may
change when a run resumes, and a one-line doc. Everything else derives from
this table:

- `tf_bignas.run.config.default_config()` builds the ConfigDict from the
  defaults (`defaults()`);
- `tf_bignas.run.validation.validate_options` checks every value against its
  rule and rejects a name the table does not hold (`check_known_options`,
  with a "did you mean" and the options of that section), wherever it came
  from: a config file, a ``--config.KEY=VALUE`` flag or a stored config;
- `tf_bignas.run.record.RESUMABLE_OPTIONS` lists the options that may change
  on resume (`resumable_options()`).

Sections are listed in the order of that list: what a run logs and
checkpoints (train), where it runs (runtime), then what it trains.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from tf_bignas.data.augment import AUGMENT_NAMES
from tf_bignas.data.device import TRANSPORTS
from tf_bignas.model.layers import MODES
from tf_bignas.run.evaluator import DEFAULT_CALIBRATION_BATCH_SIZE, DEFAULT_CALIBRATION_IMAGES
from tf_bignas.space import space_names

# The choices of options whose code lives in a later stage (train), named here
# so that the option tree can be checked without importing that stage.
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
SCHEDULE_KINDS = ("exponential", "cosine")
DECAY_FROM = ("step0", "warmup_end")


class ConfigError(ValueError):
    """An option, the workdir path or the data is not allowed (the message says which)."""


def is_int(value: Any) -> bool:
    """Whether `value` is an integer (a bool is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a real number (a bool is not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
        if self.kind == "pair":
            return "two numbers (min, max)"
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
        """Checks one value.

        Args:
            name: The option's dotted name, for the message.
            value: Its value.

        Raises:
            ConfigError: Naming `name`, the value and what is allowed, if the
                value breaks the rule.
        """
        if not self._ok(value):
            raise ConfigError(
                f"config.{name} = {value!r} is "
                f"{'out of range' if self._typed(value) else 'of the wrong type'}; "
                f"allowed: {self.allowed()}"
            )

    def _typed(self, value: Any) -> bool:
        if self.kind == "int":
            return is_int(value)
        if self.kind == "float":
            return is_number(value)
        if self.kind == "ints":
            return isinstance(value, (list, tuple)) and all(is_int(v) for v in value)
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


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of the tree.

    Attributes:
        name: Its dotted name, "section.key" ("seed" at the top).
        default: Its value in `default_config()` (immutable: tuples for lists).
        rule: What it may hold.
        resumable: Whether it may change when a run resumes (it changes how
            the run is logged, evaluated, checkpointed or executed, not what
            it trains).
        doc: What it means, in one line.
    """

    name: str
    default: Any
    rule: Rule
    resumable: bool
    doc: str


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


def _opt(name: str, default: Any, rule: Rule, doc: str, *, resume: bool = False) -> Option:
    return Option(name, default, rule, resume, doc)


_BOOL = Rule("bool")
_TEXT = Rule("str")
_NAME = Rule("str", nonempty=True)
_FRACTION = _float(0.0, 1.0, high_open=True)
_POSITIVE = _float(0.0, low_open=True)

_TOP = (
    _opt("seed", 0, _int(0), "Seed of every random draw of the run (weights, data, children)."),
)

_TRAIN = (
    _opt("train.batch_size", 4096, _int(1, "the global batch, over all replicas"),
         "The global batch size, over all replicas."),
    _opt("train.epochs", 360.0, _POSITIVE, "Epochs of the whole run."),
    _opt("train.log_every", 100, _int(1, "steps"), "A log line every N steps.", resume=True),
    _opt("train.checkpoint_every", 1000, _int(1, "steps"), "A checkpoint every N steps.",
         resume=True),
    _opt("train.keep_checkpoints", 3, _int(1), "Checkpoints kept (the newest).", resume=True),
    _opt("train.max_abs_weight", 1e6, _POSITIVE,
         "A checkpoint is written only if every weight is finite and within this bound (and "
         "the optimizer state finite): 'the last good checkpoint' resumes.", resume=True),
    _opt("train.checkpoint_data", True, _BOOL,
         "Save the input iterator in checkpoints (exact resume); its state holds the shuffle "
         "buffer: small for in-memory data, about 1 GB for ImageNet from TFDS."),
    _opt("train.eval_every", 5000, _int(0, "steps; 0 = only at the end"),
         "Evaluate every N steps; 0 = only at the end.", resume=True),
    _opt("train.calibration_images", DEFAULT_CALIBRATION_IMAGES, _int(1),
         "BN calibration of each evaluated child: a fixed random sample of the training split "
         "(the same images for every child); see tf_bignas.run.evaluator for the choice of "
         "2,048.", resume=True),
    _opt("train.calibration_batch_size", DEFAULT_CALIBRATION_BATCH_SIZE, _int(1),
         "Batch size of the BN calibration (its own, not train.batch_size).", resume=True),
    _opt("train.eval_batches", 0, _int(0, "0 = the whole eval split"),
         "Eval-split batches per evaluation; 0 = the whole eval split.", resume=True),
    _opt("train.eval_train_images", 0, _int(0, "0 = none"),
         "Training images (a fixed random sample, evaluated as the eval split is: centre crop, "
         "no augmentation) scored at every evaluation beside the eval split, so that "
         "overfitting shows; 0 = none.", resume=True),
)  # fmt: skip

_RUNTIME = (
    _opt("runtime.strategy", "default", _choice(*STRATEGIES),
         "tf.distribute strategy: 'default' | 'mirrored' | 'multi_worker' | 'tpu'."),
    _opt("runtime.tpu", "", _TEXT,
         "TPU name or grpc://host:port address (--tpu); 'local' = a TPU VM's own; '' = the TPU "
         "that the environment names (e.g. Colab).", resume=True),
    _opt("runtime.deterministic", False, _BOOL, "enable_op_determinism (slower).", resume=True),
    _opt("runtime.jit_compile", False, _BOOL,
         "XLA for each child pass on GPU (needs model.mode='mask').", resume=True),
    _opt("runtime.threads", 0, _int(0, "0 = TensorFlow's default"),
         "Intra/inter-op threads; 0 = TensorFlow's default.", resume=True),
    _opt("runtime.child_lanes", 0, _int(0, "0 = one per CPU core on a CPU-only host"),
         "Children of a step that run at the same time (train.step.SandwichStep's lanes; "
         "one copy of the child pass per child): 0 = one lane per core, at most one per "
         "child, on a CPU-only host with one device and no XLA, and there one thread per op "
         "per lane unless runtime.threads is set (train.step.lane_threads); 1 elsewhere. "
         "1 = one child after another in one loop body (a shorter first call, less memory). "
         "The same weights at the same threads.", resume=True),
    _opt("runtime.lean_grappler", True, _BOOL,
         "CPU-only hosts: skip the Grappler passes that leave the step's graph as it was "
         "(train.step.skip_idle_graph_passes) and optimise the step in one round "
         "(train.step.ONE_ROUND_GRAPH_PASSES): the same graph, a shorter first step.",
         resume=True),
    _opt("runtime.eager_first_step", True, _BOOL,
         "A fresh run's first step runs op by op (train.step.SandwichStep.run_eagerly) and "
         "the compiled step is traced after it: the first losses come without waiting for "
         "the trace and graph optimisation; the weights after it agree with the compiled "
         "step's to float rounding. One device, no XLA.", resume=True),
    _opt("runtime.native_kernels", True, _BOOL,
         "CPU-only hosts, slice mode: the depthwise filter and swish gradients, and training's "
         "batch norm with the swish after it (both ways), on native kernels that the "
         "machine's C++ compiler builds on first use (about 10 s, once; "
         "tf_bignas.model.native) instead of TensorFlow's ops; where the kernels do not "
         "build, TensorFlow's ops with a warning. The same functions in another float rounding.",
         resume=True),
    _opt("runtime.graph_cache_dir", "workdir", _TEXT,
         "Where the training step's trace and optimised graph are kept for the next process "
         "with the same step (a resume, another seed of a sweep): it then loads the trace "
         "instead of tracing (tf_bignas.train.trace_cache; keyed by the code, settings and "
         "variables it is built from; one device, no XLA) and skips graph optimisation "
         "(tf_bignas.train.graph_cache; keyed by the graph's content). 'workdir' = "
         "<workdir>/graph_cache; a path = that directory (share it across the runs of a sweep); "
         "'' = no cache. Not used on TPUs.", resume=True),
    _opt("runtime.steps_per_loop", 1, _int(1, "steps per compiled call"),
         "Sandwich steps per compiled call (an on-device loop; children are drawn in-graph "
         "from (seed, step), so any value trains the same weights); the host reads the losses "
         "(and checks that they are finite) only at log, checkpoint and evaluation steps; "
         "raise it on TPUs and fast GPUs.", resume=True),
)  # fmt: skip

_MODEL = (
    _opt("model.space", "bignas_mobilenetv2", _choice(*space_names()),
         "The search space (tf_bignas.space)."),
    _opt("model.train_resolutions", (), Rule("ints", low=8, note="empty = the space's own"),
         "Training resolutions; empty = the space's own, else overrides (e.g. small images on "
         "a CPU)."),
    _opt("model.resolutions", (), Rule("ints", low=8, note="empty = the training resolutions"),
         "Every resolution of the space (a superset of train_resolutions); empty = the "
         "space's own."),
    _opt("model.mode", "slice", _choice(*MODES),
         "How children take their weights: 'slice' (dynamic shapes) or 'mask' (static "
         "shapes, for XLA / TPU)."),
    _opt("model.zero_init_last_bn", True, _BOOL, "Zero-init the last BN gamma of each block."),
    _opt("model.stage_shortcuts", True, _BOOL, "Shortcuts at stage transitions."),
    _opt("model.synchronized_bn", False, _BOOL, "BN statistics synchronized over replicas."),
    _opt("model.dropout_rate", 0.2, _FRACTION, "Dropout before the classifier."),
    _opt("model.bn_epsilon", 1e-3, _POSITIVE, "BN epsilon."),
)  # fmt: skip

_DATA = (
    _opt("data.source", "tfds:imagenet2012", _NAME,
         "'tfds:NAME', 'folder:PATH' or 'embedded'."),
    _opt("data.data_dir", "", _TEXT, "TFDS data directory ('' = TFDS's default).", resume=True),
    _opt("data.train_split", "train", _NAME, "The training split."),
    _opt("data.eval_split", "validation", _NAME, "The evaluation split.", resume=True),
    _opt("data.minival", 0.0,
         _float(0.0, note="images (>= 1) or a fraction (< 1) of train; 0 = none"),
         "Images (>= 1) or fraction (< 1) held out of train; 0 = none."),
    _opt("data.augment", "autoaugment", _choice(*AUGMENT_NAMES),
         "'autoaugment' | 'randaugment' | 'none'."),
    _opt("data.base_resolution", 0, _int(0, "0 = the largest training resolution"),
         "Resolution of the shared crop; 0 = the largest training resolution."),
    _opt("data.crop_scale", (0.08, 1.0), Rule("pair"),
         "Area fraction (min, max) of the Inception-style random crop."),
    _opt("data.strict", False, _BOOL, "Fail on a corrupt image instead of skipping it.",
         resume=True),
    _opt("data.transport", "uint8", _choice(*TRANSPORTS),
         "What leaves the host per training example: 'uint8' (every resolution, normalised in "
         "the step), 'patch' (the uint8 shared patch alone; the step resizes and normalises "
         "it: for accelerators, whose hosts are the bottleneck) or 'float' (normalised float32 "
         "at every resolution); see tf_bignas/data/device.py and benchmarks/README.md."),
    _opt("data.shared_patch", True, _BOOL,
         "The paper's 'same random crop resized to every resolution'; False (for ablation): "
         "an independent crop, flip and augmentation per resolution."),
    _opt("data.crop_per_child", False, _BOOL,
         "Ablation of the shared patch: an independent crop, flip and augmentation for every "
         "child of a step (resized to that child's resolution); needs shared_patch=True and "
         "transport 'uint8' or 'float'. In the CIFAR-10 regime of experiments/RESULTS.md "
         "(section 6.4) it beat the shared patch on both seeds, with and without distillation."),
)  # fmt: skip

_SANDWICH = (
    _opt("sandwich.num_random", 2, _int(0), "Random children per step, between the extremes."),
    _opt("sandwich.inplace_distillation", True, _BOOL,
         "Children learn from the largest child's predictions."),
    _opt("sandwich.distill_weight", 1.0, _float(0.0, 1.0),
         "The teacher's share of the children's targets (the rest: the smoothed labels), "
         "reached after distill_ramp of training; 1.0 (with distill_ramp 0.0) is the paper's "
         "inplace distillation. For short budgets use 0.5: on CIFAR-10 (5,000 images, 48 "
         "epochs, two seeds) it recovers the 9 points the paper's setting loses against hard "
         "labels (experiments/RESULTS.md, section 6)."),
    _opt("sandwich.distill_ramp", 0.0, _float(0.0, 1.0, note="a fraction of the training steps"),
         "Fraction of training over which distill_weight rises linearly from 0."),
    _opt("sandwich.label_smoothing", 0.1, _FRACTION, "Label smoothing of the largest child."),
    _opt("sandwich.weight_decay", 1e-5, _float(0.0), "Weight decay of the largest child."),
    _opt("sandwich.regularize_all_children", False, _BOOL,
         "Dropout on every child and each child's own weight decay on the kernel slices it "
         "uses, not only on the largest."),
)  # fmt: skip

_OPTIMIZER = (
    _opt("optimizer.base_lr", 0.256, _POSITIVE, "LR for reference_batch, scaled linearly."),
    _opt("optimizer.reference_batch", 4096, _int(1), "The batch size of base_lr."),
    _opt("optimizer.rho", 0.9, _FRACTION, "RMSProp decay."),
    _opt("optimizer.momentum", 0.9, _FRACTION, "RMSProp momentum."),
    _opt("optimizer.epsilon", 1e-3, _POSITIVE, "RMSProp epsilon."),
    _opt("optimizer.initial_accumulator", 1.0, _float(0.0),
         "RMSProp's initial accumulator (1.0: TF1 RMSProp, as the paper ran it)."),
    _opt("optimizer.ema", False, _BOOL, "Keep (and evaluate) a moving average of the weights."),
    _opt("optimizer.ema_decay", 0.9999, _float(0.0, 1.0, low_open=True, high_open=True),
         "Decay of the weights' moving average."),
)  # fmt: skip

_SCHEDULE = (
    _opt("schedule.kind", "exponential", _choice(*SCHEDULE_KINDS), "'exponential' or 'cosine'."),
    _opt("schedule.warmup_epochs", 5.0, _float(0.0), "Linear warmup, in epochs."),
    _opt("schedule.decay_rate", 0.97, _float(0.0, 1.0, low_open=True),
         "Exponential decay factor per decay_epochs."),
    _opt("schedule.decay_epochs", 2.4, _POSITIVE, "Epochs per decay_rate."),
    _opt("schedule.final_lr_fraction", 0.05, _float(0.0, 1.0),
         "The floor (exponential) or end (cosine), as a fraction of the initial LR."),
    _opt("schedule.constant_ending", True, _BOOL, "Stay at the floor once reached."),
    _opt("schedule.staircase", True, _BOOL,
         "As EfficientNet's TPU code: decay_rate once every decay_epochs, counted from step 0 "
         "(warmup included); False / decay_from='warmup_end' decay smoothly from the end of "
         "warmup instead."),
    _opt("schedule.decay_from", "step0", _choice(*DECAY_FROM),
         "Where the decay clock starts: 'step0' or 'warmup_end'."),
)  # fmt: skip

_CHAIN = (
    _opt("chain.budgets", "", _TEXT,
         "The one-command chain (pipelines/run_all.py): budgets, e.g. 'mflops:250,400,600'; "
         "required by run_all.", resume=True),
    _opt("chain.search_method", "coarse_to_fine", _NAME, "The search method of the chain.",
         resume=True),
    _opt("chain.search_log_every", 10, _int(1), "A search progress line every N children.",
         resume=True),
    _opt("chain.quantize", "fp32,int8", _TEXT,
         "TFLite files per child (fp16 too if listed).", resume=True),
    _opt("chain.verify_examples", 0, _int(0, "0 = the whole eval split"),
         "Images verified per file; 0 = the whole eval split.", resume=True),
    _opt("chain.int8_min_agreement", 0.9, _float(0.0, 1.0),
         "int8 top-1 agreement with fp32 for the int8 file to be written.", resume=True),
    _opt("chain.benchmark_threads", 1, _int(1), "Threads of the host benchmark.", resume=True),
    _opt("chain.benchmark_runs", 50, _int(1), "Timed runs of the host benchmark.", resume=True),
)  # fmt: skip

OPTIONS: Mapping[str, Option] = MappingProxyType(
    {
        o.name: o
        for o in (
            *_TOP, *_TRAIN, *_RUNTIME, *_MODEL, *_DATA, *_SANDWICH, *_OPTIMIZER, *_SCHEDULE,
            *_CHAIN,
        )
    }
)  # fmt: skip


def section_of(name: str) -> str:
    """The section of a dotted option name ("" for a top-level option such as "seed")."""
    return name.rpartition(".")[0]


def defaults() -> dict[str, Any]:
    """Every option's default, by dotted name, in the table's order.

    Returns:
        {"section.key": default}; a fresh dict (the table itself is read-only).
    """
    return {name: option.default for name, option in OPTIONS.items()}


def resumable_options() -> tuple[str, ...]:
    """The options that may change on resume, in the table's order.

    Returns:
        Dotted names; a section whose options are all resumable is one
        ``"section.*"`` entry (so are options added to it later).
    """
    out: list[str] = []
    for name, option in OPTIONS.items():
        if not option.resumable:
            continue
        section = section_of(name)
        whole = section and all(o.resumable for n, o in OPTIONS.items() if section_of(n) == section)
        entry = f"{section}.*" if whole else name
        if entry not in out:
            out.append(entry)
    return tuple(out)


def unknown_option_message(name: str, known: Iterable[str], origin: str) -> str:
    """What to say about an option name that the tree does not hold.

    Args:
        name: The dotted name as given, e.g. "train.epoch".
        known: Every dotted name the tree holds.
        origin: Where it came from, e.g. "--config.train.epoch" or
            "--config=configs/x.py".

    Returns:
        E.g. "unknown option train.epoch (from --config.train.epoch); did you
        mean train.epochs? options of train: batch_size, epochs, ...".
    """
    known = sorted(known)
    section = section_of(name)
    siblings = [n.rpartition(".")[2] for n in known if section_of(n) == section]
    sections = sorted({section_of(n) for n in known} - {""})
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    text = f"unknown option {name} (from {origin})"
    text += f"; did you mean {close[0]}?" if close else ";"
    if not section:
        return f"{text} top-level options: {', '.join(siblings)}; sections: {', '.join(sections)}"
    if siblings:
        return f"{text} options of {section}: {', '.join(siblings)}"
    return f"{text} there is no section {section}; sections: {', '.join(sections)}"


def check_known_options(names: Iterable[str], origin: str = "the config") -> None:
    """Rejects option names that the schema does not hold.

    Args:
        names: Dotted option names (e.g. the keys of a flattened config).
        origin: Where they came from, for the message (a file, a flag).

    Raises:
        ConfigError: Naming the first unknown option, where it came from, the
            closest known name and the options of its section.
    """
    for name in names:
        if name not in OPTIONS:
            raise ConfigError(unknown_option_message(name, OPTIONS, origin))
