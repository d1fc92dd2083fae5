"""Time exported models on this machine: TFLite (ai-edge-litert, XNNPACK) and Keras.

    python -m tools.benchmark --models=WORKDIR/export --threads=1 --runs=200 --warmup=20

Every `.tflite` file under --models (and each child's `child.keras`) runs
batch-1 invocations, the files of one child in turn; the mean, median and
90th percentile go into each `model_card.json` (a latency entry for target
"host", this CPU, the threads, delegate and format) and into
`benchmark_host.csv` in --models. A file whose sha256 differs from the one
its card verified stops the run before anything is timed (one line naming
the file, exit status 2). Printed beside the times: the ratio to the
child's fp32 file (int8/fp32, fp16/fp32, keras/fp32) and the sliced/built
fp32 ratio, with a float32 matmul rate as the machine's reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet

from absl import flags, logging  # noqa: E402

from tools.cli import run  # noqa: E402

_MODELS = flags.DEFINE_string("models", None, "Export folder (searched recursively).")
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter (and TensorFlow) threads.")
_RUNS = flags.DEFINE_integer("runs", 100, "Timed invocations per file.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed invocations per file first.")
_KERAS = flags.DEFINE_bool("keras", True, "Time child.keras too.")
flags.mark_flags_as_required(["models"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if _THREADS.value < 1:
        raise ValueError(f"--threads must be at least 1, got {_THREADS.value}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    # Before TensorFlow runs anything: the Keras timing uses the same threads.
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tf_bignas.export.host_benchmark import benchmark_models, summary_lines

    report = benchmark_models(
        _MODELS.value,
        threads=_THREADS.value,
        runs=_RUNS.value,
        warmup=_WARMUP.value,
        keras=_KERAS.value,
        log=lambda s: print(s, flush=True),
    )
    print("\n".join(summary_lines(report)))
    print(f"results in {report.csv_path} and the model cards")


if __name__ == "__main__":
    run(main)
