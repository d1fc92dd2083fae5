"""The whole product in one command: train, search, export, benchmark, report.

    python -m pipelines.run_all --config=configs/quickstart.py --workdir=workdirs/quickstart
    python -m pipelines.run_all --config=configs/cifar10.py --workdir=workdirs/cifar10 \
        --config.chain.budgets=mflops:20,40,60

Trains the supernet (resuming if WORKDIR holds a checkpoint), searches the best
child under each budget of `config.chain.budgets`, exports each chosen child
(Keras, SavedModel, TFLite in the formats of `config.chain.quantize`, each
verified on the evaluation split), times the files on this host, and writes
WORKDIR/report.md and report.html. Running the same command again skips every
stage that is complete and continues an interrupted one. Overrides use
`--config.section.key=value` (an unknown key, on the command line or in the
config file, is an error).
"""

from __future__ import annotations

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tf_bignas.chain import ChainError, run_chain  # noqa: E402
from tf_bignas.run.validation import check_config_keys  # noqa: E402
from tools import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder of every stage.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Runs (or continues) every stage for the config and workdir of the flags.

    Args:
        argv: The program name (positional arguments are refused by `cli.run`).
    """
    del argv  # cli.run refuses positional arguments
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = cli.load_config(_CONFIG, check=check_config_keys)
    if not config.chain.budgets:
        raise ValueError(
            "config.chain.budgets is empty: set budgets, e.g. --config.chain.budgets=mflops:250,400"
        )
    command = shlex.join([sys.executable, "-m", "pipelines.run_all", *sys.argv[1:]])
    try:
        result = run_chain(
            config, _WORKDIR.value, resume_command=command, log=lambda line: print(line, flush=True)
        )
    except ChainError as e:
        cli.fail(str(e))
    print("\n" + result.table)
    print(
        "stages: "
        + ", ".join(f"{k} {v} ({result.seconds[k]:.0f} s)" for k, v in result.stages.items())
    )
    for name, path in result.files.items():
        if os.path.exists(path):
            print(f"{name}: {path}")


if __name__ == "__main__":
    cli.run(main)
