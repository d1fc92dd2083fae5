"""Tests of latency tables (tf_bignas.latency.parts/table/endtoend, tools.latency_table).

Real measurements with few runs on the tiny space: they check the table's
mechanics (keys, sums, lookups, the missing-part error, resuming, the
Android path through the fake adb), not its accuracy, which
benchmarks/latency_table.py reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys

import fake_adb
import pytest

from tf_bignas.latency import android, endtoend, parts, table
from tf_bignas.model import cost
from tf_bignas.model.netplan import net_plan
from tf_bignas.run import lock as lock_lib
from tf_bignas.run import workdir as wd_lib
from tf_bignas.space import ArchConfig, bignas_cifar, bignas_tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "testdata" / "android"
RUNS = {"warmup_runs": 1, "num_runs": 3}


def _variant(arch: ArchConfig, **fields) -> ArchConfig:
    return ArchConfig.from_dict({**arch.to_dict(), **fields})


def test_part_keys_have_no_position_and_cover_the_space():
    space = bignas_tiny()
    arch = _variant(space.smallest(16), depths=[2, 1, 1], kernels=[[3, 3], [3], [3]],
                    expand_ratios=[[1, 1], [2], [2]])  # fmt: skip
    ps = parts.child_parts(space, arch, 10)
    assert [p.label for p in ps] == ["stem", "s1l1", "s1l2", "s2l1", "s3l1", "head"]
    assert [p.kind for p in ps] == ["stem", "block", "block", "block", "block", "head"]
    plan = net_plan(space, arch, 10)
    assert ps[1].key == {"part": "block", **plan.blocks[0].key()}
    assert not {"stage", "index", "name"} & set(ps[1].key)
    assert ps[-1].key["num_classes"] == 10 and ps[0].key["resolution"] == 16
    # The parts hold every op of the child once, so their MACs add up to the child's.
    op_macs = sum(op.macs() for p in ps for op in p.ops)
    assert op_macs == cost.macs(space, arch, 10)
    all_parts = parts.space_parts(space, 10)
    assert len(all_parts) == 228
    assert {p.kind for p in all_parts.values()} == {"stem", "block", "head"}
    for i in range(200):
        child = space.sample(i, resolutions=space.resolutions)
        assert all(p.key_text in all_parts for p in parts.child_parts(space, child, 10))
    cifar = bignas_cifar()
    cifar_parts = parts.space_parts(cifar, 10, resolutions=(32,))
    for i in range(50):
        child = cifar.sample(i, resolutions=(32,))
        assert all(p.key_text in cifar_parts for p in parts.child_parts(cifar, child, 10))


@pytest.fixture(scope="module")
def small_table(tmp_path_factory) -> table.LatencyTable:
    """A host table of the parts of the smallest child at 16 (5 parts, 3 runs each)."""
    path = str(tmp_path_factory.mktemp("table") / "host.json")
    space = bignas_tiny()
    return table.build_table(space, 10, path, archs=[space.smallest(16)], log=lambda s: None,
                             **RUNS)  # fmt: skip


def test_table_sums_parts_and_round_trips(small_table):
    space = bignas_tiny()
    arch = space.smallest(16)
    assert len(small_table) == 5 and small_table.complete
    breakdown = small_table.breakdown(space, arch)
    assert [p.label for p, _ in breakdown] == ["stem", "s1l1", "s2l1", "s3l1", "head"]
    assert all(ms >= 0 for _, ms in breakdown)
    assert small_table.overhead_ms > 0
    predicted = small_table.predict(space, arch)
    summed = small_table.overhead_ms + sum(ms for _, ms in breakdown)
    assert predicted == pytest.approx(small_table.scale * summed)
    # The scale is fitted on the one child, timed end to end: the table predicts it exactly.
    [child] = small_table.correction["children"]
    assert child["table_ms"] == pytest.approx(summed)
    assert child["paper_notation"] == arch.to_paper_notation()
    assert predicted == pytest.approx(child["measured_ms"])
    for e in small_table.entries.values():
        assert e["ms"] == pytest.approx(max(0.0, e["raw_ms"] - small_table.overhead_ms))
    data = json.loads(pathlib.Path(small_table.path).read_text())
    assert data["format"] == 1 and data["target"] == "host" and data["space"] == "bignas_tiny"
    assert data["settings"] == {"threads": 1, "warmup_runs": 1, "num_runs": 3,
                                "statistic": "median"}  # fmt: skip
    assert data["device"]["threads"] == 1 and "cpu" in data["device"]
    loaded = table.LatencyTable.load(small_table.path)
    assert loaded.predict(space, arch) == predicted
    cost_model = table.latency_function(small_table.path, space, 10)
    assert cost_model.kind == "latency_ms" and cost_model(arch) == predicted


def test_missing_part_and_wrong_space_are_clear_errors(small_table, tmp_path):
    space = bignas_tiny()
    other = _variant(space.smallest(16), kernels=[[5], [3], [3]])
    with pytest.raises(table.LatencyTableError, match=r"no entry for block s1l1 .*\"kernel\":5.*"
                       r"tools/latency_table.py\) --space=bignas_tiny --target=host"):  # fmt: skip
        small_table.predict(space, other)
    with pytest.raises(table.LatencyTableError, match=r"is for \(space, num_classes, "
                       r"stage_shortcuts\) = \('bignas_tiny', 10, True\), not \('bignas_cifar'"):  # fmt: skip
        table.latency_function(small_table.path, bignas_cifar(), 10)
    with pytest.raises(table.LatencyTableError, match="does not exist; build one"):
        table.LatencyTable.load(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text('{"format": 7}')
    with pytest.raises(table.LatencyTableError, match="not a latency table of format 1"):
        table.LatencyTable.load(str(tmp_path / "bad.json"))
    with pytest.raises(table.LatencyTableError, match="measured on host with"):
        table.build_table(space, 10, small_table.path, archs=[other], num_runs=5,
                          log=lambda s: None)  # fmt: skip
    with pytest.raises(table.LatencyTableError, match="not 'host' or 'android:SERIAL'"):
        table.parse_target("phone")


def test_build_resumes_and_adds_only_missing_parts(small_table, tmp_path):
    space = bignas_tiny()
    path = str(tmp_path / "host.json")
    pathlib.Path(path).write_text(pathlib.Path(small_table.path).read_text())
    lines = []
    other = _variant(space.smallest(16), kernels=[[5], [3], [3]])
    grown = table.build_table(space, 10, path, archs=[space.smallest(16), other],
                              calibration_children=1, log=lines.append, **RUNS)  # fmt: skip
    assert lines[0] == f"6 parts wanted, 5 already in {path}"
    assert len(grown) == 6 and grown.overhead_ms == small_table.overhead_ms
    assert grown.correction == small_table.correction  # the same calibration child: kept
    for k, e in small_table.entries.items():
        assert grown.entries[k] == e  # kept as measured
    assert grown.predict(space, other) > 0


def test_end_to_end_cost_and_table_error(small_table, tmp_path):
    space = bignas_tiny()
    arch = space.smallest(16)
    cache = str(tmp_path / "e2e.jsonl")
    e2e = endtoend.EndToEndLatency(space, 10, cache_path=cache, **RUNS)
    ms = e2e(arch)
    assert ms > 0 and e2e(arch) == ms and e2e.kind == "latency_ms"
    again = endtoend.EndToEndLatency(space, 10, cache_path=cache, **RUNS)
    assert again(arch) == ms  # read back, not measured again
    assert len(pathlib.Path(cache).read_text().splitlines()) == 1
    err = endtoend.table_error(small_table, space, [arch, arch], e2e)
    assert err.rows[0][1] == small_table.predict(space, arch) and err.rows[0][2] == ms
    expected = 100 * abs(err.rows[0][1] - ms) / ms
    assert err.median_abs_pct == pytest.approx(expected)


def test_android_table_through_fake_adb(tmp_path, monkeypatch):
    state_path = str(tmp_path / "state.json")
    outputs = {k: (DATA / f"benchmark_model_{k}.txt").read_text() for k in ("us", "ms", "fail")}
    state = fake_adb.default_state(str(tmp_path / "dev"), str(tmp_path / "log"),
                                   str(tmp_path), outputs)  # fmt: skip
    state["behaviour"] = {"null.tflite": "ms"}  # the null model 1.873 ms, every part 2.14987 ms
    fake_adb.install(str(tmp_path / "bin"), state_path, state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(fake_adb.STATE_ENV, state_path)
    binary = tmp_path / "benchmark_model"
    ident = b"\x7fELF\x02\x01\x01\x00" + bytes(8)
    binary.write_bytes(ident + struct.pack("<HH", 3, 183) + bytes(44))
    space = bignas_tiny()
    arch = space.smallest(16)
    path = str(tmp_path / "android.json")
    # One part fails on the phone: the others are kept in the table, a rerun adds it.
    head = parts.child_parts(space, arch, 10)[-1]
    failing = f"part_{hashlib.sha256(head.key_text.encode()).hexdigest()[:16]}.tflite"
    state["behaviour"][failing] = "fail"
    fake_adb.save_state(state_path, state)
    build = dict(target="android:R58M40ABCDE", archs=[arch], benchmark_binary=str(binary),
                 log=lambda s: None, **RUNS)  # fmt: skip
    with pytest.raises(android.AndroidBenchmarkError, match=f"1 of 7 models failed.*{failing}"):
        table.build_table(space, 10, path, **build)
    partial = table.LatencyTable.load(path)
    assert len(partial) == 4 and not partial.complete and head not in partial
    assert partial.overhead_ms == pytest.approx(1.873) and partial.correction == {}
    del state["behaviour"][failing]
    fake_adb.save_state(state_path, state)
    t = table.build_table(space, 10, path, **build)
    assert t.device["model"] == "Pixel 7" and t.settings["statistic"] == "mean"
    assert t.overhead_ms == pytest.approx(1.873) and len(t) == 5 and t.complete
    summed = 1.873 + 5 * (2.14987 - 1.873)
    assert t.correction["children"][0]["table_ms"] == pytest.approx(summed)
    assert t.scale == pytest.approx(2.14987 / summed)  # the whole child, measured
    assert t.predict(space, arch) == pytest.approx(2.14987)
    runs = [c for c in fake_adb.read_log(str(tmp_path / "log")) if c[0] == "#device-argv"
            and c[1].endswith("benchmark_model")]  # fmt: skip
    assert all("--num_runs=3" in r for r in runs)
    assert len(runs) == 8  # null, 5 parts, child; then only the part that had failed


def test_a_held_lock_refuses_the_table_writer(tmp_path):
    space = bignas_tiny()
    path = tmp_path / "tables" / "host.json"
    path.parent.mkdir()
    with fake_adb.held_lock(str(path.parent / wd_lib.LOCK_FILE)) as pid:
        with pytest.raises(lock_lib.WorkdirBusyError, match=f"in use by another run: pid {pid} "):
            table.build_table(space, 10, str(path), archs=[space.smallest(16)],
                              log=lambda s: None, **RUNS)  # fmt: skip
        cmd = [sys.executable, "-m", "tools.latency_table", "--space=bignas_tiny",
               "--num_classes=10", f"--output={path}", "--calibration_children=0"]  # fmt: skip
        bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    [line] = [x for x in bad.stderr.splitlines() if ": error: " in x]
    assert line.startswith("latency_table.py: error: workdir ") and f"pid {pid} on host" in line
    assert "\x1b" not in line
    assert not path.exists()  # nothing measured, nothing written
