"""The phone, the `benchmark_model` binary for it, and the binary's settings.

`device_info(adb)` reads the device's model, Android version and ABIs
(`getprop`, already stripped of control characters by `Adb.getprop`);
`elf_machine` and `check_binary_abi` check on the host that the user's
`benchmark_model` is an executable for one of those ABIs; `BenchmarkOptions`
are the flags it runs with, and name the delegate in use.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import types

from tf_bignas.latency.adb import Adb

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


class BenchmarkBinaryError(ValueError):
    """The `benchmark_model` binary is missing, not executable, or of the wrong ABI."""


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
        num_runs: Timed runs (`--num_runs`; the tool makes at least this many).
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
        """The `benchmark_model` flags for one model on the device.

        Args:
            graph: The model's path on the device.

        Returns:
            The flags, one argument each.
        """
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
class DeviceInfo:
    """What `getprop` says about the device.

    Attributes:
        serial: The adb serial.
        model: `ro.product.model` (the card's `device`).
        android_version: `ro.build.version.release`.
        abi: The primary ABI (`ro.product.cpu.abi`).
        abis: Every ABI it runs (`ro.product.cpu.abilist`, primary first).
    """

    serial: str
    model: str
    android_version: str
    abi: str
    abis: tuple[str, ...]


def device_info(adb: Adb) -> DeviceInfo:
    """Reads the device model, Android version and ABIs via `getprop`.

    Args:
        adb: The device.

    Returns:
        Its description.

    Raises:
        AdbError: If a property cannot be read.
    """
    abi = adb.getprop("ro.product.cpu.abi")
    abilist = [a for a in adb.getprop("ro.product.cpu.abilist").split(",") if a]
    return DeviceInfo(
        serial=adb.serial,
        model=adb.getprop("ro.product.model"),
        android_version=adb.getprop("ro.build.version.release"),
        abi=abi,
        abis=tuple(abilist or ([abi] if abi else [])),
    )


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
            "android_aarch64_benchmark_model (see README.md, 'Exporting and benchmarking on an Android phone')"
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
