"""End-to-end latency of whole children on the host, and a table's error against it.

`EndToEndLatency` builds a child (`build_child_model`, fresh weights: latency
does not depend on them), converts it to float32 TFLite and times it with
ai-edge-litert. It is the search's `latency_ms` cost model when the search
measures every candidate instead of looking it up in a table; measurements
are appended to a JSON-lines cache file, so a resumed search does not measure
a child twice. `table_error(table, space, archs)` compares a table's
predictions with end-to-end measurements.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Callable, Sequence

from tf_bignas.latency import host as host_lib
from tf_bignas.latency.table import LatencyTable
from tf_bignas.model.slicing import build_child_model
from tf_bignas.space import ArchConfig, SearchSpace


class EndToEndLatency:
    """Measures a child's latency end to end on the host (a `latency_ms` cost model).

    Args:
        space: The search space.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether stage transitions have shortcuts.
        threads: Interpreter threads.
        warmup_runs: Untimed invocations per child.
        num_runs: Timed invocations per child.
        statistic: "median" or "min" of the timed invocations.
        cache_path: JSON-lines file of earlier measurements (read, then appended to).

    Attributes:
        kind: "latency_ms".
    """

    kind = "latency_ms"

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        stage_shortcuts: bool = True,
        threads: int = 1,
        warmup_runs: int = 5,
        num_runs: int = 50,
        statistic: str = "median",
        cache_path: str | None = None,
    ) -> None:
        self.space, self.num_classes, self.stage_shortcuts = space, num_classes, stage_shortcuts
        if statistic not in host_lib.STATISTICS:
            raise ValueError(f"statistic {statistic!r} is not one of {host_lib.STATISTICS}")
        self.statistic = statistic
        self.settings = {"threads": threads, "warmup_runs": warmup_runs, "num_runs": num_runs}
        self.cache_path = cache_path
        self._ms: dict[str, float] = {}
        if cache_path and os.path.isfile(cache_path):
            with open(cache_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a crash: measured again
                    if rec.get("settings") == self.settings and rec.get("space") == space.name:
                        self._ms[rec["key"]] = float(rec[f"{statistic}_ms"])

    def measure(self, arch: ArchConfig) -> host_lib.HostTiming:
        """Builds, converts and times one child (no cache)."""
        model = build_child_model(
            self.space, arch, self.num_classes, stage_shortcuts=self.stage_shortcuts
        )
        return host_lib.measure_tflite(host_lib.to_tflite(model), **self.settings)

    def __call__(self, arch: ArchConfig) -> float:
        key = arch.key
        if key not in self._ms:
            timing = self.measure(arch)
            self._ms[key] = timing.value(self.statistic)
            if self.cache_path:
                os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
                line = json.dumps({"key": key, "space": self.space.name, "arch": arch.to_dict(),
                                   "median_ms": timing.median_ms, "min_ms": timing.min_ms,
                                   "settings": self.settings})  # fmt: skip
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        return self._ms[key]


@dataclasses.dataclass(frozen=True)
class TableError:
    """A table's predictions against end-to-end measurements.

    Attributes:
        rows: (arch, predicted ms, measured ms) per child.
        median_abs_pct: Median of |predicted - measured| / measured, in percent.
        max_abs_pct: The largest of those.
        mean_signed_pct: Mean of (predicted - measured) / measured, in percent (the bias).
        spearman: Rank correlation of predicted and measured latency.
    """

    rows: tuple[tuple[ArchConfig, float, float], ...]
    median_abs_pct: float
    max_abs_pct: float
    mean_signed_pct: float
    spearman: float


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return ranks


def table_error(
    table: LatencyTable,
    space: SearchSpace,
    archs: Sequence[ArchConfig],
    measure: Callable[[ArchConfig], float],
) -> TableError:
    """Compares a table's predictions with measurements of whole children.

    Args:
        table: The table.
        space: The search space.
        archs: The children (at least 2).
        measure: End-to-end latency in ms (e.g. an `EndToEndLatency`).

    Returns:
        The errors.
    """
    rows = tuple((a, table.predict(space, a), measure(a)) for a in archs)
    rel = [(p - m) / m for _, p, m in rows]
    pred, meas = [p for _, p, _ in rows], [m for _, _, m in rows]
    rp, rm = _ranks(pred), _ranks(meas)
    spearman = statistics.correlation(rp, rm) if len(rows) > 1 else 1.0
    return TableError(
        rows=rows,
        median_abs_pct=100 * statistics.median(abs(r) for r in rel),
        max_abs_pct=100 * max(abs(r) for r in rel),
        mean_signed_pct=100 * statistics.fmean(rel),
        spearman=spearman,
    )
