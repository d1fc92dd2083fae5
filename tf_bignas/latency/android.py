"""Benchmark exported TFLite models on an Android device with TFLite's `benchmark_model`.

`benchmark_android(models_dir, binary, serial, options)` first checks every
model against its model card: a `.tflite` file in a folder with a
`model_card.json` must be a file the card lists, with the sha256 the card
verified (`tf_bignas.run.card.verified_file`); a swapped or changed file is
refused, naming it, before anything reaches the device. A folder of models
without cards is measured as it is. It then checks the user's
`benchmark_model` binary on the host (an ELF executable for the device's
ABI) and, holding the workdir lock (`tf_bignas.run.lock.locked_for`), pushes
the binary and each model to a working folder on the device and runs

    [taskset MASK] benchmark_model --graph=MODEL --num_threads=N --use_gpu=B
        --use_nnapi=B --use_xnnpack=B --warmup_runs=W --num_runs=R

whose output `tf_bignas.latency.benchmark_output` reads (mean, and median,
min, max, std and memory where the tool prints them). Every result is saved
the moment it is measured (`tf_bignas.latency.android_results`): a row of
``benchmark_android.csv`` in `models_dir` and, for a model with a card, a
latency entry of the card keyed by device model, threads, delegate and
format, so a 4-thread or GPU run never replaces the 1-thread CPU one. A rerun
skips the models already measured with the same settings (same file content,
same device, same flags), so a device that disconnects mid-run loses nothing:
plug it in and run the same command again.

Whatever the device says (adb's errors, `benchmark_model`'s output, its
properties) reaches a message only through `tf_bignas.latency.adb.printable`
(terminal escape sequences removed, then `tf_bignas.common.text.clean`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable

from tf_bignas.common.files import sha256_path
from tf_bignas.common.text import clean
from tf_bignas.latency import android_results as results
from tf_bignas.latency.adb import Adb, AdbError, DeviceDisconnectedError, printable
from tf_bignas.latency.android_device import (
    ABI_MACHINES,
    MACHINE_NAMES,
    BenchmarkBinaryError,
    BenchmarkOptions,
    DeviceInfo,
    check_binary_abi,
    device_info,
    elf_machine,
)
from tf_bignas.latency.android_results import CSV_FIELDS, CSV_NAME, read_csv
from tf_bignas.latency.benchmark_output import Timing, parse_benchmark_output
from tf_bignas.run import card as card_lib

__all__ = [
    "ABI_MACHINES",
    "CSV_FIELDS",
    "CSV_NAME",
    "DEFAULT_DEVICE_DIR",
    "MACHINE_NAMES",
    "AndroidBenchmarkError",
    "AndroidReport",
    "BenchmarkBinaryError",
    "BenchmarkOptions",
    "DeviceInfo",
    "ModelFile",
    "Timing",
    "benchmark_android",
    "check_binary_abi",
    "device_info",
    "elf_machine",
    "find_models",
    "parse_benchmark_output",
    "read_csv",
    "verify_models",
]

DEFAULT_DEVICE_DIR = "/data/local/tmp/tf_bignas"
BINARY_NAME = "benchmark_model"


class AndroidBenchmarkError(AdbError):
    """Some models could not be measured (the others were saved).

    Attributes:
        report: What the run did (`AndroidReport`), the failures included.
    """

    def __init__(self, message: str, report: AndroidReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A TFLite file to measure.

    Attributes:
        path: Host path.
        name: Its path relative to the models folder ("/"-separated).
        format: The card's key of the file where it has a card; else "fp32",
            "fp16", "int8" for `model_<format>.tflite`, or the stem.
        sha256: Its digest (`sha256_path`), once `verify_models` has read it.
        card_folder: The folder whose card verified it (None: no card).
    """

    path: str
    name: str
    format: str
    sha256: str | None = None
    card_folder: str | None = None


