"""Section 3.3 of the paper, re-tested: coarse-to-fine selection against random and evolution.

    python -m experiments.search_methods \
        --supernets=/tmp/bignas_ablations/full_s0,/tmp/bignas_ablations/full_s1 \
        --budgets=mflops:3,6,12

Runs `pipelines.search` with each method (the same budgets and flags, about
the same number of evaluated children) on each trained supernet, unless its
`search/selection_METHOD.json` already holds those budgets (a rerun skips
finished searches; an interrupted one resumes from `evaluations.jsonl`).
Writes `--report`: each method's chosen child per supernet and budget, and the
mean test top-1 over supernets.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import children_lib as cl
from tf_bignas.common.files import atomic_write_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SUPERNETS = flags.DEFINE_list("supernets", None, "Trained supernet workdirs (one per seed).")
_BUDGETS = flags.DEFINE_string("budgets", "mflops:3,6,12", "The search budgets.")
_SEARCH_FLAGS = flags.DEFINE_multi_string(
    "search_flag", list(cl.SEARCH_FLAGS), "pipelines.search flags of every method."
)
_REPORT = flags.DEFINE_string(
    "report", os.path.join(ROOT, "experiments", "search_methods.md"), "Markdown report to write."
)


def main(argv: list[str]) -> None:
    del argv
    table = {}
    for supernet in _SUPERNETS.value:
        table[supernet] = {}
        for method in cl.METHODS:
            cl.ensure_search(
                supernet,
                _BUDGETS.value,
                method,
                _SEARCH_FLAGS.value,
                supernet + ".search.log",  # beside the workdir: it holds only the run
            )
            path = os.path.join(supernet, "search", f"selection_{method}.json")
            timing = cl.read_json(cl.search_time_path(supernet, method)) or {}
            table[supernet][method] = {
                "selection": cl.read_json(path),
                "seconds": timing.get("seconds"),
            }
    command = "python -m experiments.search_methods " + " ".join(sys.argv[1:])
    text = cl.search_markdown(table, command)
    # Each supernet's family (every evaluated child: top-1 against MFLOPs), beside the report.
    stem = os.path.splitext(_REPORT.value)[0]
    for supernet in table:
        plot = f"{stem}_{os.path.basename(supernet.rstrip(os.sep))}_pareto.png"
        with open(os.path.join(supernet, "search", "pareto.png"), "rb") as f:
            atomic_write_bytes(plot, f.read())
        text += f"\nFamily of `{supernet}`: [{os.path.basename(plot)}]({os.path.basename(plot)})\n"
    atomic_write_bytes(_REPORT.value, text.encode())
    print(text)


if __name__ == "__main__":
    flags.mark_flags_as_required(["supernets"])
    app.run(main)
