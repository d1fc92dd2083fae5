"""Table 2 of the paper, re-tested: does finetuning the sliced children help?

    python -m experiments.finetune --supernet=/tmp/bignas_ablations/full_s0 \
        --root=/tmp/bignas_children --budgets=mflops:3,6,12

The search's small, medium and large child (coarse-to-fine, as in
`experiments/from_scratch.py`, which runs the same search) each start from
their sliced weights and calibrated BN statistics and train `--epochs` on the
labels at each constant LR of `--lr_fractions` (fractions of the supernet
run's peak LR; its schedule ended at 0.05), as plain Keras models with the
supernet run's data, batch and optimizer (`experiments/children_lib.py`).
Reports the test top-1 before and after. Runs resume and finished ones are
skipped (`--report_only`: report them, train nothing); writes `--report`
(Markdown).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import children_lib as cl
from tf_bignas.common.files import atomic_write_bytes
from tf_bignas.run.workdir import read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SUPERNET = flags.DEFINE_string("supernet", None, "The trained supernet's workdir.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the runs.")
_BUDGETS = flags.DEFINE_string("budgets", "mflops:3,6,12", "Three budgets: small, medium, large.")
_FRACTIONS = flags.DEFINE_list(
    "lr_fractions", ["0.5", "0.05", "0.005"], "Constant LRs, as fractions of the peak LR."
)
_EPOCHS = flags.DEFINE_float("epochs", 1.0, "Finetuning epochs.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the finetuning data order.")
_SEARCH_FLAGS = flags.DEFINE_multi_string(
    "search_flag", list(cl.SEARCH_FLAGS), "pipelines.search flags (if it runs here)."
)
_EVALS = flags.DEFINE_integer("evals", 2, "Test evaluations over each finetuning run.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Report the finished runs; train nothing (sliced children are scored)."
)
_REPORT = flags.DEFINE_string(
    "report", os.path.join(ROOT, "experiments", "table2.md"), "Markdown report to write."
)


def main(argv: list[str]) -> None:
    del argv
    supernet, root = _SUPERNET.value, _ROOT.value
    fractions = [float(f) for f in _FRACTIONS.value]
    os.makedirs(root, exist_ok=True)
    children = cl.ensure_search(
        supernet, _BUDGETS.value, "coarse_to_fine", _SEARCH_FLAGS.value, root + "/search.log"
    )
    config = read_config(supernet)
    rows = []
    for name, child in zip(cl.CHILD_NAMES, children):
        row = dict(name=name, budget=child["budget"], arch=child["arch"], macs=child["macs"])
        row["sliced"] = cl.sliced_top1(supernet, child["arch"], root)
        row["finetune"] = {}
        for fraction in fractions:
            run = cl.ChildRun(
                f"finetune_{name}_lr{fraction:g}",
                child["arch"],
                "sliced",
                epochs=_EPOCHS.value,
                lr_fraction=fraction,
                seed=_SEED.value,
            )
            folder = os.path.join(root, f"{run.name}_s{_SEED.value}")
            if _REPORT_ONLY.value:
                done = cl.read_json(os.path.join(folder, cl.RESULTS_FILE))
            else:
                done = cl.train_child(
                    config, run, folder, supernet_workdir=supernet, evals=_EVALS.value
                )
            if done is not None:
                row["finetune"][fraction] = done
        rows.append(row)
    command = "python -m experiments.finetune " + " ".join(sys.argv[1:])
    text = cl.table2_markdown(rows, fractions, supernet, command, _EPOCHS.value)
    atomic_write_bytes(_REPORT.value, text.encode())
    print(text)


if __name__ == "__main__":
    flags.mark_flags_as_required(["supernet", "root"])
    app.run(main)
