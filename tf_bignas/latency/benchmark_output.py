"""What TFLite's `benchmark_model` prints, read into numbers (`parse_benchmark_output`).

What the tool prints (its source: `tensorflow/lite/tools/benchmark/benchmark_model.cc`
in TensorFlow, `tflite/tools/benchmark/benchmark_model.cc` in LiteRT, and the
`Stat` classes of `third_party/xla/xla/tsl/util/stats_calculator.h`):

- one statistics line in microseconds for the warmup runs, then one for the
  timed runs (`Stat::OutputToStream`)::

      count=463 first=2122 curr=2154 min=2079 max=2384 avg=2149.87 std=48

  or ``count=50 curr=2101(all same)`` when every run took as long. LiteRT's
  builds keep every run (`StatWithPercentiles`) and append
  `` p5=2085 median=2141 p95=2236``; TensorFlow's builds print no percentile.
  No build prints a 90th percentile or the time of each run, and no flag
  makes it do so (LiteRT's ``--result_file_path`` writes the same mean,
  median, p5 and p95 as a binary proto);
- the summary::

      Inference timings in us: Init: 3281, First inference: 2311, Warmup (avg): 2163.2, Inference (avg): 2149.87

  (some builds print it in milliseconds: ``Init: 2.94 ms`` ... ``Inference
  (avg): 1.873 ms``; both are read);
- memory, where the platform reports it::

      Memory footprint delta from the start of the tool (MB): init=2.58203 overall=3.40234

  (older builds: ``Peak memory footprint (MB): init=... overall=...``) and,
  with ``--report_peak_memory_footprint=true`` (a monitoring thread, which
  the tool warns can disturb the timing)::

      Overall peak memory footprint (MB) via periodic monitoring: 7.50391

Lines may carry an ``INFO: `` prefix (newer builds). Figures the output does
not hold stay None: nothing is estimated.
"""

from __future__ import annotations

import dataclasses
import math
import re

_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_SIGNED = r"(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_AVG = re.compile(r"Inference \(avg\):\s*" + _NUM + r"\s*(ms|us|µs)?")
_INIT = re.compile(r"Init:\s*" + _NUM + r"\s*(ms|us|µs)?")
_UNIT = re.compile(r"timings in (us|ms)")
_STAT_LINE = re.compile(r"\bcount=\d+")
_STAT_TOKEN = re.compile(r"\b(count|first|curr|min|max|avg|std|median|p\d{1,2})=([-+0-9.eE]+|nan)")
_PEAK_LABEL = "Overall peak memory footprint (MB) via periodic monitoring"
_PEAK = re.compile(re.escape(_PEAK_LABEL) + r":\s*" + _SIGNED)
_FOOTPRINT = re.compile(
    r"(Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\):\s*"
    r"init=" + _SIGNED + r"\s+overall=" + _SIGNED
)


@dataclasses.dataclass(frozen=True)
class Timing:
    """What one `benchmark_model` run printed, in milliseconds and megabytes.

    Attributes:
        mean_ms: Mean latency of the timed runs ("Inference (avg)").
        std_ms: Their standard deviation (None when not printed).
        min_ms: Fastest timed run (None when not printed).
        max_ms: Slowest timed run (None when not printed).
        init_ms: Initialisation time (None when not printed).
        runs: Timed runs the tool made (its ``count=``; None when not printed).
        percentiles: {percent: ms} the tool printed for the timed runs (5,
            50 and 95 in LiteRT's builds; empty in TensorFlow's).
        memory_mb: Peak memory by periodic monitoring when printed, else the
            overall memory footprint delta; None when the tool printed neither.
        memory_source: The line `memory_mb` comes from (None with it).
    """

    mean_ms: float
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    init_ms: float | None = None
    runs: int | None = None
    percentiles: dict[int, float] = dataclasses.field(default_factory=dict)
    memory_mb: float | None = None
    memory_source: str | None = None

    @property
    def median_ms(self) -> float | None:
        """The median of the timed runs, where the tool printed it."""
        return self.percentiles.get(50)

    @property
    def p90_ms(self) -> float | None:
        """The 90th percentile, where the tool printed it (no known build does)."""
        return self.percentiles.get(90)

    def statistic_note(self, requested_runs: int | None = None) -> str:
        """Where each statistic comes from and why a missing one is None.

        Args:
            requested_runs: `--num_runs`, named when the tool printed no count.

        Returns:
            One line for the card and the CSV.
        """
        if self.runs is not None:
            over = f"{self.runs} timed runs"
        elif requested_runs is not None:
            over = f"at least {requested_runs} timed runs (--num_runs; no count printed)"
        else:
            over = "the timed runs"
        notes = [f"mean_ms is benchmark_model's 'Inference (avg)' over {over}"]
        if self.percentiles:
            names = ", ".join("median" if p == 50 else f"p{p}" for p in sorted(self.percentiles))
            notes.append(f"percentiles as benchmark_model printed them ({names})")
            if self.p90_ms is None:
                notes.append("it prints no 90th percentile: p90_ms is None")
        else:
            notes.append(
                "this benchmark_model build prints no percentiles: median_ms and p90_ms are None"
            )
        if self.memory_source is None:
            notes.append("it printed no memory figure: memory_mb is None")
        else:
            notes.append(f"memory_mb from '{self.memory_source}'")
        return "; ".join(notes)


