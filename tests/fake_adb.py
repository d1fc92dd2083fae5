"""A fake `adb` for the Android benchmark tests (installed on the PATH by `install`).

The script records every call (its argv, one JSON line per call) and behaves
like adb with a device whose file system is a host folder: `devices`,
`get-state`, `push` and `shell`. A device-shell command line is split by a
real `sh` (exactly as the device's shell would split it), so a badly quoted
argument shows up as a different argv or as a command that really runs (the
tests look for the files such a command would create). `benchmark_model`
plays back recorded outputs of both formats, or a failure, chosen per model
file name; the device can be unauthorized, offline, or vanish mid-run.
Besides the recorded outputs the tests pass in (tests/testdata/android), it
knows `LITERT_OUTPUT` (a LiteRT build's output, with percentiles) and
`ANSI_FAILURE` (a failure whose output holds ESC colour codes and NULs).
`held_lock(path)` holds a workdir lock from another process, as a concurrent
run would, for the tests of the refusal.

Its state (devices, properties, behaviours, counters) is a JSON file named by
the FAKE_ADB_STATE environment variable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator

STATE_ENV = "FAKE_ADB_STATE"

# The output of a LiteRT build of benchmark_model (timed runs of a small model,
# 4 threads, XNNPACK), line for line as its source prints it:
# google-ai-edge/LiteRT tflite/tools/benchmark/benchmark_model.cc
# (BenchmarkModel::Run logs `StatWithPercentiles::OutputToStream` of the warmup
# and of the timed runs, then BenchmarkLoggingListener::OnBenchmarkEnd logs the
# summary and the memory footprint) and tensorflow/tensorflow
# third_party/xla/xla/tsl/util/stats_calculator.h (the "count= first= curr=
# min= max= avg= std=" line with " p5= median= p95=" appended). Times are in
# microseconds; GRAPH is replaced by the model's path.
LITERT_OUTPUT = """INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [50]
INFO: Num threads: [4]
INFO: Graph: [GRAPH]
INFO: #threads used for CPU inference: [4]
INFO: Use xnnpack: [1]
INFO: Loaded model GRAPH
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.016384
INFO: Initialized session in 4.117ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=312 first=2874 curr=1541 min=1502 max=2874 avg=1598.41 std=97 p5=1517 median=1573 p95=1764

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=641 first=1552 curr=1529 min=1498 max=2290 avg=1559.6 std=61 p5=1506 median=1541 p95=1671

INFO: Inference timings in us: Init: 4117, First inference: 2874, Warmup (avg): 1598.41, Inference (avg): 1559.6
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=3.05469 overall=3.8125
"""

# A failing model whose output (and error) carries terminal colour codes and NULs.
ANSI_FAILURE = (
    "STARTING!\nGraph: [GRAPH]\n"
    "\x1b[31mERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'\x1b[0m\x00\n"
    "\x1b[1mERROR: Registration failed.\x00\x07\n"
    "Failed to initialize the interpreter\n"
)


# Holds a workdir lock as another run does (tf_bignas.run.lock: flock on the
# lock file, which names its holder), until its stdin closes.
_LOCK_HOLDER = """
import fcntl, json, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2025-01-01T00:00:00",
          "command": "python -m tools.benchmark_android \x1b[31m--models=elsewhere"}
os.write(fd, json.dumps(holder).encode())
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held_lock(lock_file: str) -> Iterator[int]:
    """Holds `lock_file` (a workdir's run.lock) from another process during the block.

    Args:
        lock_file: The lock file (its folder must exist).

    Yields:
        The holder's pid (its command line holds an ESC colour code).
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, lock_file],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if holder.stdout.readline().strip() != "held":
            raise RuntimeError(f"could not hold {lock_file}")
        yield holder.pid
    finally:
        holder.stdin.close()  # it ends; its lock file stays, stale, as a killed run's would
        holder.wait(timeout=60)


def install(bin_dir: str, state_path: str, state: dict) -> str:
    """Writes the fake as `bin_dir/adb` and its state file.

    Args:
        bin_dir: Folder to put first on the PATH.
        state_path: Where the state JSON goes (point FAKE_ADB_STATE at it).
        state: The initial state (see `default_state`).

    Returns:
        The path of the fake adb.
    """
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "adb")
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"#!{sys.executable} -S\n{source}")
    os.chmod(path, 0o755)
    save_state(state_path, state)
    return path


def default_state(root: str, log: str, host_cwd: str, outputs: dict[str, str]) -> dict:
    """One authorised arm64 phone, every model answering in the classic format."""
    serial = "R58M40ABCDE"
    return {
        "root": root,
        "log": log,
        "host_cwd": host_cwd,
        "devices": {serial: "device"},
        "props": {
            serial: {
                "ro.product.model": "Pixel 7",
                "ro.build.version.release": "14",
                "ro.product.cpu.abi": "arm64-v8a",
                "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
            }
        },
        "outputs": {"litert": LITERT_OUTPUT, "ansi_fail": ANSI_FAILURE, **outputs},
        "behaviour": {},
        "noexec": False,
        "disconnect_after": None,
        "benchmark_runs": 0,
    }


def load_state(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_state(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def read_log(path: str) -> list[list[str]]:
    """Every recorded call (argv without the program), in order."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _device_path(state: dict, remote: str) -> str:
    return os.path.join(state["root"], remote.lstrip("/"))


