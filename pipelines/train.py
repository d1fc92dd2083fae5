"""Train a BigNAS supernet: sandwich rule + inplace distillation.

    python -m pipelines.train --config=configs/quickstart.py --workdir=/tmp/quickstart
    python -m pipelines.train --config=configs/cifar10.py --workdir=/tmp/cifar \
        --config.train.epochs=30 --max_steps=1000
    python -m pipelines.train --config=configs/bignas_imagenet.py --workdir=gs://bucket/run \
        --strategy=tpu --tpu=my-tpu

Overrides use `--config.section.key=value`; an unknown key is an error. The
resolved config is written to WORKDIR/config.json. Running the same command
again resumes from the last checkpoint in WORKDIR.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tf_bignas.train.config import validate_config  # noqa: E402
from tf_bignas.train.distribute import STRATEGIES, build_strategy  # noqa: E402
from tf_bignas.train.loop import NonFiniteLossError, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, logs, results).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 0, "Stop cleanly at this global step (0 = off).")
_STRATEGY = flags.DEFINE_enum(
    "strategy", None, list(STRATEGIES), "Overrides config.runtime.strategy."
)
_TPU = flags.DEFINE_string("tpu", None, "TPU name or address (overrides config.runtime.tpu).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    with config.unlocked():
        if _STRATEGY.value:
            config.runtime.strategy = _STRATEGY.value
        if _TPU.value is not None:
            config.runtime.tpu = _TPU.value
    try:
        validate_config(config)  # before connecting to devices or writing anything
        strategy = build_strategy(config.runtime.strategy, config.runtime.tpu)
        train(config, _WORKDIR.value, max_steps=_MAX_STEPS.value or None, strategy=strategy,
              log=lambda line: print(line, flush=True))  # fmt: skip
    except (NonFiniteLossError, ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
