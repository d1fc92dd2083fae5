"""Train a BigNAS supernet: sandwich rule + inplace distillation.

    python -m pipelines.train --config=configs/quickstart.py --workdir=/tmp/quickstart
    python -m pipelines.train --config=configs/cifar10.py --workdir=/tmp/cifar \
        --config.train.epochs=30 --max_steps=1000
    python -m pipelines.train --config=configs/bignas_imagenet.py --workdir=gs://bucket/run \
        --strategy=tpu --tpu=my-tpu

Overrides use `--config.section.key=value`; an unknown key, on the command line
or in the config file, is an error that names the closest known one. The
resolved config is written to WORKDIR/config.json and WORKDIR/run.json.
Running the same command again resumes from the last checkpoint in WORKDIR
(a resume with other values of options that define the run is refused; those
that may change are marked resumable in `tf_bignas.run.schema`). A bad option,
path or dataset, a stray argument, a busy or mismatched workdir, or a
non-finite loss ends with one line on stderr and exit code 2 (`--verbose`
adds the traceback).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tf_bignas.run.config import STRATEGIES, validate_config  # noqa: E402
from tf_bignas.run.validation import check_config_keys, validate_workdir_path  # noqa: E402
from tf_bignas.train.distribute import WorkerFailureError, build_strategy  # noqa: E402
from tf_bignas.train.loop import NonFiniteLossError, train  # noqa: E402
from tools import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, logs, results).")
_MAX_STEPS = flags.DEFINE_integer(
    "max_steps", 0, "Stop cleanly at this global step (0 = off).", lower_bound=0
)
_STRATEGY = flags.DEFINE_enum(
    "strategy", None, list(STRATEGIES), "Overrides config.runtime.strategy."
)
_TPU = flags.DEFINE_string(
    "tpu",
    None,
    "TPU name or grpc://host:port address reachable from this VM, or 'local' on a TPU VM "
    "(overrides config.runtime.tpu).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Trains (or resumes) the run that the flags describe.

    Args:
        argv: The program name (positional arguments are refused by `cli.run`).

    Raises:
        ConfigError: A bad option, path or combination (before anything is written).
    """
    del argv  # cli.run refuses positional arguments
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = cli.load_config(_CONFIG, check=check_config_keys)
    with config.unlocked():
        if _STRATEGY.value:
            config.runtime.strategy = _STRATEGY.value
        if _TPU.value is not None:
            config.runtime.tpu = _TPU.value
    # Before connecting to devices or writing anything (train() checks again).
    validate_config(config)
    validate_workdir_path(_WORKDIR.value)
    strategy = build_strategy(config.runtime.strategy, config.runtime.tpu)
    train(config, _WORKDIR.value, max_steps=_MAX_STEPS.value or None, strategy=strategy,
          log=lambda line: print(line, flush=True))  # fmt: skip


if __name__ == "__main__":
    cli.run(main, expected=(NonFiniteLossError, WorkerFailureError))
