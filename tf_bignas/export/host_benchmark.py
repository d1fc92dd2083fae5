"""Host latency of exported files: TFLite (ai-edge-litert, XNNPACK on) and Keras.

`benchmark_models(models_dir)` finds every `.tflite` file under an export
folder, times invocations (batch 1) after a warmup, and writes the mean,
median and 90th percentile into each child's `model_card.json` (a latency
entry keyed by target "host", this CPU's model, threads, delegate and format:
`tf_bignas.run.card.put_latency`) and into `benchmark_host.csv` beside the
children. The child's `child.keras` is timed too, for comparison.

Only verified files are timed: a file in a child folder with a card must
have the sha256 the card verified (`card.verified_file`); one that differs
stops the run before anything is timed, naming the file; a file the card
does not list is left out, saying so. A folder of `.tflite` files without
cards is timed as it is. The run holds the enclosing workdir's lock.

The machine is shared and noisy, so the TFLite files of one child are timed
round-robin (one sample of each in turn, `runs` times): a burst of load from
elsewhere hits all of them alike, and the ratios between them (int8 vs fp32,
sliced vs built) hold better than the times. The Keras model is timed after
them, on its own (TensorFlow's threads would disturb the files' samples). Calls
shorter than a millisecond are timed in blocks (see `time_round_robin`). A
float32 matmul rate is measured as the machine's reference.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tf_bignas.common.files import atomic_write_bytes, sha256_path
from tf_bignas.common.text import clean
from tf_bignas.export.tflite import TFLiteRunner
from tf_bignas.run import card as card_lib
from tf_bignas.run import lock

CSV_NAME = "benchmark_host.csv"
CSV_FIELDS = (
    "child",
    "format",
    "file",
    "bytes",
    "mean_ms",
    "median_ms",
    "p90_ms",
    "min_ms",
    "ratio_vs_fp32",
    "runs",
    "calls_per_sample",
    "warmup_runs",
    "threads",
    "machine_gmacs",
    "sha256",
    "measured_at",
)
KERAS_FORMAT = "keras"
BUILT_FORMAT = "built_reference_fp32"


@dataclasses.dataclass(frozen=True)
class Timing:
    """Timing of one model.

    Attributes:
        median_ms: Median single-invocation time.
        p90_ms: 90th percentile.
        min_ms: Fastest invocation.
        runs: Timed samples.
        calls_per_sample: Invocations per sample (1 unless a call is shorter
            than a millisecond).
        mean_ms: Mean single-invocation time.
    """

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    calls_per_sample: int = 1
    mean_ms: float | None = None


@dataclasses.dataclass
class ChildTimings:
    """The timings of one folder of models.

    Attributes:
        folder: The folder.
        child: Its name (the folder's path under the models folder).
        files: {format: file path}.
        timings: {format: Timing}.
    """

    folder: str
    child: str
    files: dict[str, str]
    timings: dict[str, Timing]

    def ratio(self, fmt: str, reference: str = "fp32") -> float | None:
        """median(fmt) / median(reference), or None if either is missing."""
        if fmt not in self.timings or reference not in self.timings:
            return None
        return self.timings[fmt].median_ms / self.timings[reference].median_ms


@dataclasses.dataclass
class HostReport:
    """What `benchmark_models` measured.

    Attributes:
        children: One entry per folder with models.
        machine: Machine description and reference rate.
        csv_path: The CSV written.
        threads: Interpreter threads.
    """

    children: list[ChildTimings]
    machine: dict[str, Any]
    csv_path: str
    threads: int


def machine_reference(size: int = 1024, repeats: int = 5) -> float:
    """This process's float32 matmul rate in GMAC/s (best of `repeats`).

    Args:
        size: Side of the square matrices.
        repeats: Timed runs.

    Returns:
        Multiply-adds per second / 1e9.
    """
    a = tf.random.stateless_normal((size, size), seed=(0, 1))
    b = tf.random.stateless_normal((size, size), seed=(0, 2))
    matmul = tf.function(tf.matmul)
    return size**3 / best_seconds(lambda: matmul(a, b).numpy(), repeats) / 1e9


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The shortest wall time of `repeats` calls of `fn`, after one untimed warm-up call.

    Args:
        fn: The call (it must finish its work before it returns).
        repeats: Timed calls.

    Returns:
        Seconds.
    """
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def host_device() -> str:
    """This machine's CPU model and CPU count (the "device" of host latency entries)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return f"{clean(model, one_line=True)} ({os.cpu_count()} CPUs)"


def verified_files(
    folders: dict[str, dict[str, str]], log: Callable[[str], None]
) -> dict[str, dict[str, str]]:
    """The files to time: those of folders with a card checked against it (see module doc).

    Args:
        folders: {folder: {format: path}} (`find_model_folders`).
        log: Where a note about a file the card does not list goes.

    Returns:
        The same mapping without the files the cards do not list.

    Raises:
        FileDigestError: If a file's sha256 differs from its card's (names the file).
    """
    out: dict[str, dict[str, str]] = {}
    for folder, files in folders.items():
        card = card_lib.read_card(folder)
        if card is None:
            out[folder] = files
            continue
        key_of = {f.get("file"): k for k, f in card.get("files", {}).items()}
        kept = {}
        for fmt, path in files.items():
            key = key_of.get(os.path.basename(path))
            if key is None:
                log(f"{path}: not in {card_lib.CARD_JSON} (unverified), not timed")
                continue
            kept[fmt] = card_lib.verified_file(folder, key, card)
        out[folder] = kept
    return out


def _format_of(name: str) -> str:
    stem = name[: -len(".tflite")]
    return stem.removeprefix("model_")


def find_model_folders(models_dir: str) -> dict[str, dict[str, str]]:
    """{folder: {format: path}} of every `.tflite` file (and `child.keras`) under a folder.

    Raises:
        FileNotFoundError: If the folder is missing.
        ValueError: If it holds no .tflite file.
    """
    if not os.path.isdir(models_dir):
        raise FileNotFoundError(f"models folder {models_dir!r} does not exist")
    found: dict[str, dict[str, str]] = {}
    for dirpath, dirnames, names in os.walk(models_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        tflites = sorted(n for n in names if n.endswith(".tflite") and not n.startswith("."))
        if not tflites:
            continue
        files = {_format_of(n): os.path.join(dirpath, n) for n in tflites}
        if "child.keras" in names:
            files[KERAS_FORMAT] = os.path.join(dirpath, "child.keras")
        found[dirpath] = files
    if not found:
        raise ValueError(
            f"no .tflite file under {models_dir!r}; export children first "
            "(the export program, tools/export.py) or point --models at a folder of .tflite files"
        )
    return found


def _tflite_call(path: str, threads: int) -> Callable[[], None]:
    runner = TFLiteRunner(path=path, num_threads=threads)
    shape = [int(d) if d > 0 else 1 for d in runner.input["shape_signature"]]
    rng = np.random.default_rng(0)
    x = runner.quantize_input(rng.uniform(0, 255, shape).astype(np.float32))

    def call() -> None:
        runner.invoke(x)

    return call


def _keras_call(path: str) -> Callable[[], None]:
    import keras

    model = keras.models.load_model(path)
    spec = model.inputs[0]
    shape = [1, *spec.shape[1:]]
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, shape).astype(spec.dtype))
    fn = tf.function(lambda t: model(t, training=False))

    def call() -> None:
        fn(x).numpy()

    return call


def time_round_robin(
    calls: dict[str, Callable[[], None]], runs: int, warmup: int, min_sample_ms: float = 1.0
) -> dict[str, Timing]:
    """Times each callable `runs` times, one sample of each in turn.

    A sample is a block of back-to-back calls lasting about `min_sample_ms`
    (one call for anything slower), divided by the calls in it: below a
    millisecond the timer and the loop would otherwise weigh in. The order of
    the callables rotates from one round to the next.

    Args:
        calls: {name: a callable doing one invocation}.
        runs: Timed samples of each.
        warmup: Untimed calls of each first.
        min_sample_ms: Shortest sample.

    Returns:
        {name: Timing} (milliseconds per call).
    """
    block: dict[str, int] = {}
    for name, call in calls.items():
        fastest = float("inf")
        for _ in range(max(warmup, 3)):
            start = time.perf_counter()
            call()
            fastest = min(fastest, time.perf_counter() - start)
        # The fastest warmup call: a burst of load elsewhere cannot shrink the block.
        block[name] = max(1, int(min_sample_ms / max(fastest * 1e3, 1e-6)))
    names = list(calls)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(runs):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            call, n = calls[name], block[name]
            start = time.perf_counter()
            for _ in range(n):
                call()
            times[name].append((time.perf_counter() - start) * 1e3 / n)
    return {
        k: Timing(
            float(np.median(v)),
            float(np.percentile(v, 90)),
            float(np.min(v)),
            len(v),
            block[k],
            float(np.mean(v)),
        )  # fmt: skip
        for k, v in times.items()
    }


def _read_csv(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def benchmark_models(
    models_dir: str,
    threads: int = 1,
    runs: int = 100,
    warmup: int = 10,
    keras: bool = True,
    log: Callable[[str], None] = print,
) -> HostReport:
    """Times every exported file under `models_dir` on this machine.

    Args:
        models_dir: An export folder (children in subfolders) or one child folder.
        threads: Interpreter threads (XNNPACK on).
        runs: Timed invocations per file.
        warmup: Untimed invocations per file first.
        keras: Time `child.keras` too.
        log: Progress lines go here.

    Returns:
        The report; cards and `benchmark_host.csv` are updated.

    Raises:
        FileNotFoundError: If `models_dir` is missing.
        ValueError: If it holds no .tflite file, or runs/threads < 1.
        FileDigestError: If a file differs from the one its card verified
            (nothing is timed).
        InvalidModelError: If a .tflite file is not a TFLite model (named).
        WorkdirBusyError: If another process holds the workdir's lock.
    """
    if threads < 1 or runs < 1 or warmup < 0:
        raise ValueError(
            f"threads and runs must be >= 1 and warmup >= 0, got {threads}, {runs}, {warmup}"
        )
    found = find_model_folders(models_dir)
    with lock.locked_for(models_dir, log):
        folders = verified_files(found, log)
        return _benchmark(models_dir, folders, threads, runs, warmup, keras, log)


def _benchmark(
    models_dir: str,
    folders: dict[str, dict[str, str]],
    threads: int,
    runs: int,
    warmup: int,
    keras: bool,
    log: Callable[[str], None],
) -> HostReport:
    device = host_device()
    gmacs = machine_reference()
    machine = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "matmul_gmacs": gmacs,
    }
    log(f"machine reference: float32 matmul {gmacs:.1f} GMAC/s on {os.cpu_count()} CPUs")
    measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    csv_path = os.path.join(models_dir, CSV_NAME)
    rows = {(r["child"], r["format"], r["threads"]): r for r in _read_csv(csv_path)}
    report = HostReport([], machine, csv_path, threads)
    for folder, files in folders.items():
        child = os.path.relpath(folder, models_dir).replace(os.sep, "/")
        if child == ".":
            child = os.path.basename(os.path.abspath(folder))
        log(
            f"{child}: timing {sorted(files)} ({runs} runs after {warmup} warmup, {threads} threads)"
        )
        calls = {f: _tflite_call(p, threads) for f, p in files.items() if f != KERAS_FORMAT}
        timings = time_round_robin(calls, runs, warmup)
        if keras and KERAS_FORMAT in files:
            # On its own: TensorFlow's threads keep spinning after a call and
            # would slow down whichever file came next.
            timings |= time_round_robin({KERAS_FORMAT: _keras_call(files[KERAS_FORMAT])},
                                        runs, warmup)  # fmt: skip
        result = ChildTimings(folder, child, {k: files[k] for k in timings}, timings)
        report.children.append(result)
        card = card_lib.read_card(folder)
        for fmt, t in timings.items():
            path = files[fmt]
            entry = {
                "target": "host",
                "device": device,
                "threads": threads,
                "delegate": "tensorflow" if fmt == KERAS_FORMAT else "xnnpack",
                "format": fmt,
                "mean_ms": t.mean_ms,
                "median_ms": t.median_ms,
                "p90_ms": t.p90_ms,
                "min_ms": t.min_ms,
                "memory_mb": None,  # the host timer measures time only
                "statistics": "over the timed samples (each one call, or a block of calls "
                "of about 1 ms divided by its calls)",
                "runs": t.runs,
                "calls_per_sample": t.calls_per_sample,
                "warmup_runs": warmup,
                "runtime": "keras" if fmt == KERAS_FORMAT else "ai-edge-litert, XNNPACK",
                "sha256": sha256_path(path),
                "machine": machine,
                "measured_at": measured_at,
            }
            if card is not None:
                card_lib.put_latency(card, entry)
            ratio = result.ratio(fmt)
            rows[(child, fmt, str(threads))] = {
                "child": child,
                "format": fmt,
                "file": os.path.basename(path),
                "bytes": str(os.path.getsize(path)),
                "mean_ms": f"{t.mean_ms:.6f}",
                "median_ms": f"{t.median_ms:.6f}",
                "p90_ms": f"{t.p90_ms:.6f}",
                "min_ms": f"{t.min_ms:.6f}",
                "ratio_vs_fp32": "" if ratio is None else f"{ratio:.4f}",
                "runs": str(t.runs),
                "calls_per_sample": str(t.calls_per_sample),
                "warmup_runs": str(warmup),
                "threads": str(threads),
                "machine_gmacs": f"{gmacs:.2f}",
                "sha256": entry["sha256"],
                "measured_at": measured_at,
            }
        if card is not None:
            card_lib.write_card(folder, card)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for key in sorted(rows):
            writer.writerow(rows[key])
        atomic_write_bytes(csv_path, buf.getvalue().encode())
    return report


def summary_lines(report: HostReport) -> list[str]:
    """A table of times and ratios, one line per file."""
    lines = [
        f"host: {report.machine['processor']}, {report.machine['cpus']} CPUs, float32 matmul "
        f"{report.machine['matmul_gmacs']:.1f} GMAC/s; {report.threads} threads",
        f"{'child':24s} {'format':22s} {'median ms':>10s} {'p90 ms':>10s} {'vs fp32':>8s}",
    ]
    for c in report.children:
        for fmt, t in c.timings.items():
            ratio = c.ratio(fmt)
            text = "-" if ratio is None else f"{ratio:.3f}"
            lines.append(f"{c.child:24s} {fmt:22s} {t.median_ms:10.4f} {t.p90_ms:10.4f} {text:>8s}")
        built = c.ratio("fp32", BUILT_FORMAT)
        if built is not None:
            lines.append(f"{c.child:24s} sliced/built fp32 latency ratio {built:.4f}")
    return lines