def _fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def _device_error(state: dict, serial: str | None) -> str | None:
    devices = state["devices"]
    if serial is None:
        if not devices:
            return "adb: no devices/emulators found"
        if len(devices) > 1:
            return "adb: more than one device/emulator"
        serial = next(iter(devices))
    if serial not in devices:
        return f"adb: device '{serial}' not found"
    if devices[serial] == "unauthorized":
        return "adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set"
    if devices[serial] == "offline":
        return "adb: device offline"
    return None


def _benchmark(state: dict, state_path: str, serial: str, argv: list[str]) -> int:
    binary = _device_path(state, argv[0])
    if not os.path.isfile(binary):
        return _fail(f"/system/bin/sh: {argv[0]}: inaccessible or not found", 127)
    if state["noexec"] or not os.access(binary, os.X_OK):
        return _fail(f"/system/bin/sh: {argv[0]}: can't execute: Permission denied", 126)
    flags = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
    graph = flags.get("graph", "")
    if not os.path.isfile(_device_path(state, graph)):
        print(f"ERROR: Could not open '{graph}'.")
        return 1
    state["benchmark_runs"] += 1
    after = state["disconnect_after"]
    behaviour = state["behaviour"].get(os.path.basename(graph), "us")
    if behaviour == "disconnect" or (after is not None and state["benchmark_runs"] > after):
        state["devices"].pop(serial, None)
        save_state(state_path, state)
        return _fail("error: closed")
    save_state(state_path, state)
    if behaviour.endswith("fail"):  # "fail", "ansi_fail"
        print(state["outputs"][behaviour].replace("GRAPH", graph))
        return 1
    print(state["outputs"][behaviour].replace("GRAPH", graph))
    return 0


def _shell(state: dict, state_path: str, serial: str, words: list[str]) -> int:
    command = " ".join(words)  # what adb sends to the device
    split = subprocess.run(
        ["sh", "-c", "printf '%s\\0' " + command],
        cwd=state["host_cwd"],
        capture_output=True,
        check=False,
    )
    argv = split.stdout.decode().split("\0")[:-1]
    with open(state["log"], "a", encoding="utf-8") as f:
        f.write(json.dumps(["#device-argv", *argv]) + "\n")
    if not argv:
        return 0
    if argv[0] == "getprop":
        print(state["props"].get(serial, {}).get(argv[1], ""))
        return 0
    if argv[:2] == ["mkdir", "-p"]:
        os.makedirs(_device_path(state, argv[2]), exist_ok=True)
        return 0
    if argv[0] == "chmod":
        target = _device_path(state, argv[2])
        if not os.path.exists(target):
            return _fail(f"chmod: {argv[2]}: No such file or directory")
        os.chmod(target, int(argv[1], 8))
        return 0
    if argv[0] == "taskset":
        return _benchmark(state, state_path, serial, argv[2:])
    return _benchmark(state, state_path, serial, argv)


def main(args: list[str]) -> int:
    state_path = os.environ[STATE_ENV]
    state = load_state(state_path)
    with open(state["log"], "a", encoding="utf-8") as f:
        f.write(json.dumps(args) + "\n")
    serial = None
    if args[:1] == ["-s"]:
        serial, args = args[1], args[2:]
    if not args:
        return _fail("adb: usage: no command")
    command, rest = args[0], args[1:]
    if command == "devices":
        print("List of devices attached")
        for s, st in state["devices"].items():
            print(f"{s}\t{st}")
        print()
        return 0
    error = _device_error(state, serial)
    if error:
        return _fail(error)
    serial = serial or next(iter(state["devices"]))
    if command == "get-state":
        print("device")
        return 0
    if command == "push":
        local, remote = rest
        if not os.path.isfile(local):
            return _fail(f"adb: error: cannot stat '{local}': No such file or directory")
        target = _device_path(state, remote)
        if not os.path.isdir(os.path.dirname(target)):
            os.makedirs(os.path.dirname(target))
        shutil.copyfile(local, target)
        os.chmod(target, stat.S_IMODE(os.stat(local).st_mode))
        print(f"{local}: 1 file pushed, 0 skipped.")
        return 0
    if command == "shell":
        return _shell(state, state_path, serial, rest)
    return _fail(f"adb: unknown command {command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
