"""Tests of reading `benchmark_model`'s output (tf_bignas.latency.benchmark_output).

The samples: tests/testdata/android (a TensorFlow build's classic output in
microseconds, a shorter output in milliseconds, a failure) and
`fake_adb.LITERT_OUTPUT`, a LiteRT build's output with percentiles, written
line for line as google-ai-edge/LiteRT tflite/tools/benchmark/benchmark_model.cc
and tensorflow/tensorflow third_party/xla/xla/tsl/util/stats_calculator.h
print it.
"""

from __future__ import annotations

import pathlib

import fake_adb
import pytest

from tf_bignas.latency import benchmark_output

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "testdata" / "android"
parse = benchmark_output.parse_benchmark_output


def test_classic_and_short_outputs():
    classic = parse((DATA / "benchmark_model_us.txt").read_text())
    assert classic.mean_ms == pytest.approx(2.14987) and classic.init_ms == pytest.approx(3.281)
    assert (classic.min_ms, classic.max_ms, classic.std_ms) == pytest.approx((2.079, 2.384, 0.048))
    assert classic.runs == 463 and classic.percentiles == {}
    assert classic.median_ms is None and classic.p90_ms is None  # this build prints none
    assert classic.memory_mb == pytest.approx(3.40234)
    assert "prints no percentiles: median_ms and p90_ms are None" in classic.statistic_note()
    short = parse((DATA / "benchmark_model_ms.txt").read_text())
    assert short.mean_ms == pytest.approx(1.873) and short.init_ms == pytest.approx(2.94)
    assert short.std_ms is None and short.runs is None and short.memory_mb == pytest.approx(3.17)
    assert "at least 50 timed runs (--num_runs" in short.statistic_note(50)
    assert parse("Inference (avg): 12.5 ms").mean_ms == 12.5
    assert parse("Inference (avg): 12.5 ms").memory_mb is None
    assert "memory_mb is None" in parse("Inference (avg): 12.5 ms").statistic_note()
    with pytest.raises(ValueError, match="no 'Inference \\(avg\\)' line"):
        parse((DATA / "benchmark_model_fail.txt").read_text())


def test_litert_percentiles_and_memory():
    timing = parse(fake_adb.LITERT_OUTPUT.replace("GRAPH", "/data/local/tmp/m.tflite"))
    assert timing.mean_ms == pytest.approx(1.5596) and timing.init_ms == pytest.approx(4.117)
    assert timing.runs == 641  # the timed runs' line, not the warmup's (count=312)
    assert (timing.min_ms, timing.max_ms, timing.std_ms) == pytest.approx((1.498, 2.29, 0.061))
    assert timing.median_ms == pytest.approx(1.541)
    assert timing.percentiles == pytest.approx({5: 1.506, 50: 1.541, 95: 1.671})
    assert timing.p90_ms is None  # no build prints it: not estimated
    assert timing.memory_mb == pytest.approx(3.8125)
    assert timing.memory_source == "Memory footprint delta from the start of the tool (MB): overall"
    note = timing.statistic_note(50)
    assert "over 641 timed runs" in note and "(p5, median, p95)" in note
    assert "no 90th percentile: p90_ms is None" in note
    # --report_peak_memory_footprint=true adds the monitored peak, which is preferred.
    peak = "INFO: Overall peak memory footprint (MB) via periodic monitoring: 7.50391\n"
    with_peak = parse(fake_adb.LITERT_OUTPUT + peak)
    assert with_peak.memory_mb == pytest.approx(7.50391)
    assert with_peak.memory_source.startswith("Overall peak memory footprint")


def test_all_same_runs_older_memory_line_and_a_stat_line_of_other_runs():
    same = parse(
        "count=50 curr=2101(all same) p5=2101 median=2101 p95=2101\n\n"
        "Inference timings in us: Init: 900, First inference: 2400, Warmup (avg): 2300, "
        "Inference (avg): 2101\n"
        "Peak memory footprint (MB): init=1.5 overall=2.25\n"
    )
    assert (same.mean_ms, same.min_ms, same.max_ms, same.std_ms) == pytest.approx(
        (2.101, 2.101, 2.101, 0.0)
    )
    assert same.median_ms == pytest.approx(2.101) and same.memory_mb == pytest.approx(2.25)
    # The only count= line is the warmup's (its mean is not the summary's): not taken.
    warmup_only = parse(
        "count=5 first=4000 curr=2500 min=2400 max=4000 avg=2900 std=500\n"
        "Inference timings in us: Init: 900, First inference: 4000, Warmup (avg): 2900, "
        "Inference (avg): 2101\n"
    )
    assert warmup_only.mean_ms == pytest.approx(2.101)
    assert warmup_only.min_ms is None and warmup_only.runs is None
