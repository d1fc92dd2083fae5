"""Latency tables: every distinct part of a space measured once, summed per child.

A table belongs to one target ("host": ai-edge-litert on this machine, or
"android:SERIAL": TFLite's `benchmark_model` on a phone through adb) and one
space with one number of classes. It is a JSON data file:

    {"format": 1, "target": "host", "space": "bignas_tiny", "num_classes": 10,
     "stage_shortcuts": true, "overhead_ms": 0.0004,
     "settings": {"threads": 1, "warmup_runs": 5, "num_runs": 50, "statistic": "median"},
     "device": {...}, "complete": true,
     "correction": {"scale": 1.2, "children": [{"paper_notation": ..., "table_ms": ...,
                                                "measured_ms": ...}, ...]},
     "entries": [{"key": {"part": "block", "in_res": 16, ...}, "ms": 0.003, "raw_ms": 0.0034},
                 ...]}

`raw_ms` is what the part's own model measured; `ms` is that minus
`overhead_ms`, the cost of invoking a model that does nearly nothing. A
child's latency is `scale * (overhead_ms + sum(ms of its parts))`
(`LatencyTable.predict`), where `scale` is fitted on a few whole children
timed end to end (parts timed alone run with warm caches and miss some of a
whole network's time). A part the table lacks is an error that names the part
and says how to add it. `build_table` measures what a table is missing,
saving progress as it goes, so an interrupted build resumes; it holds the
workdir lock of the table's folder while it writes (`tf_bignas.run.lock`).
Android tables hold `benchmark_model`'s mean ("statistic": "mean"): the
median is printed by LiteRT's builds only, and no build prints a 90th
percentile (see `tf_bignas.latency.benchmark_output`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json
from tf_bignas.latency import android_results
from tf_bignas.latency import host as host_lib
from tf_bignas.latency.parts import (
    Part,
    child_parts,
    key_text,
    part_model,
    space_parts,
    unique_parts,
)
from tf_bignas.model.slicing import build_child_model
from tf_bignas.space import ArchConfig, SearchSpace

TABLE_FORMAT = 1
TABLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables")


class LatencyTableError(ValueError):
    """A latency table is unreadable, for another space, or lacks a part."""


def committed_table_path(target: str, space_name: str) -> str:
    """Where a committed table lives: tf_bignas/latency/tables/<target>_<space>.json."""
    return os.path.join(TABLES_DIR, f"{target.replace(':', '_')}_{space_name}.json")


def parse_target(target: str) -> tuple[str, str | None]:
    """Splits "host" or "android:SERIAL" into (kind, serial).

    Raises:
        LatencyTableError: For anything else.
    """
    if target == "host":
        return "host", None
    kind, sep, serial = target.partition(":")
    if kind == "android" and sep and serial:
        return "android", serial
    raise LatencyTableError(f"target {target!r} is not 'host' or 'android:SERIAL'")


@dataclasses.dataclass
class LatencyTable:
    """Measured latency of every part of a space's children on one target.

    Attributes:
        target: "host" or "android:SERIAL".
        space: The space's name.
        num_classes: Classifier outputs of the measured heads.
        stage_shortcuts: Whether the measured blocks had stage-transition shortcuts.
        overhead_ms: Cost of one invocation of a model that does nearly nothing.
        settings: How the parts were measured (threads, runs, ...).
        device: What they were measured on.
        entries: {key text: {"key": key, "ms": net ms, "raw_ms": measured ms}}.
        complete: Whether every part the build was asked for is measured.
        correction: {"scale": s, "children": [...]}: whole children timed end to
            end against the table's sum, and the median ratio (see `build_table`).
        path: The file it was read from or written to (None: in memory).
    """

    target: str
    space: str
    num_classes: int
    stage_shortcuts: bool
    overhead_ms: float
    settings: dict[str, Any]
    device: dict[str, Any]
    entries: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    complete: bool = False
    correction: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, part: Part) -> bool:
        return part.key_text in self.entries

    def part_ms(self, part: Part) -> float:
        """The net latency of one part.

        Raises:
            LatencyTableError: If the table lacks it.
        """
        entry = self.entries.get(part.key_text)
        if entry is None:
            where = f" ({self.path})" if self.path else ""
            raise LatencyTableError(
                f"the {self.target} latency table{where} has no entry for {part.kind} "
                f"{part.label} {part.key_text}: it holds {len(self.entries)} parts of space "
                f"{self.space!r}; add the missing parts with the latency-table tool "
                f"(tools/latency_table.py) --space={self.space} --target={self.target} "
                f"--output={self.path or 'TABLE'}: it resumes and adds them"
            )
        return float(entry["ms"])

    def check_compatible(self, space: SearchSpace, num_classes: int, stage_shortcuts: bool) -> None:
        """Checks that the table was measured for this space and head.

        Raises:
            LatencyTableError: If not.
        """
        wanted = (space.name, num_classes, stage_shortcuts)
        have = (self.space, self.num_classes, self.stage_shortcuts)
        if wanted != have:
            raise LatencyTableError(
                f"the latency table{f' {self.path}' if self.path else ''} is for (space, "
                f"num_classes, stage_shortcuts) = {have}, not {wanted}; build one with the "
                f"latency-table tool (tools/latency_table.py) --space={space.name} "
                f"--num_classes={num_classes}"
            )

    def breakdown(self, space: SearchSpace, arch: ArchConfig) -> list[tuple[Part, float]]:
        """Each part of a child with its net latency, in execution order."""
        self.check_compatible(space, self.num_classes, self.stage_shortcuts)
        parts = child_parts(space, arch, self.num_classes, self.stage_shortcuts)
        return [(p, self.part_ms(p)) for p in parts]

    def predict(self, space: SearchSpace, arch: ArchConfig) -> float:
        """A child's latency in ms: `scale` x (the invocation overhead plus its parts).

        Raises:
            LatencyTableError: If a part is missing or the table is for another space.
            InvalidArchError: If the arch is not in the space.
        """
        return self.scale * (self.overhead_ms + sum(ms for _, ms in self.breakdown(space, arch)))

    @property
    def scale(self) -> float:
        """The factor fitted on whole children (1 before the table is complete)."""
        return float(self.correction.get("scale", 1.0))

    def to_json(self) -> dict[str, Any]:
        """The file's content (entries sorted by key, so files diff well)."""
        return {
            "format": TABLE_FORMAT,
            "target": self.target,
            "space": self.space,
            "num_classes": self.num_classes,
            "stage_shortcuts": self.stage_shortcuts,
            "overhead_ms": self.overhead_ms,
            "settings": self.settings,
            "device": self.device,
            "complete": self.complete,
            "correction": self.correction,
            "entries": [self.entries[k] for k in sorted(self.entries)],
        }

    def save(self, path: str | None = None) -> str:
        """Writes the table atomically (to `path`, else where it came from)."""
        path = path or self.path
        if not path:
            raise ValueError("no path to save the latency table to")
        atomic_write_json(path, self.to_json())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str) -> LatencyTable:
        """Reads a table file.

        Raises:
            LatencyTableError: If it is missing, not JSON, or not a table.
        """
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as e:
            raise LatencyTableError(
                f"latency table {path!r} does not exist; build one with the "
                "latency-table tool (tools/latency_table.py) --space=NAME --output=PATH"
            ) from e
        except (OSError, json.JSONDecodeError) as e:
            raise LatencyTableError(f"cannot read latency table {path!r}: {e}") from e
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise LatencyTableError(
                f"{path!r} is not a latency table of format {TABLE_FORMAT} "
                f"(found format {data.get('format') if isinstance(data, dict) else None!r})"
            )
        try:
            entries = {key_text(e["key"]): e for e in data["entries"]}
            return cls(
                target=data["target"],
                space=data["space"],
                num_classes=int(data["num_classes"]),
                stage_shortcuts=bool(data["stage_shortcuts"]),
                overhead_ms=float(data["overhead_ms"]),
                settings=dict(data["settings"]),
                device=dict(data["device"]),
                entries=entries,
                complete=bool(data.get("complete", False)),
                correction=dict(data.get("correction", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LatencyTableError(f"latency table {path!r} lacks or mangles a field: {e}") from e


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def calibration_archs(
    space: SearchSpace, count: int, resolutions: Sequence[int] | None = None
) -> list[ArchConfig]:
    """The children a table's scale is fitted on: the extremes, then random ones.

    Args:
        space: The search space.
        count: How many.
        resolutions: Resolutions to draw from (default: all of the space's).

    Returns:
        The smallest child at the lowest resolution, the largest at the
        highest, then children drawn with seeds ("calibration", i).
    """
    res = tuple(resolutions or space.resolutions)
    out = [space.smallest(min(res)), space.largest(max(res))]
    i = 0
    while len(out) < count and i < 100 * count:
        arch = space.sample((7919, i), res)
        if arch not in out:
            out.append(arch)
        i += 1
    return out[:count]


def build_table(
    space: SearchSpace,
    num_classes: int,
    path: str,
    target: str = "host",
    stage_shortcuts: bool = True,
    resolutions: Sequence[int] | None = None,
    archs: Sequence[ArchConfig] | None = None,
    threads: int = 1,
    warmup_runs: int = 5,
    num_runs: int = 50,
    statistic: str = "median",
    calibration_children: int = 6,
    benchmark_binary: str | None = None,
    log: Callable[[str], None] = print,
) -> LatencyTable:
    """Measures every part a table at `path` still lacks, and saves it.

    The parts are those of every child of the space (at `resolutions`), or
    only those of `archs` when given. Each part becomes its own tiny TFLite
    model, timed on the target (on the host one by one, the table saved every
    few parts; on Android all at once by
    `tf_bignas.latency.android.benchmark_android`, from files in
    `<path>.parts/`, with its own resumable CSV there). Running again resumes.

    Parts measured alone run with warm caches and without their neighbours,
    so their sum misses part of a whole child's time. Once the table is
    complete, `calibration_children` whole children (the first of `archs`, or
    `calibration_archs`) are timed end to end the same way and the table's
    `scale` (the median of measured / summed) corrects every prediction.

    The build holds the lock of the workdir holding the table's folder (the
    folder itself outside a workdir) while it measures and writes.

    Args:
        space: The search space.
        num_classes: Classifier outputs.
        path: The table file (read first if it exists).
        target: "host" or "android:SERIAL".
        stage_shortcuts: Whether stage transitions have shortcuts.
        resolutions: Resolutions to cover (default: all of the space's).
        archs: Only the parts of these children (default: every child).
        threads: Threads (host interpreter or `--num_threads`).
        warmup_runs: Untimed runs per model.
        num_runs: Timed runs per model.
        statistic: Host tables: "median" or "min" of the timed runs (the
            minimum is steadier on a busy machine). Android tables use the mean
            `benchmark_model` prints.
        calibration_children: Whole children timed to fit the scale (0: scale 1).
        benchmark_binary: `benchmark_model` for the phone (android targets).
        log: Progress lines.

    Returns:
        The table.

    Raises:
        LatencyTableError: If the existing file was measured otherwise.
        WorkdirBusyError: If another run holds the lock (the message names its pid).
        ValueError: If an android target has no binary.
    """
    kind, _ = parse_target(target)
    if kind == "android" and not benchmark_binary:
        raise ValueError("an android latency table needs --benchmark_binary (benchmark_model)")
    if kind == "host" and statistic not in host_lib.STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not one of {host_lib.STATISTICS}")
    settings = {
        "threads": threads,
        "warmup_runs": warmup_runs,
        "num_runs": num_runs,
        "statistic": statistic if kind == "host" else "mean",
    }
    if archs:
        wanted = unique_parts(child_parts(space, a, num_classes, stage_shortcuts) for a in archs)
        calibration = list(archs)[:calibration_children]
    else:
        wanted = space_parts(space, num_classes, stage_shortcuts, resolutions)
        calibration = calibration_archs(space, calibration_children, resolutions)
    folder = os.path.dirname(os.path.abspath(path))
    with android_results.locked(folder, log):
        table = _open_table(space, num_classes, stage_shortcuts, path, target, settings)
        return _build(table, space, wanted, calibration, benchmark_binary, log)


def _open_table(
    space: SearchSpace,
    num_classes: int,
    stage_shortcuts: bool,
    path: str,
    target: str,
    settings: dict[str, Any],
) -> LatencyTable:
    """The table at `path` (checked against the request), or a new empty one."""
    if not os.path.exists(path):
        kind, serial = parse_target(target)
        device = (
            host_lib.host_description(settings["threads"]) if kind == "host" else {"serial": serial}
        )
        return LatencyTable(target, space.name, num_classes, stage_shortcuts, 0.0, settings,
                            device, path=path)  # fmt: skip
    table = LatencyTable.load(path)
    table.check_compatible(space, num_classes, stage_shortcuts)
    if table.target != target or table.settings != settings:
        raise LatencyTableError(
            f"{path} was measured on {table.target} with {table.settings}, not on {target} "
            f"with {settings}; choose another --output or the same settings"
        )
    return table


def _build(
    table: LatencyTable,
    space: SearchSpace,
    wanted: dict[str, Part],
    calibration: list[ArchConfig],
    benchmark_binary: str | None,
    log: Callable[[str], None],
) -> LatencyTable:
    """Measures what `table` lacks of `wanted`, fits its scale, saves it (see `build_table`)."""
    num_classes, stage_shortcuts = table.num_classes, table.stage_shortcuts
    todo = [p for k, p in wanted.items() if k not in table.entries]
    log(f"{len(wanted)} parts wanted, {len(wanted) - len(todo)} already in {table.path}")
    models: dict[str, Callable[[], bytes]] = {}
    if not table.entries:  # a resumed build keeps the overhead its first parts were netted of
        models["null"] = lambda: host_lib.to_tflite(host_lib.null_model())
    for part in todo:
        models[f"part_{_digest(part.key_text)}"] = lambda part=part: host_lib.to_tflite(
            part_model(part)
        )
    # Measured parts never change, so the scale is refitted only on other children.
    fitted = {c["key"] for c in table.correction.get("children", [])}
    refit = fitted != {a.key for a in calibration}
    if refit:
        for a in calibration:
            models[f"child_{_digest(a.key)}"] = lambda a=a: host_lib.to_tflite(
                build_child_model(space, a, num_classes, stage_shortcuts=stage_shortcuts)
            )
    parts = {f"part_{_digest(p.key_text)}": p for p in todo}

    def record(name: str, raw_ms: float) -> None:
        if name == "null":
            _set_overhead(table, raw_ms)
        elif name in parts:
            _add(table, parts[name], raw_ms)

    _, serial = parse_target(table.target)
    measured = _measure(table, models, serial, benchmark_binary, record, log)
    table.complete = all(k in table.entries for k in wanted)
    if refit and table.complete:
        table.correction = _fit_scale(table, space, calibration, measured)
        log(f"scale {table.correction['scale']:.3f} from {len(calibration)} whole children")
    table.device["measured_at"] = table.device.get("measured_at") or _now()
    table.save()
    return table


def _fit_scale(
    table: LatencyTable,
    space: SearchSpace,
    calibration: Sequence[ArchConfig],
    measured: dict[str, float],
) -> dict[str, Any]:
    children = []
    for a in calibration:
        summed = table.overhead_ms + sum(ms for _, ms in table.breakdown(space, a))
        ms = measured[f"child_{_digest(a.key)}"]
        children.append({"key": a.key, "paper_notation": a.to_paper_notation(),
                         "table_ms": summed, "measured_ms": ms})  # fmt: skip
    ratios = [c["measured_ms"] / c["table_ms"] for c in children if c["table_ms"] > 0]
    return {"scale": statistics.median(ratios) if ratios else 1.0, "children": children}


def _set_overhead(table: LatencyTable, raw_ms: float) -> None:
    table.overhead_ms = raw_ms
    for e in table.entries.values():
        e["ms"] = max(0.0, e["raw_ms"] - raw_ms)


def _add(table: LatencyTable, part: Part, raw_ms: float) -> None:
    table.entries[part.key_text] = {
        "key": part.key,
        "raw_ms": raw_ms,
        "ms": max(0.0, raw_ms - table.overhead_ms),
    }


def _measure(
    table: LatencyTable,
    models: dict[str, Callable[[], bytes]],
    serial: str | None,
    binary: str | None,
    record: Callable[[str, float], None],
    log: Callable[[str], None],
) -> dict[str, float]:
    """Times named models on the table's target, calling `record(name, ms)` for each."""
    s = table.settings
    out: dict[str, float] = {}
    if not models:
        return out
    if table.target == "host":
        runs = dict(threads=s["threads"], warmup_runs=s["warmup_runs"], num_runs=s["num_runs"])
        for i, (name, make) in enumerate(models.items()):
            out[name] = host_lib.measure_tflite(make(), **runs).value(s["statistic"])
            record(name, out[name])
            if (i + 1) % 10 == 0 or i + 1 == len(models):
                log(f"  {i + 1}/{len(models)} models measured")
                table.save()
        return out

    from tf_bignas.latency import android

    folder = f"{table.path}.parts"
    for i, (name, make) in enumerate(models.items()):
        file = os.path.join(folder, f"{name}.tflite")
        if not os.path.exists(file):
            atomic_write_bytes(file, make())
        if (i + 1) % 10 == 0:
            log(f"  {i + 1}/{len(models)} models written to {folder}")
    options = android.BenchmarkOptions(
        num_threads=s["threads"], warmup_runs=s["warmup_runs"], num_runs=s["num_runs"]
    )
    failure = None
    try:
        report = android.benchmark_android(folder, binary, serial=serial, options=options, log=log)
    except android.AndroidBenchmarkError as e:  # keep what was measured, then report it
        if e.report is None:
            raise
        report, failure = e.report, e
    d = report.device
    table.device = {"serial": d.serial, "model": d.model, "android": d.android_version,
                    "abi": d.abi}  # fmt: skip
    for row in android_results.read_csv(report.csv_path):
        name = row["model"].removesuffix(".tflite")
        same = all(row[k] == v for k, v in options.csv_values().items())
        if name in models and row["status"] == "ok" and row["serial"] == d.serial and same:
            out[name] = float(row["mean_ms"])
    if "null" in out:  # the overhead first: the parts are netted of it
        record("null", out["null"])
    for name, ms in out.items():
        if name != "null":
            record(name, ms)
    if failure is not None:
        table.save()
        raise failure
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_for(
    space: SearchSpace, num_classes: int, stage_shortcuts: bool, path: str
) -> LatencyTable:
    """Reads a table and checks that it fits a space.

    Raises:
        LatencyTableError: If it is unreadable or for another space.
    """
    table = LatencyTable.load(path)
    table.check_compatible(space, num_classes, stage_shortcuts)
    return table


class TableLatency:
    """A child's latency from a table, as the search's `latency_ms` cost model.

    Args:
        table: The table (checked against the space).
        space: The search space.

    Attributes:
        kind: "latency_ms" (the budget kind it answers).
    """

    kind = "latency_ms"

    def __init__(self, table: LatencyTable, space: SearchSpace) -> None:
        table.check_compatible(space, table.num_classes, table.stage_shortcuts)
        self.table, self.space = table, space

    def __call__(self, arch: ArchConfig) -> float:
        return self.table.predict(self.space, arch)


def latency_function(
    path: str, space: SearchSpace, num_classes: int, stage_shortcuts: bool = True
) -> TableLatency:
    """The `latency_ms` cost model of a table file, for a space and head.

    Args:
        path: The table file.
        space: The search space.
        num_classes: Classifier outputs.
        stage_shortcuts: Whether stage transitions have shortcuts.

    Returns:
        A callable arch -> ms with `kind = "latency_ms"`.

    Raises:
        LatencyTableError: If the table is unreadable or for another space or head.
    """
    return TableLatency(load_for(space, num_classes, stage_shortcuts, path), space)
