"""Benchmark exported TFLite models on an Android device with TFLite's `benchmark_model`.

`benchmark_android(models_dir, binary, serial, options)` checks the user's
`benchmark_model` binary on the host (an ELF executable for the device's ABI),
pushes it and each model to a working folder on the device, runs

    [taskset MASK] benchmark_model --graph=MODEL --num_threads=N --use_gpu=B
        --use_nnapi=B --use_xnnpack=B --warmup_runs=W --num_runs=R

and parses the summary line of either output format. Every result is saved
the moment it is measured: a row of ``benchmark_android.csv`` in `models_dir`
and an ``"android:SERIAL"`` entry in the "latency" section of the
``model_card.json`` beside the model (where there is one). A rerun skips the
models already measured with the same settings (same file content, same
device, same flags), so a device that disconnects mid-run loses nothing: plug
it in and run the same command again.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import struct
import types
from collections.abc import Callable
from typing import Any

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json
from tf_bignas.latency.adb import Adb, AdbError, DeviceDisconnectedError

CSV_NAME = "benchmark_android.csv"
CARD_NAME = "model_card.json"
DEFAULT_DEVICE_DIR = "/data/local/tmp/tf_bignas"
BINARY_NAME = "benchmark_model"
# ELF e_machine values of the Android ABIs, with the ELF class (bits).
ABI_MACHINES = types.MappingProxyType(
    {
        "arm64-v8a": (183, 64),  # EM_AARCH64
        "armeabi-v7a": (40, 32),  # EM_ARM
        "armeabi": (40, 32),
        "x86_64": (62, 64),  # EM_X86_64
        "x86": (3, 32),  # EM_386
        "riscv64": (243, 64),  # EM_RISCV
    }
)
MACHINE_NAMES = types.MappingProxyType(
    {183: "arm64 (AArch64)", 40: "32-bit ARM", 62: "x86-64", 3: "x86", 243: "RISC-V"}
)
CSV_FIELDS = (
    "model",
    "format",
    "status",
    "avg_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "init_ms",
    "serial",
    "device_model",
    "android_version",
    "abi",
    "num_threads",
    "use_gpu",
    "use_nnapi",
    "use_xnnpack",
    "cpu_mask",
    "warmup_runs",
    "num_runs",
    "sha256",
    "measured_at",
    "error",
)


class BenchmarkBinaryError(ValueError):
    """The `benchmark_model` binary is missing, not executable, or of the wrong ABI."""


class AndroidBenchmarkError(AdbError):
    """Some models could not be measured (the others were saved).

    Attributes:
        report: What the run did (`AndroidReport`), the failures included.
    """

    def __init__(self, message: str, report: AndroidReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """The `benchmark_model` settings of a run.

    Attributes:
        num_threads: CPU threads (`--num_threads`).
        use_gpu: GPU delegate (`--use_gpu`).
        use_nnapi: NNAPI delegate (`--use_nnapi`).
        use_xnnpack: XNNPACK delegate (`--use_xnnpack`).
        cpu_mask: Hex CPU-affinity mask for `taskset` (e.g. "f0" = cores 4-7), or "".
        warmup_runs: Untimed runs first (`--warmup_runs`).
        num_runs: Timed runs (`--num_runs`).
    """

    num_threads: int = 1
    use_gpu: bool = False
    use_nnapi: bool = False
    use_xnnpack: bool = True
    cpu_mask: str = ""
    warmup_runs: int = 5
    num_runs: int = 50

    def __post_init__(self) -> None:
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.warmup_runs < 0:
            raise ValueError(f"warmup_runs must be >= 0, got {self.warmup_runs}")
        if self.num_runs < 1:
            raise ValueError(f"num_runs must be >= 1, got {self.num_runs}")
        if self.use_gpu and self.use_nnapi:
            raise ValueError("use_gpu and use_nnapi are exclusive: choose one delegate")
        if self.cpu_mask and not re.fullmatch(r"(0[xX])?[0-9a-fA-F]{1,16}", self.cpu_mask):
            raise ValueError(
                f"cpu_mask {self.cpu_mask!r} is not a hex CPU mask such as 'f0' (cores 4-7)"
            )
        if self.cpu_mask and int(self.cpu_mask, 16) == 0:
            raise ValueError("cpu_mask selects no CPU; use e.g. 'f0' or leave it empty")

    @property
    def delegate(self) -> str:
        """The accelerator in use: gpu, nnapi, xnnpack or cpu."""
        if self.use_gpu:
            return "gpu"
        if self.use_nnapi:
            return "nnapi"
        return "xnnpack" if self.use_xnnpack else "cpu"

    def flags(self, graph: str) -> list[str]:
        """The `benchmark_model` flags for one model on the device."""
        b = lambda v: "true" if v else "false"  # noqa: E731
        return [
            f"--graph={graph}",
            f"--num_threads={self.num_threads}",
            f"--use_gpu={b(self.use_gpu)}",
            f"--use_nnapi={b(self.use_nnapi)}",
            f"--use_xnnpack={b(self.use_xnnpack)}",
            f"--warmup_runs={self.warmup_runs}",
            f"--num_runs={self.num_runs}",
        ]

    def csv_values(self) -> dict[str, str]:
        """The settings as CSV cells (also the identity of a measurement)."""
        return {
            "num_threads": str(self.num_threads),
            "use_gpu": str(self.use_gpu).lower(),
            "use_nnapi": str(self.use_nnapi).lower(),
            "use_xnnpack": str(self.use_xnnpack).lower(),
            "cpu_mask": self.cpu_mask,
            "warmup_runs": str(self.warmup_runs),
            "num_runs": str(self.num_runs),
        }


@dataclasses.dataclass(frozen=True)
class Timing:
    """What a `benchmark_model` run printed.

    Attributes:
        avg_ms: Mean latency of the timed runs.
        std_ms: Their standard deviation (None when not printed).
        min_ms: Fastest timed run (None when not printed).
        max_ms: Slowest timed run (None when not printed).
        init_ms: Initialisation time (None when not printed).
    """

    avg_ms: float
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    init_ms: float | None = None


_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_AVG = re.compile(r"Inference \(avg\):\s*" + _NUM + r"\s*(ms|us|µs)?")
_INIT = re.compile(r"Init:\s*" + _NUM + r"\s*(ms|us|µs)?")
_UNIT = re.compile(r"timings in (us|ms)")
_STATS = re.compile(r"count=\d+.*?min=" + _NUM + r"\s+max=" + _NUM + r".*?std=" + _NUM)


def _scale(unit: str | None, line: str) -> float:
    if unit is None:
        header = _UNIT.search(line)
        unit = header.group(1) if header else "us"
    return 1.0 if unit == "ms" else 1e-3


def parse_benchmark_output(text: str) -> Timing:
    """Reads the latency out of `benchmark_model`'s output.

    Both formats are understood: the classic line ``Inference timings in us:
    Init: 3281, First inference: 40232, Warmup (avg): 28385.3, Inference (avg):
    27489.8`` (microseconds, with a ``count=... min=... max=... avg=... std=...``
    line before it) and the newer ``Inference (avg): 27.49 ms``.

    Args:
        text: The tool's output.

    Returns:
        The timing of the last summary in the output.

    Raises:
        ValueError: If there is no ``Inference (avg)`` figure.
    """
    lines = text.splitlines()
    found = None
    for i, line in enumerate(lines):
        m = _AVG.search(line)
        if m:
            found = (i, line, m)
    if found is None:
        raise ValueError("no 'Inference (avg)' line in the benchmark_model output")
    i, line, m = found
    scale = _scale(m.group(2), line)
    avg = float(m.group(1)) * scale
    init = None
    for candidate in (line, *reversed(lines[:i])):
        im = _INIT.search(candidate)
        if im:
            init = float(im.group(1)) * _scale(im.group(2), candidate)
            break
    std = lo = hi = None
    if scale != 1.0:  # the count=... line is in the same unit as the classic summary
        for candidate in reversed(lines[:i]):
            sm = _STATS.search(candidate)
            if sm:
                lo, hi, std = (float(v) * scale for v in sm.groups())
                break
    return Timing(avg_ms=avg, std_ms=std, min_ms=lo, max_ms=hi, init_ms=init)


def elf_machine(path: str) -> tuple[int, int]:
    """The ELF machine and class of an executable.

    Args:
        path: The file.

    Returns:
        (e_machine, bits).

    Raises:
        BenchmarkBinaryError: If the file is missing or not an ELF executable.
    """
    if not os.path.isfile(path):
        raise BenchmarkBinaryError(
            f"benchmark binary {path!r} does not exist; download TFLite's prebuilt "
            "android_aarch64_benchmark_model (see README.md, 'Android benchmarks')"
        )
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        hint = (
            " (the .apk build is not supported: use the native binary)"
            if path.endswith(".apk")
            else ""
        )
        raise BenchmarkBinaryError(
            f"benchmark binary {path!r} is not an executable: it is not an ELF file{hint}"
        )
    bits = {1: 32, 2: 64}.get(header[4])
    order = {1: "<", 2: ">"}.get(header[5])
    if bits is None or order is None:
        raise BenchmarkBinaryError(f"benchmark binary {path!r} has a corrupt ELF header")
    e_type, e_machine = struct.unpack(order + "HH", header[16:20])
    if e_type not in (2, 3):  # ET_EXEC, ET_DYN
        raise BenchmarkBinaryError(
            f"benchmark binary {path!r} is not an executable (ELF type {e_type}: an object "
            "file or core dump)"
        )
    return e_machine, bits


def check_binary_abi(path: str, abis: list[str]) -> None:
    """Checks that a binary runs on a device with the given ABIs.

    Args:
        path: The binary on the host.
        abis: The device's ABIs (`ro.product.cpu.abilist`, primary first).

    Raises:
        BenchmarkBinaryError: If it is not an executable for any of them.
    """
    machine, bits = elf_machine(path)
    wanted = [ABI_MACHINES[a] for a in abis if a in ABI_MACHINES]
    if wanted and (machine, bits) not in wanted:
        have = MACHINE_NAMES.get(machine, f"machine {machine}")
        raise BenchmarkBinaryError(
            f"benchmark binary {path!r} is a {bits}-bit {have} executable, but the device runs "
            f"{', '.join(abis)}; use the benchmark_model build for {abis[0]}"
        )


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What `getprop` says about the device."""

    serial: str
    model: str
    android_version: str
    abi: str
    abis: tuple[str, ...]


