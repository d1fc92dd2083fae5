"""A fake `adb` for the Android benchmark tests (installed on the PATH by `install`).

The script records every call (its argv, one JSON line per call) and behaves
like adb with a device whose file system is a host folder: `devices`,
`get-state`, `push` and `shell`. A device-shell command line is split by a
real `sh` (exactly as the device's shell would split it), so a badly quoted
argument shows up as a different argv or as a command that really runs (the
tests look for the files such a command would create). `benchmark_model`
plays back recorded outputs of both formats, or a failure, chosen per model
file name; the device can be unauthorized, offline, or vanish mid-run.

Its state (devices, properties, behaviours, counters) is a JSON file named by
the FAKE_ADB_STATE environment variable.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

STATE_ENV = "FAKE_ADB_STATE"


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
        "outputs": outputs,
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
    if behaviour == "fail":
        print(state["outputs"]["fail"].replace("GRAPH", graph))
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
