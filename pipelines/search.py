"""Search the best child of a trained supernet under each budget.

    python -m pipelines.search --workdir=workdirs/quickstart --budgets=mflops:1,2,3
    python -m pipelines.search --workdir=DIR --budgets=mflops:250,400,600 --method=evolution
    python -m pipelines.search --workdir=DIR --budgets=params_m:4,6 --config.fine.mutations=40
    python -m pipelines.search --workdir=DIR --budgets=mflops:250,400,600 --shard=0/4  # x4 hosts
    python -m pipelines.search --workdir=DIR --budgets=latency_ms:8,12 --latency_table=host.json
    python -m pipelines.search --workdir=DIR --budgets=latency_ms:0.5,1 --measure_latency
    python -m pipelines.search --workdir=DIR --budgets=mflops:2,4 --rank=int8

Methods: `coarse_to_fine` (the paper's), `random` and `evolution` (baselines
with the same number of evaluated children). Output in WORKDIR/search/:
`evaluations.jsonl` (one line per child; a rerun skips what is there),
`selection.json`, `pareto.png`, `report.md` (methods compared). `--shard=I/N`
evaluates one share of each round; run once more without it to merge and
finish. Options: `--config.KEY=VALUE` over `tf_bignas.search.config`.
`latency_ms` budgets take a latency table (`--latency_table`, built by
`tools/latency_table.py`) or
`--measure_latency` (every candidate converted and timed on this host).
`--rank=int8` re-ranks each budget's best candidates by the accuracy of their
int8 TFLite files and chooses by it (`tf_bignas.latency.int8`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tf_bignas.latency import endtoend, int8, table  # noqa: E402
from tf_bignas.run.workdir import Workdir, open_workdir  # noqa: E402
from tf_bignas.search import config as search_config  # noqa: E402
from tf_bignas.search import parse_budgets, run_search  # noqa: E402
from tf_bignas.search.costs import LATENCY_MS  # noqa: E402
from tf_bignas.search.scoring import ChildScorer  # noqa: E402
from tf_bignas.space import ArchConfig  # noqa: E402
from tools import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training workdir.")
_BUDGETS = flags.DEFINE_string("budgets", None, "KIND:V1,V2,... (mflops, params_m, latency_ms).")
_METHOD = flags.DEFINE_enum("method", None, list(search_config.METHODS), "Overrides config.method.")
_SHARD = flags.DEFINE_string("shard", "", "I/N: evaluate the I-th of N shares (0-based).")
_LATENCY_TABLE = flags.DEFINE_string(
    "latency_table", "", "Latency table (tf_bignas.latency) for latency_ms budgets."
)
_MEASURE_LATENCY = flags.DEFINE_bool(
    "measure_latency", False, "latency_ms budgets: time every candidate's TFLite file on this host."
)
_RANK = flags.DEFINE_enum("rank", "float", ["float", "int8"], "Choose by float or int8 accuracy.")
_INT8_CANDIDATES = flags.DEFINE_integer(
    "int8_candidates", 5, "--rank=int8: best float candidates per budget scored in int8 (0: all)."
)
_CONFIG = config_flags.DEFINE_config_dict(
    "config",
    search_config.default_search_config(),
    "Search options (--config.KEY=VALUE).",
    # An unknown KEY is left to cli.run's flag parsing: one line naming it, exit code 2.
    sys_argv=cli.known_overrides_argv("config", search_config.default_search_config()),
)
flags.mark_flags_as_required(["workdir", "budgets"])


def _shard(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        index, count = (int(t) for t in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"--shard={text!r} must be I/N with 0 <= I < N, e.g. 0/4")
    return index, count


def _latency(path: str, measure: bool, wd: Workdir) -> Callable[[ArchConfig], float] | None:
    if path and measure:
        raise ValueError("give --latency_table or --measure_latency, not both")
    if measure:
        cache = os.path.join(wd.path, "search", "latency_measured.jsonl")
        return endtoend.EndToEndLatency(
            wd.space, wd.num_classes, wd.supernet.stage_shortcuts, cache_path=cache
        )
    if not path:
        return None
    return table.latency_function(path, wd.space, wd.num_classes, wd.supernet.stage_shortcuts)


def _check_latency_model(kind: str, path: str, measure: bool) -> None:
    """Refuses `latency_ms` budgets without a latency model, before the workdir is opened.

    Raises:
        ValueError: Naming --latency_table and --measure_latency.
    """
    if kind == LATENCY_MS and not path and not measure:
        raise ValueError(
            f"{LATENCY_MS} budgets need a latency model: pass --latency_table=FILE (a table "
            "built by python -m tools.latency_table for this run's space) or --measure_latency "
            "(every candidate converted to TFLite and timed on this host)"
        )


def main(argv: list[str]) -> None:
    """Searches, merges shards and reports, as the flags say.

    Args:
        argv: The program name (positional arguments are refused by `cli.run`).
    """
    del argv  # cli.run refuses positional arguments
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    budgets = parse_budgets(_BUDGETS.value)
    _check_latency_model(budgets[0].kind, _LATENCY_TABLE.value, _MEASURE_LATENCY.value)
    shard = _shard(_SHARD.value)
    config = _CONFIG.value
    if _METHOD.value:
        with config.unlocked():
            config.method = _METHOD.value
    wd = open_workdir(_WORKDIR.value)
    out = run_search(
        wd,
        budgets,
        config,
        latency=_latency(_LATENCY_TABLE.value, _MEASURE_LATENCY.value, wd),
        shard=shard,
        log=lambda line: print(line, flush=True),
    )
    print(
        f"{out.method}: {out.num_evaluated} children ({out.newly_evaluated} evaluated now, "
        f"{out.reused} scores reused) in {out.seconds:.1f} s; "
        f"{60 * out.newly_evaluated / max(out.seconds, 1e-9):.1f} children/minute"
    )
    if not out.complete:
        print(
            f"shard {shard[0]}/{shard[1]} done with its share; run without --shard (after every "
            f"shard has finished) to merge and finish: {out.folder}"
        )
        return
    for title, sel in ((f"{out.method} found", out.method_selection),
                       ("selection.json (best of every method run)", out.selection)):  # fmt: skip
        print(f"{title}:")
        for e in sel["budgets"]:
            print(
                f"  {e['budget']}: {e['paper_notation']}  {e['macs'] / 1e6:.2f} MFLOPs "
                f"{e['params'] / 1e6:.3f} M params  {sel['selection_split']} top-1 "
                f"{100 * e['metric']:.2f}%  {sel['test_split']} top-1 "
                f"{100 * e['test_top1']:.2f}%  ({e['method']})"
            )
    print(f"wrote {out.folder}/selection.json, pareto.png, report.md")
    if _RANK.value == "int8":
        scorer = ChildScorer(wd, search_config.resolve_search_config(config, wd.space, wd.config))
        ranking = int8.rank_by_int8(wd, out.folder, scorer, candidates=_INT8_CANDIDATES.value,
                                    log=lambda line: print(line, flush=True))  # fmt: skip
        print("\n".join(int8.summary_lines(ranking)))


if __name__ == "__main__":
    cli.run(main)
