"""Where Android measurements are kept: `benchmark_android.csv` and the model cards.

The CSV (`CSV_FIELDS`) is the resumable record of a models folder: one row
per model, device and setting, rewritten atomically after every model.
Cards get one latency entry per setting through `tf_bignas.run.card`
(`put_latency`, then `write_card`, which re-renders `model_card.md`): target
"android", keyed by device model, threads, delegate and format, with the same
statistics as host entries (mean, median, p90; None where `benchmark_model`
gives no such figure, said in the entry's `statistic` note) and `memory_mb`.

`locked(path)` holds the workdir lock while a writer writes (a busy lock is a
`WorkdirBusyError` naming the holder's pid, on one printable line).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Iterator
from typing import Any

from tf_bignas.common.files import atomic_write_bytes
from tf_bignas.latency.adb import printable
from tf_bignas.latency.android_device import BenchmarkOptions, DeviceInfo
from tf_bignas.latency.benchmark_output import Timing
from tf_bignas.run import card as card_lib
from tf_bignas.run import lock as lock_lib

CSV_NAME = "benchmark_android.csv"
TOOL = "benchmark_model"
CSV_FIELDS = (
    "model",
    "format",
    "status",
    "mean_ms",
    "median_ms",
    "p90_ms",
    "p5_ms",
    "p95_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "init_ms",
    "memory_mb",
    "runs",
    "serial",
    "device_model",
    "android_version",
    "abi",
    "delegate",
    "num_threads",
    "use_gpu",
    "use_nnapi",
    "use_xnnpack",
    "cpu_mask",
    "warmup_runs",
    "num_runs",
    "sha256",
    "measured_at",
    "statistic",
    "error",
)
_RENAMED = (("avg_ms", "mean_ms"),)  # columns of CSVs written before the card entries had names


@contextlib.contextmanager
def locked(path: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Holds the lock of the workdir enclosing `path` (a folder) while a result writer runs.

    Args:
        path: The folder written into (an export folder, a latency table's folder).
        log: Where a note about a stale lock goes.

    Yields:
        Nothing; the lock is held inside the block (re-entrant in one process).

    Raises:
        WorkdirBusyError: Another run holds the lock; the message (one printable
            line) names its pid.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock_lib.locked_for(path, log=log))
        except lock_lib.WorkdirBusyError as e:  # the holder's command line may hold anything
            raise lock_lib.WorkdirBusyError(printable(str(e))) from e
        yield


def read_csv(path: str) -> list[dict[str, str]]:
    """The rows of a results CSV ([] when it does not exist), older column names renamed.

    Args:
        path: The CSV.

    Returns:
        Its rows, each with the `CSV_FIELDS` it has.
    """
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for old, new in _RENAMED:
            if not row.get(new) and row.get(old):
                row[new] = row[old]
    return rows


def write_csv(path: str, rows: list[dict[str, str]]) -> None:
    """Writes the rows (the `CSV_FIELDS` columns) atomically.

    Args:
        path: The CSV.
        rows: The rows.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    atomic_write_bytes(path, buf.getvalue().encode())


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def timing_cells(timing: Timing, options: BenchmarkOptions) -> dict[str, str]:
    """A measurement as CSV cells ("" where the tool gave no figure).

    Args:
        timing: What `benchmark_model` printed.
        options: Its settings (for the note on runs).

    Returns:
        The statistics cells, `runs` and the `statistic` note.
    """
    p = timing.percentiles
    return {
        "mean_ms": _cell(timing.mean_ms),
        "median_ms": _cell(timing.median_ms),
        "p90_ms": _cell(timing.p90_ms),
        "p5_ms": _cell(p.get(5)),
        "p95_ms": _cell(p.get(95)),
        "std_ms": _cell(timing.std_ms),
        "min_ms": _cell(timing.min_ms),
        "max_ms": _cell(timing.max_ms),
        "init_ms": _cell(timing.init_ms),
        "memory_mb": _cell(timing.memory_mb),
        "runs": "" if timing.runs is None else str(timing.runs),
        "statistic": timing.statistic_note(options.num_runs),
    }


def card_entry(
    timing: Timing,
    options: BenchmarkOptions,
    info: DeviceInfo,
    fmt: str,
    sha256: str,
    measured_at: str,
) -> dict[str, Any]:
    """The card's latency entry of one measurement (`tf_bignas.run.card.put_latency`).

    Args:
        timing: What `benchmark_model` printed.
        options: Its settings (threads, delegate, runs, CPU mask).
        info: The device.
        fmt: The file's format key in the card ("fp32", "int8", ...).
        sha256: The measured file's digest.
        measured_at: ISO time of the measurement.

    Returns:
        The entry: the `LATENCY_KEY` fields (target "android", device = the
        device model), the `LATENCY_STATS` (None where not printed), the
        other figures and where they come from.
    """
    return {
        "target": "android",
        "device": info.model,
        "threads": options.num_threads,
        "delegate": options.delegate,
        "format": fmt,
        "mean_ms": timing.mean_ms,
        "median_ms": timing.median_ms,
        "p90_ms": timing.p90_ms,
        "p5_ms": timing.percentiles.get(5),
        "p95_ms": timing.percentiles.get(95),
        "min_ms": timing.min_ms,
        "max_ms": timing.max_ms,
        "std_ms": timing.std_ms,
        "init_ms": timing.init_ms,
        "memory_mb": timing.memory_mb,
        "runs": timing.runs if timing.runs is not None else options.num_runs,
        "warmup_runs": options.warmup_runs,
        "cpu_mask": options.cpu_mask or None,
        "serial": info.serial,
        "android_version": info.android_version,
        "abi": info.abi,
        "sha256": sha256,
        "measured_at": measured_at,
        "tool": TOOL,
        "statistic": timing.statistic_note(options.num_runs),
    }


def save_card_entry(folder: str, entry: dict[str, Any]) -> None:
    """Adds (or replaces, for the same setting) a latency entry of a child's card.

    The card is read again first, so entries written since the run began
    are kept; `write_card` writes both `model_card.json` and `model_card.md`.

    Args:
        folder: The child's folder (with `model_card.json`).
        entry: The entry (`card_entry`).

    Raises:
        FileDigestError: If the card is gone or unreadable since it was checked.
    """
    card = card_lib.read_card(folder)
    if card is None:
        raise card_lib.FileDigestError(
            f"{os.path.join(folder, card_lib.CARD_JSON)} became unreadable during the run; "
            "export the child again (tools.export)"
        )
    card_lib.put_latency(card, entry)
    card_lib.write_card(folder, card)
