"""Table 3 of the paper, re-tested: sliced children against the same children trained alone.

    python -m experiments.from_scratch --supernet=/tmp/bignas_ablations/full_s0 \
        --root=/tmp/bignas_children --budgets=mflops:3,6,12

1. The search (coarse-to-fine, `pipelines.search`, run here if its
   `selection_coarse_to_fine.json` lacks these budgets) picks a small, a
   medium and a large child of the trained supernet `--supernet`.
2. Each child's sliced test top-1 (calibrated BN, no finetuning).
3. With the supernet run's own config (data, augmentation, epochs, batch,
   optimizer, schedule), as plain Keras models (`experiments/children_lib.py`),
   cheapest answer first: each chosen child trained alone on the labels, then
   the largest child trained alone on the labels (the teacher), then (unless
   `--nodistill`) each chosen child on the teacher's soft labels (no
   temperature: the paper's Distill A). The report is rewritten after every
   run, so a stopped run leaves the rows it finished.

Runs resume (each in `ROOT/NAME_sSEED`, checkpointed) and finished ones are
skipped; `--report_only` reports the finished ones and trains nothing. Writes
`--report` (Markdown) and the family plot beside it (.png).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import children_lib as cl
from tf_bignas.common.files import atomic_write_bytes
from tf_bignas.run.config import build_space
from tf_bignas.run.workdir import read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SUPERNET = flags.DEFINE_string("supernet", None, "The trained supernet's workdir.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the runs.")
_BUDGETS = flags.DEFINE_string("budgets", "mflops:3,6,12", "Three budgets: small, medium, large.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the children trained alone.")
_SEARCH_FLAGS = flags.DEFINE_multi_string(
    "search_flag", list(cl.SEARCH_FLAGS), "pipelines.search flags (if it runs here)."
)
_EVALS = flags.DEFINE_integer("evals", 4, "Test evaluations over each training run.")
_EPOCHS = flags.DEFINE_float(
    "epochs", 0.0, "Epochs of each model trained alone; 0: the supernet's."
)
_DISTILL = flags.DEFINE_bool(
    "distill", True, "Also train each child on the teacher's soft labels (Distill A)."
)
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Report the finished runs; train nothing (sliced children are scored)."
)
_REPORT = flags.DEFINE_string(
    "report", os.path.join(ROOT, "experiments", "table3.md"), "Markdown report to write."
)


def _child_run(
    row: dict, targets: str, epochs: float, seed: int, teacher_path: str | None
) -> cl.ChildRun:
    """A chosen child trained alone: on the labels, or on the teacher's soft labels."""
    kind = "scratch" if targets == "labels" else "distill"
    return cl.ChildRun(
        f"{kind}_{row['name']}",
        row["arch"],
        "scratch",
        targets=targets,
        epochs=epochs,
        seed=seed,
        teacher_path=teacher_path,
    )


def _report(rows: list[dict], supernet: str, command: str, epochs: float) -> str:
    """Writes the Markdown report and the family plot of the runs finished so far."""
    rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    text = cl.table3_markdown(rows, supernet, command, epochs)
    atomic_write_bytes(_REPORT.value, text.encode())
    cl.plot_family(
        os.path.splitext(_REPORT.value)[0] + ".png",
        {
            label: [(r["macs"] / 1e6, r[key]["test_top1"] * 100) for r in rows[1:] if key in r]
            for label, key in (
                ("sliced (no finetuning)", "sliced"),
                ("alone, labels", "scratch"),
                ("alone, distilled", "distill"),
            )
        },
        "Children of the supernet vs trained alone",
    )
    return text


def main(argv: list[str]) -> None:
    del argv
    supernet, root, seed = _SUPERNET.value, _ROOT.value, _SEED.value
    os.makedirs(root, exist_ok=True)
    children = cl.ensure_search(
        supernet, _BUDGETS.value, "coarse_to_fine", _SEARCH_FLAGS.value, root + "/search.log"
    )
    if len(children) != len(cl.CHILD_NAMES):
        raise app.UsageError(f"--budgets must name {len(cl.CHILD_NAMES)} budgets")
    config = read_config(supernet)
    epochs = _EPOCHS.value or float(config.train.epochs)
    teacher = cl.ChildRun(
        "teacher", build_space(config).largest(), "scratch", epochs=epochs, seed=seed
    )
    teacher_dir = os.path.join(root, f"teacher_s{seed}")

    def run_or_read(run: cl.ChildRun, folder: str | None = None) -> dict | None:
        folder = folder or os.path.join(root, f"{run.name}_s{seed}")
        if _REPORT_ONLY.value:
            return cl.read_json(os.path.join(folder, cl.RESULTS_FILE))
        return cl.train_child(config, run, folder, evals=_EVALS.value)

    rows = [dict(name="largest (teacher)", budget="-", arch=teacher.arch, macs=None)]
    rows += [
        dict(name=name, budget=child["budget"], arch=child["arch"], macs=child["macs"])
        for name, child in zip(cl.CHILD_NAMES, children)
    ]
    for row in rows:
        row["sliced"] = cl.sliced_top1(supernet, row["arch"], root)
    command = "python -m experiments.from_scratch " + " ".join(sys.argv[1:])
    teacher_path = os.path.join(teacher_dir, cl.MODEL_FILE)
    # The cheapest answer first: the children on labels, then the teacher,
    # then (with --distill) the children on the teacher's soft labels. The
    # report is rewritten after every run, so a stopped run leaves one.
    for row in rows[1:]:
        row["scratch"] = run_or_read(_child_run(row, "labels", epochs, seed, None))
        _report(rows, supernet, command, epochs)
    rows[0]["scratch"] = run_or_read(teacher, teacher_dir)
    _report(rows, supernet, command, epochs)
    if _DISTILL.value:
        for row in rows[1:]:
            run = _child_run(row, "teacher", epochs, seed, teacher_path)
            row["distill"] = run_or_read(run)
            _report(rows, supernet, command, epochs)
    text = _report(rows, supernet, command, epochs)
    print(text)


if __name__ == "__main__":
    flags.mark_flags_as_required(["supernet", "root"])
    app.run(main)