def _ms_per_unit(unit: str | None, line: str) -> float:
    """Milliseconds per printed unit: the unit after the number, else the line's header."""
    if unit is None:
        header = _UNIT.search(line)
        unit = header.group(1) if header else "us"
    return 1.0 if unit == "ms" else 1e-3


def _stat_tokens(line: str) -> dict[str, float]:
    """The name=value figures of a statistics line (values that are not numbers left out)."""
    out = {}
    for name, text in _STAT_TOKEN.findall(line):
        try:
            value = float(text)
        except ValueError:
            continue
        if math.isfinite(value):
            out[name] = value
    return out


def _timed_stats(lines_before: list[str], mean_ms: float) -> dict[str, float] | None:
    """The statistics line of the timed runs (microseconds), if it agrees with the summary.

    It is the last ``count=`` line before the summary (the warmup's comes
    earlier); one whose mean is not the summary's is not taken.
    """
    for line in reversed(lines_before):
        if not _STAT_LINE.search(line):
            continue
        tokens = _stat_tokens(line)
        if "avg" not in tokens and "curr" in tokens:  # "count=N curr=X(all same)"
            same = tokens["curr"]
            tokens.update(avg=same, min=same, max=same, std=0.0)
        if "avg" in tokens and math.isclose(
            tokens["avg"] * 1e-3, mean_ms, rel_tol=0.01, abs_tol=1e-3
        ):
            return tokens
        return None
    return None


def _percentiles(tokens: dict[str, float]) -> dict[int, float]:
    out = {}
    for name, value in tokens.items():
        if name == "median":
            out[50] = value * 1e-3
        elif name.startswith("p") and name[1:].isdigit():
            out[int(name[1:])] = value * 1e-3
    return out


def _memory(lines: list[str]) -> tuple[float | None, str | None]:
    """(MB, the line's label): the monitored peak if printed, else the overall footprint."""
    peak = footprint = None
    for line in lines:
        m = _PEAK.search(line)
        if m:
            peak = float(m.group(1))
        f = _FOOTPRINT.search(line)
        if f:
            footprint = (float(f.group(3)), f"{f.group(1)} (MB): overall")
    if peak is not None and peak > 0:
        return peak, _PEAK_LABEL
    if footprint is not None:
        return footprint
    return None, None


def parse_benchmark_output(text: str) -> Timing:
    """Reads latency, its statistics and memory out of `benchmark_model`'s output.

    Both summary formats are understood: the classic ``Inference timings in
    us: Init: 3281, First inference: 40232, Warmup (avg): 28385.3, Inference
    (avg): 27489.8`` (microseconds, with a ``count=... min=... max=...
    avg=... std=...`` line before it, and ``p5=... median=... p95=...`` in
    LiteRT's builds) and the shorter ``Inference (avg): 27.49 ms``. See the
    module docstring for every line read.

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
    mean = float(m.group(1)) * _ms_per_unit(m.group(2), line)
    init = None
    for candidate in (line, *reversed(lines[:i])):
        im = _INIT.search(candidate)
        if im:
            init = float(im.group(1)) * _ms_per_unit(im.group(2), candidate)
            break
    stats = _timed_stats(lines[:i], mean) or {}
    ms = {k: stats[k] * 1e-3 if k in stats else None for k in ("std", "min", "max")}
    memory_mb, memory_source = _memory(lines)
    return Timing(
        mean_ms=mean,
        std_ms=ms["std"],
        min_ms=ms["min"],
        max_ms=ms["max"],
        init_ms=init,
        runs=int(stats["count"]) if "count" in stats else None,
        percentiles=_percentiles(stats),
        memory_mb=memory_mb,
        memory_source=memory_source,
    )