def find_models(models_dir: str) -> list[ModelFile]:
    """Every `.tflite` file under a folder (an export folder, a child folder, ...).

    Args:
        models_dir: The folder (searched recursively).

    Returns:
        The files, in path order.

    Raises:
        FileNotFoundError: If the folder is missing.
        ValueError: If it holds no .tflite file.
    """
    if not os.path.isdir(models_dir):
        raise FileNotFoundError(f"models folder {models_dir!r} does not exist")
    found = []
    for dirpath, dirnames, names in os.walk(models_dir):
        dirnames.sort()
        for n in sorted(names):
            if n.endswith(".tflite"):
                path = os.path.join(dirpath, n)
                rel = os.path.relpath(path, models_dir).replace(os.sep, "/")
                stem = n[: -len(".tflite")]
                found.append(ModelFile(path, rel, stem.removeprefix("model_")))
    if not found:
        raise ValueError(
            f"no .tflite file under {models_dir!r}; export children first "
            "(python -m tools.export; README.md, 'The stages and their commands') or point --models at a folder of .tflite files"
        )
    return found


def _verified(model: ModelFile, folder: str, card: dict | None) -> ModelFile:
    """`model` once its card lists it with its digest (see `verify_models`)."""
    card_path = os.path.join(folder, card_lib.CARD_JSON)
    files = (card or {}).get("files") or {}
    name = os.path.basename(model.path)
    fmts = [k for k, f in files.items() if isinstance(f, dict) and f.get("file") == name]
    if card is not None and not fmts:
        listed = ", ".join(
            sorted(str(f.get("file")) for f in files.values() if isinstance(f, dict))
        )
        raise card_lib.FileDigestError(
            f"{model.path} is not a file that {card_path} verified (it lists: {listed or 'none'}); "
            f"export the child again (tools.export) or move the file out of {folder}"
        )
    fmt = fmts[0] if fmts else model.format
    card_lib.verified_file(folder, fmt, card)  # a missing card or another digest: refused
    return dataclasses.replace(model, format=fmt, sha256=files[fmt]["sha256"], card_folder=folder)


def verify_models(models: list[ModelFile]) -> list[ModelFile]:
    """Each model with its digest, checked against the card of its folder where it has one.

    A model in a folder with a `model_card.json` must be a file the card
    lists, with the sha256 the card verified; a model in a folder without a
    card (a plain folder of models) is taken as it is.

    Args:
        models: The models (`find_models`).

    Returns:
        The models with `sha256` set, and `format` and `card_folder` from
        their card where they have one.

    Raises:
        FileDigestError: If any model is refused; one line naming every
            refused file and what it should be.
    """
    out, refused = [], []
    cards: dict[str, dict | None] = {}
    for m in models:
        folder = os.path.dirname(m.path)
        if not os.path.isfile(os.path.join(folder, card_lib.CARD_JSON)):
            out.append(dataclasses.replace(m, sha256=sha256_path(m.path)))
            continue
        if folder not in cards:
            cards[folder] = card_lib.read_card(folder)
        try:
            out.append(_verified(m, folder, cards[folder]))
        except card_lib.FileDigestError as e:
            refused.append(str(e))
    if len(refused) == 1:
        raise card_lib.FileDigestError(clean(refused[0], one_line=True))
    if refused:
        listing = "; ".join(refused)
        raise card_lib.FileDigestError(
            clean(f"{len(refused)} models refused: {listing}", one_line=True)
        )
    return out


