"""Tests of the Android benchmark (tf_bignas.latency.adb/android, tools.benchmark_android).

They run against a fake `adb` (tests/fake_adb.py) put first on the PATH: it
records every call and plays back recorded `benchmark_model` outputs of both
formats and every failure the tool must report. Where a real adb is
installed, its "no device" answer is checked too.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import fake_adb
import pytest

from tf_bignas.latency import adb as adb_lib
from tf_bignas.latency import android

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "testdata" / "android"
SERIAL = "R58M40ABCDE"
HOSTILE = "a b;touch pwned1 'q\" $(touch pwned2) `touch pwned3` & x|y"


def _elf(machine: int = 183, bits: int = 64, e_type: int = 3) -> bytes:
    ident = b"\x7fELF" + bytes([{32: 1, 64: 2}[bits], 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HH", e_type, machine) + bytes(44)


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
        (child / "model_card.json").write_text(json.dumps({"name": "mflops_1", "latency": {
            "host": {"fp32": {"median_ms": 1.0}}}}))  # fmt: skip
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

    def run(self, **kwargs) -> android.AndroidReport:
        kwargs.setdefault("serial", SERIAL)
        return android.benchmark_android(str(self.models), str(self.binary), log=lambda s: None,
                                         **kwargs)  # fmt: skip


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    return Env(tmp_path, monkeypatch)


def test_parse_both_output_formats():
    classic = android.parse_benchmark_output((DATA / "benchmark_model_us.txt").read_text())
    assert classic.avg_ms == pytest.approx(2.14987)
    assert classic.init_ms == pytest.approx(3.281)
    assert (classic.min_ms, classic.max_ms, classic.std_ms) == pytest.approx((2.079, 2.384, 0.048))
    newer = android.parse_benchmark_output((DATA / "benchmark_model_ms.txt").read_text())
    assert newer.avg_ms == pytest.approx(1.873) and newer.init_ms == pytest.approx(2.94)
    assert newer.std_ms is None
    assert android.parse_benchmark_output("Inference (avg): 12.5 ms").avg_ms == 12.5
    with pytest.raises(ValueError, match="no 'Inference \\(avg\\)' line"):
        android.parse_benchmark_output((DATA / "benchmark_model_fail.txt").read_text())


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
    assert float(rows["mflops_1/model_fp32.tflite"]["avg_ms"]) == pytest.approx(2.14987)
    assert float(rows["mflops_1/model_int8.tflite"]["avg_ms"]) == pytest.approx(1.873)
    assert rows["extra.tflite"]["format"] == "extra"
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert (
        rows["extra.tflite"]["device_model"] == "Pixel 7"
        and rows["extra.tflite"]["num_threads"] == "4"
    )
    card = json.loads((env.models / "mflops_1" / "model_card.json").read_text())
    assert card["latency"]["host"] == {"fp32": {"median_ms": 1.0}}  # the host entry is kept
    entry = card["latency"][f"android:{SERIAL}"]
    assert set(entry) == {"fp32", "int8"}
    assert entry["int8"]["avg_ms"] == pytest.approx(1.873)
    assert entry["fp32"]["device"] == {"model": "Pixel 7", "android": "14", "abi": "arm64-v8a"}
    assert entry["fp32"]["threads"] == 4 and entry["fp32"]["cpu_mask"] == "f0"

    # The same command again measures nothing; other settings or --remeasure measure again.
    again = env.run(options=options, device_dir="/data/local/tmp/bench")
    assert again.measured == [] and len(again.skipped) == 3 and len(env.device_runs()) == 3
    env.run(options=options, device_dir="/data/local/tmp/bench", remeasure=True)
    assert len(env.device_runs()) == 6 and len(env.rows()) == 3
    env.run(options=android.BenchmarkOptions(num_threads=1), device_dir="/data/local/tmp/bench")
    assert len(env.device_runs()) == 9 and len(env.rows()) == 6


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
    cmd = [sys.executable, "-m", "tools.benchmark_android", f"--models={env.models}",
           f"--benchmark_binary={env.binary}", f"--serial={SERIAL}", "--num_runs=3"]  # fmt: skip
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "Pixel 7 (Android 14, arm64-v8a" in ok.stdout and "3 measured" in ok.stdout
    env.update(devices={})
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
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
