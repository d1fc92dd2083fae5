"""Tests of the Android benchmark (tf_bignas.latency.adb/android, tools.benchmark_android).

They run against a fake `adb` (tests/fake_adb.py) put first on the PATH: it
records every call and plays back recorded `benchmark_model` outputs of both
formats and every failure the tool must report. Where a real adb is
installed, its "no device" answer is checked too. The parsing of the tool's
output is tested in tests/test_android_output.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import fake_adb
import pytest

from tf_bignas.common.files import sha256_path
from tf_bignas.latency import adb as adb_lib
from tf_bignas.latency import android
from tf_bignas.run import card as card_lib
from tf_bignas.run import lock as lock_lib
from tf_bignas.run import workdir as wd_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "testdata" / "android"
SERIAL = "R58M40ABCDE"
HOSTILE = "a b;touch pwned1 'q\" $(touch pwned2) `touch pwned3` & x|y"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _elf(machine: int = 183, bits: int = 64, e_type: int = 3) -> bytes:
    ident = b"\x7fELF" + bytes([{32: 1, 64: 2}[bits], 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HH", e_type, machine) + bytes(44)


def _card(child: pathlib.Path, files: dict[str, str]) -> dict:
    """A model card as the export writes it, listing `files` ({format: file name}) verified."""
    tensor = {"name": "input", "dtype": "float32", "shape": [1, 32, 32, 3]}
    logits = {"name": "logits", "dtype": "float32", "shape": [1, 10]}
    return {
        "name": child.name, "paper_notation": "tiny child", "space": "bignas_tiny",
        "origin": "test", "macs": 1.0e6, "params": 1.0e4, "resolution": 32, "num_classes": 10,
        "arch": {},
        "input_contract": {"summary": "RGB in [0, 255]",
                           "files": {f: {"input": tensor, "output": logits} for f in files}},
        "files": {f: {"file": n, "bytes": (child / n).stat().st_size,
                      "sha256": sha256_path(str(child / n))} for f, n in files.items()},
        "provenance": {"workdir": "w", "weights": "w.weights.h5", "weights_digest": "0" * 16,
                       "bn_stats": "bn.npz", "bn_stats_digest": "0" * 16,
                       "exported_at": "2025-01-01T00:00:00+00:00", "tensorflow": "2.21"},
        # An entry of the older layout (target -> format -> entry): kept, converted.
        "latency": {"host": {"fp32": {"median_ms": 1.0, "threads": 1}}},
    }  # fmt: skip


class Env:
    """A fake phone: adb on the PATH, its state and call log, models, a binary."""

    def __init__(self, tmp: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
        self.tmp = tmp
        self.state_path = str(tmp / "adb_state.json")
        self.log = str(tmp / "adb_log.jsonl")
        self.host_cwd = tmp / "host_cwd"
        self.host_cwd.mkdir()
        outputs = {k: (DATA / f"benchmark_model_{k}.txt").read_text() for k in ("us", "ms", "fail")}
        self.state = fake_adb.default_state(
            str(tmp / "device"), self.log, str(self.host_cwd), outputs
        )
        fake_adb.install(str(tmp / "bin"), self.state_path, self.state)
        monkeypatch.setenv("PATH", f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv(fake_adb.STATE_ENV, self.state_path)
        self.binary = tmp / "benchmark_model"
        self.binary.write_bytes(_elf())
        self.models = tmp / "export"
        child = self.models / "mflops_1"
        child.mkdir(parents=True)
        (child / "model_fp32.tflite").write_bytes(b"TFL3 fp32")
        (child / "model_int8.tflite").write_bytes(b"TFL3 int8")
        card = _card(child, {"fp32": "model_fp32.tflite", "int8": "model_int8.tflite"})
        (child / "model_card.json").write_text(json.dumps(card))
        self.child = child
        (self.models / "extra.tflite").write_bytes(b"TFL3 extra")

    def update(self, **changes) -> None:
        state = fake_adb.load_state(self.state_path)
        state.update(changes)
        fake_adb.save_state(self.state_path, state)

    def calls(self) -> list[list[str]]:
        return fake_adb.read_log(self.log)

    def device_runs(self) -> list[list[str]]:
        return [c[1:] for c in self.calls() if c[0] == "#device-argv" and "getprop" not in c[1]
                and c[1] not in ("mkdir", "chmod")]  # fmt: skip

    def rows(self) -> list[dict[str, str]]:
        return android.read_csv(str(self.models / android.CSV_NAME))

    def card(self) -> dict:
        return json.loads((self.child / "model_card.json").read_text())

    def tool(self, *flags: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "tools.benchmark_android", f"--models={self.models}",
               f"--benchmark_binary={self.binary}", f"--serial={SERIAL}", *flags]  # fmt: skip
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

    def run(self, **kwargs) -> android.AndroidReport:
        kwargs.setdefault("serial", SERIAL)
        return android.benchmark_android(str(self.models), str(self.binary), log=lambda s: None,
                                         **kwargs)  # fmt: skip


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    return Env(tmp_path, monkeypatch)


def test_measures_every_model_and_writes_csv_and_cards(env):
    env.update(behaviour={"mflops_1__model_int8.tflite": "ms"})
    options = android.BenchmarkOptions(num_threads=4, cpu_mask="f0", warmup_runs=2, num_runs=7)
    report = env.run(options=options, device_dir="/data/local/tmp/bench")
    names = ["extra.tflite", "mflops_1/model_fp32.tflite", "mflops_1/model_int8.tflite"]
    assert sorted(report.measured) == names and not report.failed
    assert report.device == android.DeviceInfo(SERIAL, "Pixel 7", "14", "arm64-v8a",
                                               ("arm64-v8a", "armeabi-v7a", "armeabi"))  # fmt: skip
    calls = env.calls()
    assert ["devices"] in calls
    for prop in ("ro.product.model", "ro.build.version.release", "ro.product.cpu.abi"):
        assert ["#device-argv", "getprop", prop] in calls
    assert ["-s", SERIAL, "push", str(env.binary), "/data/local/tmp/bench/benchmark_model"] in calls
    assert ["#device-argv", "chmod", "755", "/data/local/tmp/bench/benchmark_model"] in calls
    runs = env.device_runs()
    assert len(runs) == 3
    assert runs[1] == ["taskset", "f0", "/data/local/tmp/bench/benchmark_model",
                       "--graph=/data/local/tmp/bench/mflops_1__model_fp32.tflite",
                       "--num_threads=4", "--use_gpu=false", "--use_nnapi=false",
                       "--use_xnnpack=true", "--warmup_runs=2", "--num_runs=7"]  # fmt: skip
    rows = {r["model"]: r for r in env.rows()}
    assert sorted(rows) == names
    fp32_row = rows["mflops_1/model_fp32.tflite"]
    assert float(fp32_row["mean_ms"]) == pytest.approx(2.14987)
    assert float(fp32_row["memory_mb"]) == pytest.approx(3.40234) and fp32_row["runs"] == "463"
    assert fp32_row["median_ms"] == fp32_row["p90_ms"] == ""  # this build prints no percentile
    assert "prints no percentiles" in fp32_row["statistic"]
    assert fp32_row["sha256"] == sha256_path(str(env.child / "model_fp32.tflite"))
    assert float(rows["mflops_1/model_int8.tflite"]["mean_ms"]) == pytest.approx(1.873)
    assert rows["extra.tflite"]["format"] == "extra"
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["extra.tflite"]["device_model"] == "Pixel 7"
    assert (
        rows["extra.tflite"]["num_threads"] == "4" and rows["extra.tflite"]["delegate"] == "xnnpack"
    )
    card = env.card()
    [host] = card_lib.find_latency(card, target="host")  # the older host entry is kept
    assert host["median_ms"] == 1.0 and host["format"] == "fp32"
    entries = {e["format"]: e for e in card_lib.find_latency(card, target="android")}
    assert set(entries) == {"fp32", "int8"}
    fp32 = entries["fp32"]
    assert {k: fp32[k] for k in card_lib.LATENCY_KEY} == {
        "target": "android", "device": "Pixel 7", "threads": 4, "delegate": "xnnpack",
        "format": "fp32"}  # fmt: skip
    assert fp32["mean_ms"] == pytest.approx(2.14987) and fp32["median_ms"] is None
    assert fp32["p90_ms"] is None and "p90_ms are None" in fp32["statistic"]
    assert (fp32["min_ms"], fp32["max_ms"], fp32["std_ms"]) == pytest.approx((2.079, 2.384, 0.048))
    assert fp32["memory_mb"] == pytest.approx(3.40234) and fp32["runs"] == 463
    assert (fp32["serial"], fp32["android_version"], fp32["abi"]) == (SERIAL, "14", "arm64-v8a")
    assert (
        fp32["cpu_mask"] == "f0" and fp32["warmup_runs"] == 2 and fp32["tool"] == "benchmark_model"
    )
    assert fp32["sha256"] == card["files"]["fp32"]["sha256"]
    assert entries["int8"]["mean_ms"] == pytest.approx(1.873)
    assert entries["int8"]["memory_mb"] == pytest.approx(3.17) and entries["int8"]["runs"] == 7
    assert (env.child / "model_card.md").is_file()  # the Markdown is rendered with the JSON

    # The same command again measures nothing; other settings or --remeasure measure again.
    again = env.run(options=options, device_dir="/data/local/tmp/bench")
    assert again.measured == [] and len(again.skipped) == 3 and len(env.device_runs()) == 3
    env.run(options=options, device_dir="/data/local/tmp/bench", remeasure=True)
    assert len(env.device_runs()) == 6 and len(env.rows()) == 3
    env.run(options=android.BenchmarkOptions(num_threads=1), device_dir="/data/local/tmp/bench")
    assert len(env.device_runs()) == 9 and len(env.rows()) == 6


def test_other_threads_and_delegates_keep_their_own_card_entries(env):
    env.update(behaviour={"mflops_1__model_fp32.tflite": "litert"})
    env.run(options=android.BenchmarkOptions(num_threads=1, use_xnnpack=False))
    first = card_lib.find_latency(env.card(), target="android", format="fp32")
    env.run(options=android.BenchmarkOptions(num_threads=4, use_gpu=True))
    card = env.card()
    fp32 = card_lib.find_latency(card, target="android", format="fp32")
    assert sorted((e["threads"], e["delegate"]) for e in fp32) == [(1, "cpu"), (4, "gpu")]
    assert [e for e in fp32 if e["threads"] == 1] == first  # the 1-thread CPU entry is untouched
    assert len(card_lib.find_latency(card, target="android", format="int8")) == 2
    assert len(card_lib.find_latency(card, target="host")) == 1
    gpu = next(e for e in fp32 if e["delegate"] == "gpu")  # a LiteRT build: percentiles printed
    assert (gpu["median_ms"], gpu["p5_ms"], gpu["p95_ms"]) == pytest.approx((1.541, 1.506, 1.671))
    assert gpu["p90_ms"] is None and "no 90th percentile" in gpu["statistic"]
    assert gpu["memory_mb"] == pytest.approx(3.8125) and gpu["runs"] == 641
    rows = env.rows()
    assert sorted((r["num_threads"], r["delegate"]) for r in rows if "fp32" in r["model"]) == [
        ("1", "cpu"), ("4", "gpu")]  # fmt: skip
    # The same setting again replaces its own entry only.
    env.run(options=android.BenchmarkOptions(num_threads=4, use_gpu=True), remeasure=True)
    assert len(card_lib.find_latency(env.card(), target="android", format="fp32")) == 2


def test_swapped_file_is_refused_before_the_device(env):
    swapped = env.child / "model_fp32.tflite"
    swapped.write_bytes(b"TFL3 another model")
    with pytest.raises(card_lib.FileDigestError, match=re.escape(str(swapped)) + " has sha256 "):
        env.run()
    assert env.calls() == []  # adb never ran: nothing pushed, nothing run
    assert not (env.models / android.CSV_NAME).exists()
    bad = env.tool()
    assert bad.returncode == 2 and env.calls() == []
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("benchmark_android.py: error: " + str(swapped) + " has sha256 ")
    assert "model_card.json verified" in line and "Traceback" not in bad.stderr
    # A .tflite the card does not list is refused too; a folder without a card is not checked.
    swapped.write_bytes(b"TFL3 fp32")
    (env.child / "model_fp16.tflite").write_bytes(b"TFL3 fp16")
    with pytest.raises(card_lib.FileDigestError, match="model_fp16.tflite is not a file that"):
        env.run()
    (env.child / "model_fp16.tflite").unlink()
    assert len(env.run().measured) == 3


def test_device_output_loses_its_control_characters(env):
    env.update(behaviour={"mflops_1__model_int8.tflite": "ansi_fail"},
               props={SERIAL: {**env.state["props"][SERIAL],
                               "ro.product.model": "Pixel\x1b[31m 7\x00"}})  # fmt: skip
    with pytest.raises(android.AndroidBenchmarkError) as info:
        env.run()
    message = str(info.value)
    assert "| ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6' |" in message
    assert not CONTROL.search(message) and "\n" not in message
    assert info.value.report.device.model == "Pixel 7"  # the colour code and the NUL gone
    row = next(r for r in env.rows() if r["status"] == "failed")
    assert "Registration failed." in row["error"] and not CONTROL.search(row["error"])
    assert not any(CONTROL.search(v) for r in env.rows() for v in r.values())
    bad = env.tool("--remeasure")
    assert bad.returncode == 2
    [line] = bad.stderr.strip().splitlines()
    assert "1 of 3 models failed" in line and "Registration failed." in line
    assert not CONTROL.search(bad.stderr.strip()) and not CONTROL.search(bad.stdout.strip())


def test_a_held_workdir_lock_refuses_with_the_holders_pid(env):
    lock_file = env.models / wd_lib.LOCK_FILE
    with fake_adb.held_lock(str(lock_file)) as pid:
        with pytest.raises(lock_lib.WorkdirBusyError, match=f"pid {pid} on host"):
            env.run()
        assert env.calls() == []  # refused before adb ran
        bad = env.tool()
        assert bad.returncode == 2
        [line] = bad.stderr.strip().splitlines()
        assert f"is in use by another run: pid {pid} on host" in line
        assert not CONTROL.search(line) and env.calls() == []
    assert len(env.run().measured) == 3  # free again: the holder's stale lock is taken over
    assert not lock_file.exists()


def test_adb_not_installed(env, monkeypatch):
    monkeypatch.setenv("PATH", str(env.tmp / "empty"))
    with pytest.raises(adb_lib.AdbNotFoundError, match="apt-get install adb"):
        env.run()


@pytest.mark.parametrize(
    "devices,serial,error,match",
    [
        ({}, SERIAL, adb_lib.NoDeviceError, "no Android device is attached"),
        ({SERIAL: "device", "emulator-5554": "device"}, None, adb_lib.DeviceSelectionError,
         f"2 devices are attached \\({SERIAL} \\(device\\), emulator-5554.*--serial"),
        ({"emulator-5554": "device"}, SERIAL, adb_lib.NoDeviceError,
         f"'{SERIAL}' is not attached; attached: emulator-5554"),
        ({SERIAL: "unauthorized"}, SERIAL, adb_lib.DeviceStateError, "Allow USB debugging"),
        ({SERIAL: "offline"}, None, adb_lib.DeviceStateError, "is offline: reconnect"),
    ],
)  # fmt: skip
def test_device_selection_errors(env, devices, serial, error, match):
    env.update(devices=devices)
    with pytest.raises(error, match=match):
        env.run(serial=serial)
    assert not any(c[:1] == ["-s"] and "push" in c for c in env.calls())


def test_binary_errors_before_anything_is_pushed(env):
    env.binary.unlink()
    with pytest.raises(android.BenchmarkBinaryError, match="does not exist"):
        env.run()
    env.binary.write_text("#!/bin/sh\necho not a binary\n")
    with pytest.raises(android.BenchmarkBinaryError, match="not an ELF file"):
        env.run()
    env.binary.write_bytes(_elf(e_type=1))  # a relocatable object
    with pytest.raises(android.BenchmarkBinaryError, match="not an executable"):
        env.run()
    env.binary.write_bytes(_elf(machine=62))  # x86-64
    with pytest.raises(android.BenchmarkBinaryError, match="64-bit x86-64 .*arm64-v8a"):
        env.run()
    assert not any("push" in c for c in env.calls())
    env.binary.write_bytes(_elf(machine=40, bits=32))  # armv7 runs on this arm64 phone
    assert len(env.run().measured) == 3


def test_binary_not_executable_on_device(env):
    env.update(noexec=True)
    with pytest.raises(android.BenchmarkBinaryError, match="not executable on the device"):
        env.run()
    assert env.rows() == []


def test_failing_model_is_reported_and_retried(env):
    env.update(behaviour={"mflops_1__model_int8.tflite": "fail"})
    with pytest.raises(android.AndroidBenchmarkError, match="1 of 3 models failed.*model_int8.*"
                       "Didn't find op for builtin opcode"):  # fmt: skip
        env.run()
    rows = {r["model"]: r for r in env.rows()}
    assert rows["mflops_1/model_int8.tflite"]["status"] == "failed"
    assert rows["extra.tflite"]["status"] == rows["mflops_1/model_fp32.tflite"]["status"] == "ok"
    env.update(behaviour={})
    report = env.run()
    assert report.measured == ["mflops_1/model_int8.tflite"] and len(report.skipped) == 2
    assert {r["status"] for r in env.rows()} == {"ok"} and len(env.rows()) == 3


def test_disconnect_mid_run_keeps_results_and_rerun_continues(env):
    env.update(disconnect_after=1)
    with pytest.raises(adb_lib.DeviceDisconnectedError, match="disconnected"):
        env.run()
    assert [r["model"] for r in env.rows()] == ["extra.tflite"]
    assert len(env.device_runs()) == 2
    env.update(devices={SERIAL: "device"}, disconnect_after=None)
    report = env.run()
    assert report.skipped == ["extra.tflite"]
    assert report.measured == ["mflops_1/model_fp32.tflite", "mflops_1/model_int8.tflite"]
    assert len(env.device_runs()) == 4 and len(env.rows()) == 3


def test_hostile_serial_paths_and_names_neither_break_nor_inject(env):
    serial = "emu " + HOSTILE
    env.update(devices={serial: "device"}, props={serial: env.state["props"][SERIAL]})
    hostile_dir = env.models / HOSTILE
    hostile_dir.mkdir()
    model_name = f"m {HOSTILE}.tflite"
    (hostile_dir / model_name).write_bytes(b"TFL3 hostile")
    device_dir = "/data/local/tmp/x " + HOSTILE
    report = env.run(serial=serial, device_dir=device_dir)
    assert f"{HOSTILE}/{model_name}" in report.measured and len(report.measured) == 4
    assert ["-s", serial, "get-state"] not in env.calls()  # no failure on the way
    remote = f"{device_dir}/{HOSTILE}__{model_name}"
    assert [f"{device_dir}/benchmark_model", f"--graph={remote}"] in [
        r[:2] for r in env.device_runs()
    ]
    assert ["-s", serial, "push", str(hostile_dir / model_name), remote] in env.calls()
    assert list(env.host_cwd.iterdir()) == []  # no injected command ran
    assert not list(env.tmp.glob("**/pwned*")) and not list(pathlib.Path.cwd().glob("pwned*"))
    assert report.device.serial == serial
    assert {r["serial"] for r in env.rows()} == {serial}


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="not a hex CPU mask"):
        android.BenchmarkOptions(cpu_mask="f0; reboot")
    with pytest.raises(ValueError, match="exclusive"):
        android.BenchmarkOptions(use_gpu=True, use_nnapi=True)
    with pytest.raises(ValueError, match="num_runs"):
        android.BenchmarkOptions(num_runs=0)
    with pytest.raises(ValueError, match="line break"):
        adb_lib.quote_command(["echo", "a\nreboot"])


def test_program_runs_and_reports_errors_in_one_line(env):
    ok = env.tool("--num_runs=3")
    assert ok.returncode == 0, ok.stderr
    assert "Pixel 7 (Android 14, arm64-v8a" in ok.stdout and "3 measured" in ok.stdout
    assert "1 threads, xnnpack" in ok.stdout
    env.update(devices={})
    bad = env.tool("--num_runs=3")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("no Android device is attached ('adb devices' lists none): "
                                       "connect one by USB with USB debugging on (Settings > "
                                       "Developer options), or 'adb connect HOST:PORT'")  # fmt: skip
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_real_adb_or_its_absence_is_reported(monkeypatch):
    """The machine's own adb (or its absence), not the fake: never skipped.

    Where adb is installed, a bogus serial must fail with NoDeviceError (none
    attached, or not among those attached), through a private adb server; where
    it is not, the real PATH lookup must say so and how to install it.
    """
    real = shutil.which("adb")
    if real is None:
        with pytest.raises(adb_lib.AdbNotFoundError, match="adb is not installed"):
            adb_lib.Adb("no-such-serial")
        return
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "5049")  # a private server, not the user's
    try:
        with pytest.raises(
            adb_lib.NoDeviceError, match="no Android device is attached|not attached"
        ):
            adb_lib.Adb("no-such-serial", executable=real)
    finally:
        subprocess.run([real, "kill-server"], capture_output=True, timeout=60)
