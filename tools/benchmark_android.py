"""Benchmark exported TFLite models on an Android phone with TFLite's `benchmark_model`.

    python -m tools.benchmark_android --models=WORKDIR/export --serial=R58M40ABCDE \
        --benchmark_binary=android_aarch64_benchmark_model --num_threads=4 --cpu_mask=f0

Uses `adb` from the PATH. Every `.tflite` file under --models is checked
against the model card of its folder (a file whose sha256 is not the one the
card verified is refused, naming it, before anything reaches the phone), then
pushed with the binary to --device_dir and run with the given flags, holding
the lock of the workdir that holds --models. The results go to
`benchmark_android.csv` in --models and to a latency entry (target
"android", keyed by device model, threads, delegate and format) of each
`model_card.json` beside a model. Each result is saved as soon as it is
measured: after a disconnect, run the same command again and it continues
with the models not measured yet.

Expected errors (a refused file, a busy workdir, no device, a failing model)
end the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os

# The workdir lock's module imports TensorFlow (for remote paths); this program
# runs no TensorFlow op, so its start-up log lines (oneDNN, CPU features) are
# turned off to keep an error on one line.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import flags  # noqa: E402

from tf_bignas.common.text import clean  # noqa: E402
from tf_bignas.latency.android import (  # noqa: E402
    DEFAULT_DEVICE_DIR,
    BenchmarkOptions,
    benchmark_android,
)
from tools.cli import run  # noqa: E402

_MODELS = flags.DEFINE_string("models", None, "Folder of .tflite files (searched recursively).")
_SERIAL = flags.DEFINE_string(
    "serial", None, "Device serial ('adb devices'); default: the only one."
)
_BINARY = flags.DEFINE_string(
    "benchmark_binary", None, "Host path of benchmark_model for the phone."
)
_THREADS = flags.DEFINE_integer("num_threads", 1, "CPU threads.")
_GPU = flags.DEFINE_bool("use_gpu", False, "GPU delegate.")
_NNAPI = flags.DEFINE_bool("use_nnapi", False, "NNAPI delegate.")
_XNNPACK = flags.DEFINE_bool("use_xnnpack", True, "XNNPACK delegate.")
_MASK = flags.DEFINE_string("cpu_mask", "", "Hex CPU-affinity mask for taskset (e.g. f0).")
_WARMUP = flags.DEFINE_integer("warmup_runs", 5, "Untimed runs per model.")
_RUNS = flags.DEFINE_integer("num_runs", 50, "Timed runs per model.")
_DEVICE_DIR = flags.DEFINE_string("device_dir", DEFAULT_DEVICE_DIR, "Working folder on the device.")
_REMEASURE = flags.DEFINE_bool("remeasure", False, "Measure again what the CSV already holds.")
flags.mark_flags_as_required(["models", "benchmark_binary"])


def main(argv: list[str]) -> None:
    """Runs the benchmark and prints what it measured.

    Args:
        argv: The arguments absl left (none expected).

    Raises:
        ValueError: Unexpected arguments, bad options, a refused file or a busy
            workdir.
        OSError: adb or the device failed.
    """
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    options = BenchmarkOptions(
        num_threads=_THREADS.value,
        use_gpu=_GPU.value,
        use_nnapi=_NNAPI.value,
        use_xnnpack=_XNNPACK.value,
        cpu_mask=_MASK.value,
        warmup_runs=_WARMUP.value,
        num_runs=_RUNS.value,
    )
    report = benchmark_android(
        _MODELS.value,
        _BINARY.value,
        serial=_SERIAL.value,
        options=options,
        device_dir=_DEVICE_DIR.value,
        remeasure=_REMEASURE.value,
        log=lambda line: print(clean(line), flush=True),
    )
    d = report.device
    summary = (
        f"{d.model} (Android {d.android_version}, {d.abi}, serial {d.serial}): "
        f"{len(report.measured)} measured, {len(report.skipped)} already measured "
        f"({options.num_threads} threads, {options.delegate}); results in {report.csv_path}"
    )
    print(clean(summary, one_line=True))


if __name__ == "__main__":
    run(main)
