"""The option tree of a run, with the paper's values as defaults, and what it builds.

Every config in `configs/` starts from `default_config()` and changes what its
experiment needs. `validate_config` rejects option combinations that would
fail later; the per-option rules are in `tf_bignas.run.validation`. The
objects every stage rebuilds from a stored config live here too: the space
(`build_space`), the supernet (`build_supernet`) and the minival size as the
data package takes it (`minival_size`). The training-only builders (schedule,
optimizer) are in `tf_bignas.train.config`.
"""

from __future__ import annotations

import ml_collections

from tf_bignas.data.device import TRANSPORTS
from tf_bignas.model import Supernet
from tf_bignas.run.evaluator import DEFAULT_CALIBRATION_BATCH_SIZE, DEFAULT_CALIBRATION_IMAGES
from tf_bignas.space import SearchSpace, get_space

# The choices of options whose code lives in a later stage (train), named here
# so that the option tree can be checked without importing that stage.
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
SCHEDULE_KINDS = ("exponential", "cosine")
DECAY_FROM = ("step0", "warmup_end")


def default_config() -> ml_collections.ConfigDict:
    """The BigNAS recipe (paper sections 3.1 and 4.2) on ImageNet-sized data.

    Returns:
        A ConfigDict with sections seed, model, data, sandwich, optimizer,
        schedule, train, runtime.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.space = "bignas_mobilenetv2"
    # Empty: the space's own resolutions. Else overrides (e.g. small images on a CPU).
    c.model.train_resolutions = ()
    c.model.resolutions = ()
    c.model.mode = "slice"  # "mask" for XLA / TPU
    c.model.zero_init_last_bn = True
    c.model.stage_shortcuts = True
    c.model.synchronized_bn = False
    c.model.dropout_rate = 0.2
    c.model.bn_epsilon = 1e-3

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds:imagenet2012"  # or "folder:PATH" or "embedded"
    c.data.data_dir = ""
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.minival = 0.0  # images (>=1) or fraction (<1) held out of train; 0 = none
    c.data.augment = "autoaugment"  # "randaugment" | "none"
    c.data.base_resolution = 0  # 0 = the largest training resolution
    c.data.crop_scale = (0.08, 1.0)  # area fraction of the Inception-style random crop
    c.data.strict = False  # fail on a corrupt image instead of skipping it
    # What leaves the host per training example: "uint8" (every resolution,
    # normalised in the step), "patch" (the uint8 shared patch alone; the step
    # resizes and normalises it: for accelerators, whose hosts are the
    # bottleneck) or "float" (normalised float32 at every resolution). See
    # tf_bignas/data/device.py and benchmarks/README.md.
    c.data.transport = "uint8"
    # The paper's "same random crop resized to every resolution". False (for
    # ablation): an independent crop, flip and augmentation per resolution.
    c.data.shared_patch = True

    c.sandwich = ml_collections.ConfigDict()
    c.sandwich.num_random = 2
    c.sandwich.inplace_distillation = True
    # The teacher's share of the children's targets (the rest: the smoothed
    # labels), reached after `distill_ramp` of training, rising linearly from 0.
    # 1.0 and 0.0 are the paper's inplace distillation (experiments/RESULTS.md
    # measures the alternatives for short budgets).
    c.sandwich.distill_weight = 1.0
    c.sandwich.distill_ramp = 0.0
    c.sandwich.label_smoothing = 0.1
    c.sandwich.weight_decay = 1e-5
    c.sandwich.regularize_all_children = False

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.base_lr = 0.256  # for reference_batch, scaled linearly
    c.optimizer.reference_batch = 4096
    c.optimizer.rho = 0.9
    c.optimizer.momentum = 0.9
    c.optimizer.epsilon = 1e-3
    c.optimizer.initial_accumulator = 1.0  # TF1 RMSProp, as the paper ran it
    c.optimizer.ema = False
    c.optimizer.ema_decay = 0.9999

    c.schedule = ml_collections.ConfigDict()
    c.schedule.kind = "exponential"  # or "cosine"
    c.schedule.warmup_epochs = 5.0
    c.schedule.decay_rate = 0.97
    c.schedule.decay_epochs = 2.4
    c.schedule.final_lr_fraction = 0.05
    c.schedule.constant_ending = True
    # As EfficientNet's TPU code: 0.97 once every 2.4 epochs, counted from step 0
    # (warmup included). staircase=False / decay_from="warmup_end" decay
    # smoothly from the end of warmup instead.
    c.schedule.staircase = True
    c.schedule.decay_from = "step0"  # or "warmup_end"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 4096
    c.train.epochs = 360.0
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    # A checkpoint is written only if every weight is finite and within this
    # bound (and the optimizer state finite): "the last good checkpoint" resumes.
    c.train.max_abs_weight = 1e6
    # Save the input iterator in checkpoints (exact resume). Its state holds the
    # shuffle buffer: small for in-memory data, about 1 GB for ImageNet from TFDS.
    c.train.checkpoint_data = True
    c.train.eval_every = 5000  # 0 = only at the end
    # BN calibration of each evaluated child: a fixed random sample of the
    # training split (the same images for every child), in batches of its own
    # size; see tf_bignas.run.evaluator for the choice of 2,048.
    c.train.calibration_images = DEFAULT_CALIBRATION_IMAGES
    c.train.calibration_batch_size = DEFAULT_CALIBRATION_BATCH_SIZE
    c.train.eval_batches = 0  # 0 = the whole eval split
    # Training images (a fixed random sample, evaluated as the eval split is:
    # centre crop, no augmentation) scored at every evaluation beside the eval
    # split, so that overfitting shows; 0 = none.
    c.train.eval_train_images = 0

    c.runtime = ml_collections.ConfigDict()
    c.runtime.strategy = "default"  # "mirrored" | "multi_worker" | "tpu"
    c.runtime.tpu = ""
    c.runtime.deterministic = False  # enable_op_determinism (slower)
    c.runtime.jit_compile = False  # XLA for each child pass on GPU (needs model.mode="mask")
    c.runtime.threads = 0  # intra/inter-op threads; 0 = TensorFlow's default
    # CPU-only hosts: skip the Grappler passes that leave the step's graph as
    # it was (train.step.skip_idle_graph_passes); a shorter first step.
    c.runtime.lean_grappler = True
    # Sandwich steps per compiled call (an on-device loop; children are drawn
    # in-graph from (seed, step), so any value trains the same weights). The
    # host reads the losses (and checks that they are finite) only at log,
    # checkpoint and evaluation steps. Raise it on TPUs and fast GPUs.
    c.runtime.steps_per_loop = 1

    # The one-command chain (pipelines/run_all.py): search, export, benchmark.
    c.chain = ml_collections.ConfigDict()
    c.chain.budgets = ""  # e.g. "mflops:250,400,600"; required by run_all
    c.chain.search_method = "coarse_to_fine"
    c.chain.search_log_every = 10
    c.chain.quantize = "fp32,int8"  # TFLite files per child (fp16 too if listed)
    c.chain.verify_examples = 0  # images verified per file; 0 = the whole eval split
    c.chain.int8_min_agreement = 0.9  # int8 top-1 agreement with fp32 to be written
    c.chain.benchmark_threads = 1
    c.chain.benchmark_runs = 50
    return c


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Rejects option combinations that would fail later, before anything is written.

    Args:
        config: The resolved config.

    Raises:
        ValueError: Naming the option, its value and what is allowed.
    """
    rt, m, s, t = config.runtime, config.model, config.schedule, config.train
    if rt.strategy not in STRATEGIES:
        raise ValueError(
            f"runtime.strategy={rt.strategy!r} is unknown; allowed: {list(STRATEGIES)}"
        )
    if m.mode not in ("slice", "mask"):
        raise ValueError(f"model.mode={m.mode!r} is unknown; allowed: ['slice', 'mask']")
    if rt.strategy == "tpu" and m.mode != "mask":
        raise ValueError(
            f"runtime.strategy='tpu' needs static shapes, but model.mode={m.mode!r} slices "
            "weights to dynamic shapes that XLA cannot compile; use --config.model.mode=mask"
        )
    if rt.jit_compile and m.mode != "mask":
        raise ValueError(
            f"runtime.jit_compile=True needs static shapes, but model.mode={m.mode!r}; "
            "use --config.model.mode=mask"
        )
    steps = rt.steps_per_loop
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"runtime.steps_per_loop must be a positive int, got {steps!r}")
    if steps > 1 and rt.strategy == "multi_worker":
        # Measured: the collectives of synchronized BN inside the on-device loop
        # were matched across different steps of the two workers (shape mismatch).
        raise ValueError(
            f"runtime.steps_per_loop={steps} is not supported with runtime.strategy="
            "'multi_worker' (collective ops inside the on-device loop); use 1"
        )
    if not config.data.get("shared_patch", True) and config.data.transport == "patch":
        raise ValueError(
            "data.shared_patch=False (a patch per resolution) needs data.transport='uint8' or "
            "'float'; 'patch' ships one shared patch"
        )
    if config.data.transport not in TRANSPORTS:
        raise ValueError(
            f"data.transport={config.data.transport!r} is unknown; allowed: {list(TRANSPORTS)}"
        )
    if s.kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule.kind={s.kind!r} is unknown; allowed: {list(SCHEDULE_KINDS)}")
    if s.decay_from not in DECAY_FROM:
        raise ValueError(
            f"schedule.decay_from={s.decay_from!r} is unknown; allowed: {list(DECAY_FROM)}"
        )
    for name in ("batch_size", "calibration_images", "calibration_batch_size"):
        value = t[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train.{name} must be a positive int, got {value!r}")


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
    )


def minival_size(config: ml_collections.ConfigDict) -> int | float | None:
    """`config.data.minival` as the data package takes it: images, a fraction, or None."""
    value = config.data.minival
    if not value:
        return None
    return int(value) if value >= 1 else float(value)
