"""Build a latency table: every distinct part of a space's children, measured once.

    python -m tools.latency_table --workdir=workdirs/quickstart --target=host
    python -m tools.latency_table --space=bignas_tiny --num_classes=10 --check_children=24
    python -m tools.latency_table --workdir=DIR --target=android:R58M40ABCDE \
        --benchmark_binary=android_aarch64_benchmark_model --num_threads=4

The table goes to --output (default: WORKDIR/latency/<target>.json with
--workdir, tf_bignas/latency/tables/<target>_<space>.json with --space).
Running again resumes an interrupted build. While it builds, it holds the
lock of the workdir holding the table's folder (the folder itself outside a
workdir): when another run holds it, the program ends with one line naming
that run's pid (exit code 2). --check_children=N measures N random children
end to end (host) and prints the table's error against them. The search takes
it with --latency_table=PATH for latency_ms budgets.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging  # noqa: E402

from tf_bignas.latency import endtoend, table  # noqa: E402
from tf_bignas.space import get_space, space_names  # noqa: E402
from tools.cli import run  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (space, classes).")
_SPACE = flags.DEFINE_enum("space", None, list(space_names()), "A space (instead of --workdir).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs (with --space).")
_TARGET = flags.DEFINE_string("target", "host", "host or android:SERIAL.")
_OUTPUT = flags.DEFINE_string("output", None, "Table file (default: see the module docstring).")
_RESOLUTIONS = flags.DEFINE_list("resolutions", [], "Resolutions to cover (default: all).")
_THREADS = flags.DEFINE_integer("num_threads", 1, "Threads.")
_WARMUP = flags.DEFINE_integer("warmup_runs", 5, "Untimed runs per part.")
_RUNS = flags.DEFINE_integer("num_runs", 50, "Timed runs per part.")
_STATISTIC = flags.DEFINE_enum("statistic", "median", ["median", "min"], "Host: of the runs.")
_CALIBRATION = flags.DEFINE_integer(
    "calibration_children", 6, "Whole children timed to fit the table's scale (0: none)."
)
_BINARY = flags.DEFINE_string("benchmark_binary", None, "benchmark_model for android targets.")
_CHECK = flags.DEFINE_integer("check_children", 0, "Random children to measure end to end.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the checked children.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # the converter's INFO lines
    if bool(_WORKDIR.value) == bool(_SPACE.value):
        raise ValueError("give exactly one of --workdir and --space")
    stage_shortcuts = True
    if _WORKDIR.value:
        from tf_bignas.run.workdir import open_workdir

        wd = open_workdir(_WORKDIR.value, allow_unfinished=True)
        space, num_classes = wd.space, wd.num_classes
        stage_shortcuts = wd.supernet.stage_shortcuts
        default = os.path.join(wd.path, "latency", f"{_TARGET.value.replace(':', '_')}.json")
    else:
        space, num_classes = get_space(_SPACE.value), _NUM_CLASSES.value
        default = table.committed_table_path(_TARGET.value, space.name)
    path = _OUTPUT.value or default
    t = table.build_table(
        space,
        num_classes,
        path,
        target=_TARGET.value,
        stage_shortcuts=stage_shortcuts,
        resolutions=[int(r) for r in _RESOLUTIONS.value] or None,
        threads=_THREADS.value,
        warmup_runs=_WARMUP.value,
        num_runs=_RUNS.value,
        statistic=_STATISTIC.value,
        calibration_children=_CALIBRATION.value,
        benchmark_binary=_BINARY.value,
        log=lambda line: print(line, flush=True),
    )
    print(f"{len(t)} parts, overhead {t.overhead_ms * 1e3:.1f} us, scale {t.scale:.3f}: {path}")
    if _CHECK.value:
        if _TARGET.value != "host":
            raise ValueError("--check_children measures on the host; use --target=host")
        settings = {k: t.settings[k] for k in ("threads", "warmup_runs", "num_runs", "statistic")}
        measure = endtoend.EndToEndLatency(space, num_classes, stage_shortcuts, **settings)
        resolutions = [int(r) for r in _RESOLUTIONS.value] or space.resolutions
        archs = [space.sample((_SEED.value, i), resolutions) for i in range(_CHECK.value)]
        err = endtoend.table_error(t, space, archs, measure)
        for a, p, m in err.rows:
            print(f"{a.to_paper_notation():60s} table {p:8.3f} ms  measured {m:8.3f} ms")
        print(
            f"{len(archs)} children: median |error| {err.median_abs_pct:.1f}%, max "
            f"{err.max_abs_pct:.1f}%, mean signed {err.mean_signed_pct:+.1f}%, "
            f"rank correlation {err.spearman:.3f}"
        )


if __name__ == "__main__":
    run(main)
