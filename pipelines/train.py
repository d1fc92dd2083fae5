"""Train a BigNAS supernet: sandwich rule + inplace distillation.

    python -m pipelines.train --config=configs/quickstart.py --workdir=/tmp/quickstart
    python -m pipelines.train --config=configs/cifar10.py --workdir=/tmp/cifar \
        --config.train.epochs=30 --max_steps=1000
    python -m pipelines.train --config=configs/bignas_imagenet.py --workdir=gs://bucket/run \
        --strategy=tpu --tpu=my-tpu

Overrides use `--config.section.key=value`; an unknown key is an error. The
resolved config is written to WORKDIR/config.json and WORKDIR/run.json.
Running the same command again resumes from the last checkpoint in WORKDIR
(a resume with other values of options that define the run is refused, see
`tf_bignas.train.integrity`). A bad option, path or dataset, a busy or
mismatched workdir, or a non-finite loss ends with one line on stderr and
exit code 2 (`--verbose` adds the traceback).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet

from absl import app, flags, logging  # noqa: E402
from ml_collections import ConfigDict, config_flags  # noqa: E402

from tf_bignas.run.config import (
    STRATEGIES,
    validate_config,  # noqa: E402
)
from tf_bignas.run.validation import (  # noqa: E402
    ConfigError,
    validate_options,
    validate_workdir_path,
)
from tf_bignas.train.distribute import WorkerFailureError, build_strategy
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
_TPU = flags.DEFINE_string("tpu", None, "TPU name or address (overrides config.runtime.tpu).")
flags.mark_flags_as_required(["config", "workdir"])


def _load_config() -> ConfigDict:
    """The --config file, or a ConfigError naming it (missing, broken, not a config)."""
    # ml_collections takes `path:arg` (an argument for get_config) and splits at the colon.
    path = flags.FLAGS["config"].config_filename.partition(":")[0]
    if not os.path.isfile(path):
        raise ConfigError(
            f"--config={path}: no such file; give a config file such as configs/quickstart.py"
        )
    try:
        config = _CONFIG.value
        config.keys()  # a config that failed to load raises on first use
    except Exception as e:  # noqa: BLE001 - whatever the user's file raised
        cause = e.__cause__ or e
        first = (str(cause).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"--config={path}: cannot load it ({type(cause).__name__}: {first})"
        ) from e
    if not isinstance(config, ConfigDict):
        raise ConfigError(
            f"--config={path}: get_config() returned a {type(config).__name__}, not a ConfigDict"
        )
    return config


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _load_config()
    with config.unlocked():
        if _STRATEGY.value:
            config.runtime.strategy = _STRATEGY.value
        if _TPU.value is not None:
            config.runtime.tpu = _TPU.value
    # Before connecting to devices or writing anything (train() checks again).
    validate_options(config)
    validate_config(config)
    validate_workdir_path(_WORKDIR.value)
    strategy = build_strategy(config.runtime.strategy, config.runtime.tpu)
    train(config, _WORKDIR.value, max_steps=_MAX_STEPS.value or None, strategy=strategy,
          log=lambda line: print(line, flush=True))  # fmt: skip


if __name__ == "__main__":
    cli.run(main, expected=(NonFiniteLossError, WorkerFailureError))
