"""The full tree of training options, with the paper's values as defaults.

Every config in `configs/` starts from `default_config()` and changes what its
experiment needs. The tree is locked by `ml_collections.config_flags`, so a
misspelt `--config.path=value` override is an error, never ignored.
"""

from __future__ import annotations

import ml_collections

from tf_bignas.model import Supernet
from tf_bignas.space import SearchSpace, get_space
from tf_bignas.train.calibration import DEFAULT_CALIBRATION_BATCHES


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

    c.sandwich = ml_collections.ConfigDict()
    c.sandwich.num_random = 2
    c.sandwich.inplace_distillation = True
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

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 4096
    c.train.epochs = 360.0
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    # Save the input iterator in checkpoints (exact resume). Its state holds the
    # shuffle buffer: small for in-memory data, about 1 GB for ImageNet from TFDS.
    c.train.checkpoint_data = True
    c.train.eval_every = 5000  # 0 = only at the end
    c.train.calibration_batches = DEFAULT_CALIBRATION_BATCHES
    c.train.eval_batches = 0  # 0 = the whole eval split

    c.runtime = ml_collections.ConfigDict()
    c.runtime.strategy = "default"  # "mirrored" | "multi_worker" | "tpu"
    c.runtime.tpu = ""
    c.runtime.deterministic = False  # enable_op_determinism (slower)
    c.runtime.jit_compile = False  # XLA for each child pass on GPU (needs model.mode="mask")
    c.runtime.threads = 0  # intra/inter-op threads; 0 = TensorFlow's default
    return c


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