def _tail(text: str, lines: int = 4) -> str:
    """The last lines of device output, on one line, without control characters."""
    kept = [printable(line) for line in text.strip().splitlines()[-lines:]]
    return " | ".join(line for line in kept if line)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _measure(
    adb: Adb, model: ModelFile, remote_dir: str, remote_bin: str, options: BenchmarkOptions
) -> Timing:
    """Pushes one model and runs `benchmark_model` on it.

    Raises:
        DeviceDisconnectedError: If the device went away.
        BenchmarkBinaryError: If the device refuses to run the binary.
        AdbError: If the model fails (the device is still there).
    """
    remote_model = f"{remote_dir}/{model.name.replace('/', '__')}"
    adb.push(model.path, remote_model)
    argv = [remote_bin, *options.flags(remote_model)]
    if options.cpu_mask:
        argv = ["taskset", options.cpu_mask, *argv]
    out = adb.shell(argv)
    text = out.stdout + "\n" + out.stderr
    if out.returncode == 126 or "permission denied" in text.lower():
        raise BenchmarkBinaryError(
            f"{remote_bin} is not executable on the device ({_tail(text, 2)}); "
            f"is {remote_dir} on a noexec filesystem? try --device_dir=/data/local/tmp"
        )
    try:
        timing = parse_benchmark_output(text)
        if out.returncode != 0:
            raise ValueError(f"exit status {out.returncode}")
    except ValueError as e:
        adb.ensure_connected()
        raise AdbError(f"benchmark_model failed ({e}): {_tail(text)}") from e
    return timing


@dataclasses.dataclass
class AndroidReport:
    """What a run did.

    Attributes:
        device: The device.
        measured: Names of the models measured in this run.
        skipped: Names already measured with these settings (kept as they were).
        failed: {name: error} of the models that failed on the device.
        csv_path: The results CSV.
    """

    device: DeviceInfo
    measured: list[str]
    skipped: list[str]
    failed: dict[str, str]
    csv_path: str


class _Session:
    """One run's records: the CSV rows of a models folder on one device with one setting.

    Args:
        models_dir: The models folder (its CSV is read now, rewritten after each model).
        info: The device.
        options: The settings.
        log: Progress lines.
    """

    def __init__(
        self,
        models_dir: str,
        info: DeviceInfo,
        options: BenchmarkOptions,
        log: Callable[[str], None],
    ) -> None:
        self.info, self.options, self.log = info, options, log
        self.csv_path = os.path.join(models_dir, CSV_NAME)
        self.rows = read_csv(self.csv_path)
        self.settings = options.csv_values()

    def _same_setting(self, row: dict[str, str], model: str) -> bool:
        return (
            row.get("model") == model
            and row.get("serial") == self.info.serial
            and all(row.get(k, "") == v for k, v in self.settings.items())
        )

    def plan(self, models: list[ModelFile], remeasure: bool) -> tuple[list[ModelFile], list[str]]:
        """(models to measure, names already measured with these settings)."""
        todo, skipped = [], []
        for m in models:
            done = [r for r in self.rows if self._same_setting(r, m.name)]
            if not remeasure and any(
                r.get("sha256") == m.sha256 and r.get("status") == "ok" for r in done
            ):
                skipped.append(m.name)
            else:
                todo.append(m)
        return todo, skipped

    def new_row(self, m: ModelFile) -> dict[str, str]:
        """The CSV row of a model about to be measured (its figures still missing)."""
        info = self.info
        return {"model": m.name, "format": m.format, "serial": info.serial,
                "device_model": info.model, "android_version": info.android_version,
                "abi": info.abi, "delegate": self.options.delegate, "sha256": m.sha256 or "",
                **self.settings, "measured_at": _now()}  # fmt: skip

    def record(self, m: ModelFile, row: dict[str, str], timing: Timing | None) -> None:
        """Saves one model's outcome: the CSV row, and the card entry if it was measured."""
        if timing is not None and m.card_folder is not None:
            entry = results.card_entry(timing, self.options, self.info, m.format,
                                       m.sha256 or "", row["measured_at"])  # fmt: skip
            results.save_card_entry(m.card_folder, entry)
        self.rows = [r for r in self.rows if not self._same_setting(r, m.name)]
        self.rows.append(row)
        results.write_csv(self.csv_path, self.rows)


def _describe(timing: Timing) -> str:
    text = f"  mean {timing.mean_ms:.3f} ms"
    if timing.median_ms is not None:
        text += f", median {timing.median_ms:.3f} ms"
    if timing.memory_mb is not None:
        text += f", memory {timing.memory_mb:.1f} MB"
    return text