def device_info(adb: Adb) -> DeviceInfo:
    """Reads the device model, Android version and ABIs via `getprop`."""
    abi = adb.getprop("ro.product.cpu.abi")
    abilist = [a for a in adb.getprop("ro.product.cpu.abilist").split(",") if a]
    return DeviceInfo(
        serial=adb.serial,
        model=adb.getprop("ro.product.model"),
        android_version=adb.getprop("ro.build.version.release"),
        abi=abi,
        abis=tuple(abilist or ([abi] if abi else [])),
    )


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A TFLite file to measure.

    Attributes:
        path: Host path.
        name: Its path relative to the models folder ("/"-separated).
        format: "fp32", "fp16", "int8" for `model_<format>.tflite`, else the stem.
    """

    path: str
    name: str
    format: str


def find_models(models_dir: str) -> list[ModelFile]:
    """Every `.tflite` file under a folder (an export folder, a child folder, ...).

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
            "(see README.md, 'Export') or point --models at a folder of .tflite files"
        )
    return found


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_csv(path: str) -> list[dict[str, str]]:
    """The rows of a results CSV ([] when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(path: str, rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    atomic_write_bytes(path, buf.getvalue().encode())


def _same_measurement(row: dict[str, str], key: dict[str, str]) -> bool:
    return all(row.get(k, "") == v for k, v in key.items())


def update_model_card(card_path: str, target: str, fmt: str, entry: dict[str, Any]) -> None:
    """Puts `entry` at card["latency"][target][fmt], rewriting the card atomically.

    Args:
        card_path: The `model_card.json`.
        target: "host", "android:SERIAL", ...
        fmt: "fp32", "fp16", "int8", ...
        entry: The measurement.

    Raises:
        ValueError: If the card is not a JSON object.
    """
    with open(card_path, encoding="utf-8") as f:
        try:
            card = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{card_path} is not valid JSON: {e}") from e
    if not isinstance(card, dict):
        raise ValueError(f"{card_path} is not a JSON object")
    card.setdefault("latency", {}).setdefault(target, {})[fmt] = entry
    atomic_write_json(card_path, card)


def _tail(text: str, lines: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _same_setting(row: dict[str, str], model: str, serial: str, settings: dict[str, str]) -> bool:
    return (
        row.get("model") == model
        and row.get("serial") == serial
        and _same_measurement(row, settings)
    )


def _timing_cells(timing: Timing) -> dict[str, str]:
    cells = {}
    for field in ("avg_ms", "std_ms", "min_ms", "max_ms", "init_ms"):
        value = getattr(timing, field)
        cells[field] = "" if value is None else f"{value:.6f}"
    return cells


def _card_entry(
    timing: Timing, options: BenchmarkOptions, info: DeviceInfo, measured_at: str
) -> dict[str, Any]:
    return {
        "avg_ms": timing.avg_ms,
        "std_ms": timing.std_ms,
        "min_ms": timing.min_ms,
        "max_ms": timing.max_ms,
        "threads": options.num_threads,
        "runs": options.num_runs,
        "warmup_runs": options.warmup_runs,
        "delegate": options.delegate,
        "cpu_mask": options.cpu_mask or None,
        "device": {"model": info.model, "android": info.android_version, "abi": info.abi},
        "measured_at": measured_at,
    }


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
        AdbError: adb missing, no device, several devices and no serial, device
            unauthorized or offline.
        BenchmarkBinaryError: The binary is missing, not an executable, or not
            for the device's ABI.
        DeviceDisconnectedError: The device went away; what was measured is saved
            and a rerun continues with the rest.
        AndroidBenchmarkError: Some models failed on the device (the others saved).
    """
    options = options or BenchmarkOptions()
    models = find_models(models_dir)
    elf_machine(binary)  # missing / not ELF: fail before touching the device
    adb = adb or Adb(serial)
    info = device_info(adb)
    check_binary_abi(binary, list(info.abis))
    csv_path = os.path.join(models_dir, CSV_NAME)
    rows = read_csv(csv_path)
    settings = options.csv_values()

    todo, skipped = [], []
    digests = {}
    for m in models:
        digests[m.name] = _sha256(m.path)
        key = {"sha256": digests[m.name], "status": "ok"}
        done = [r for r in rows if _same_setting(r, m.name, info.serial, settings)]
        if not remeasure and any(_same_measurement(r, key) for r in done):
            skipped.append(m.name)
        else:
            todo.append(m)
    if skipped:
        log(f"{len(skipped)} model(s) already measured on {info.serial} with these settings")
    if not todo:
        return AndroidReport(info, [], skipped, {}, csv_path)

    remote_dir = device_dir.rstrip("/") or "/"
    remote_bin = f"{remote_dir}/{BINARY_NAME}"
    adb.check_shell(["mkdir", "-p", remote_dir], f"create {remote_dir}")
    adb.push(binary, remote_bin)
    adb.check_shell(["chmod", "755", remote_bin], f"make {remote_bin} executable")

    measured: list[str] = []
    failed: dict[str, str] = {}
    for n, m in enumerate(todo):
        log(f"[{n + 1}/{len(todo)}] {m.name}")
        row = {
            "model": m.name,
            "format": m.format,
            "serial": info.serial,
            "device_model": info.model,
            "android_version": info.android_version,
            "abi": info.abi,
            "sha256": digests[m.name],
            **settings,
            "measured_at": _now(),
        }
        try:
            timing = _measure(adb, m, remote_dir, remote_bin, options)
        except (DeviceDisconnectedError, BenchmarkBinaryError):
            done = len(measured) + len(skipped)
            log(f"stopped after {done} of {len(models)} models; results are in {csv_path}")
            raise
        except AdbError as e:
            failed[m.name] = str(e)
            row.update(status="failed", error=str(e))
            log(f"  FAILED: {e}")
        else:
            row.update(status="ok", error="", **_timing_cells(timing))
            measured.append(m.name)
            log(f"  {timing.avg_ms:.3f} ms")
            card = os.path.join(os.path.dirname(m.path), CARD_NAME)
            if os.path.isfile(card):
                entry = _card_entry(timing, options, info, row["measured_at"])
                update_model_card(card, f"android:{info.serial}", m.format, entry)
        rows = [r for r in rows if not _same_setting(r, m.name, info.serial, settings)]
        rows.append(row)
        _write_csv(csv_path, rows)
    report = AndroidReport(info, measured, skipped, failed, csv_path)
    if failed:
        listing = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise AndroidBenchmarkError(
            f"{len(failed)} of {len(models)} models failed on {info.serial} (the other results "
            f"are saved in {csv_path}): {listing}",
            report,
        )
    return report