def _run_models(
    adb: Adb,
    session: _Session,
    todo: list[ModelFile],
    remote_dir: str,
    total: int,
) -> tuple[list[str], dict[str, str]]:
    """Measures `todo` one by one, saving each outcome; returns (measured, failed)."""
    remote_bin = f"{remote_dir}/{BINARY_NAME}"
    measured: list[str] = []
    failed: dict[str, str] = {}
    for n, m in enumerate(todo):
        session.log(f"[{n + 1}/{len(todo)}] {m.name}")
        row = session.new_row(m)
        timing = None
        try:
            timing = _measure(adb, m, remote_dir, remote_bin, session.options)
        except (DeviceDisconnectedError, BenchmarkBinaryError):
            done = total - len(todo) + len(measured)
            session.log(
                f"stopped after {done} of {total} models; results are in {session.csv_path}"
            )
            raise
        except AdbError as e:
            message = clean(e, one_line=True)
            failed[m.name] = message
            row.update(status="failed", error=message)
            session.log(f"  FAILED: {message}")
        else:
            row.update(status="ok", error="", **results.timing_cells(timing, session.options))
            measured.append(m.name)
            session.log(_describe(timing))
        session.record(m, row, timing)
    return measured, failed


def benchmark_android(
    models_dir: str,
    binary: str,
    serial: str | None = None,
    options: BenchmarkOptions | None = None,
    device_dir: str = DEFAULT_DEVICE_DIR,
    remeasure: bool = False,
    adb: Adb | None = None,
    log: Callable[[str], None] = print,
) -> AndroidReport:
    """Measures every `.tflite` file under `models_dir` on an Android device.

    Args:
        models_dir: Folder of models (searched recursively); the CSV goes here.
        binary: The host path of TFLite's `benchmark_model` for the device's ABI.
        serial: The device (None: the only attached one).
        options: `benchmark_model` settings.
        device_dir: Working folder on the device.
        remeasure: Measure again models already in the CSV with these settings.
        adb: An `Adb` (default: one for `serial` with adb from the PATH).
        log: Progress lines.

    Returns:
        The run's report.

    Raises:
        FileDigestError: A model is not the file its card verified (nothing
            is measured, the device is not touched).
        WorkdirBusyError: Another run holds the lock of the workdir holding
            `models_dir` (the message names its pid).
        AdbError: adb missing, no device, several devices and no serial, device
            unauthorized or offline.
        BenchmarkBinaryError: The binary is missing, not an executable, or not
            for the device's ABI.
        DeviceDisconnectedError: The device went away; what was measured is saved
            and a rerun continues with the rest.
        AndroidBenchmarkError: Some models failed on the device (the others saved).
    """
    options = options or BenchmarkOptions()
    models = verify_models(find_models(models_dir))  # refused here, before the device
    elf_machine(binary)  # missing / not ELF: fail before touching the device
    with results.locked(models_dir, log):
        adb = adb or Adb(serial)
        info = device_info(adb)
        check_binary_abi(binary, list(info.abis))
        session = _Session(models_dir, info, options, log)
        todo, skipped = session.plan(models, remeasure)
        if skipped:
            log(f"{len(skipped)} model(s) already measured on {info.serial} with these settings")
        if not todo:
            return AndroidReport(info, [], skipped, {}, session.csv_path)
        remote_dir = device_dir.rstrip("/") or "/"
        remote_bin = f"{remote_dir}/{BINARY_NAME}"
        adb.check_shell(["mkdir", "-p", remote_dir], f"create {remote_dir}")
        adb.push(binary, remote_bin)
        adb.check_shell(["chmod", "755", remote_bin], f"make {remote_bin} executable")
        measured, failed = _run_models(adb, session, todo, remote_dir, len(models))
    report = AndroidReport(info, measured, skipped, failed, session.csv_path)
    if failed:
        listing = "; ".join(f"{k}: {v}" for k, v in failed.items())
        message = (
            f"{len(failed)} of {len(models)} models failed on {info.serial} (the other results "
            f"are saved in {session.csv_path}): {listing}"
        )
        raise AndroidBenchmarkError(clean(message, one_line=True), report)
    return report
