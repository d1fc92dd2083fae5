"""Section 4.3 of the paper, re-tested: each training technique switched off, per seed.

    python -m experiments.ablations --config=configs/cifar10_regime.py:48 \
        --root=/work/bignas_runs/regime48 --variants=full,hard_labels --seeds=0,1
    python -m experiments.ablations --root=/work/bignas_runs/regime48 --report_only

Every (variant, seed) is one `pipelines.train` run of `--config` (default
`configs/cifar10_miniature.py`) in `ROOT/VARIANT_sSEED`, with the variant's
switch as `--config.KEY=VALUE` overrides. Runs are resumable: killed, the same
command continues each unfinished run from its last checkpoint and skips the
finished ones (the wall time of every attempt is added up in
`ROOT/VARIANT_sSEED.json`, the output in `ROOT/VARIANT_sSEED.log`). Each
finished run's small files (results.json, its record, its curves as JSON) are
copied into `--keep` (in the repository: `experiments/runs/<basename of
ROOT>/VARIANT_sSEED/`), and the report is made from those copies alone, so it
can be regenerated after ROOT is gone. Then it writes `--report` (a Markdown
table: test and training-image top-1 of the smallest and largest child per
variant and seed, the mean over seeds and its difference from the full
method, against the full method's seed-to-seed spread) and the curves beside
it (`.png`: top-1 of the two children over training, one panel per child).

Variants (each against `full`, the paper's method):
  he_init             every BN gamma 1 and no shortcuts at stage transitions
  he_init_lr30        the same at 30% of the learning rate
  no_constant_ending  the LR decays to the end instead of holding 5%
  regularize_all      dropout on every child, each child's own weight decay on its slices
  hard_labels         children learn from the labels (no inplace distillation)
  independent_patch   a different random crop per resolution
  hard_labels_independent_patch  both (augmentation without target mismatch)
  crop_per_child      a different random crop per child of the step
  hard_labels_crop_per_child  both
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from experiments import ablation_lib
from tf_bignas.common.files import atomic_write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_ROOT = flags.DEFINE_string("root", None, "Folder of the runs (one workdir per variant and seed).")
_CONFIG = flags.DEFINE_string(
    "config", os.path.join(ROOT, "configs", "cifar10_miniature.py"), "Base config file."
)
_VARIANTS = flags.DEFINE_list("variants", ["all"], "Variants to run ('all' or names).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds of every variant.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "KEY=VALUE for every run (e.g. train.epochs=0.1 for a smoke test)."
)
_KEEP = flags.DEFINE_string(
    "keep",
    None,
    "Folder in the repository that keeps each finished run's results.json, record.json and "
    "curves.json (default: experiments/runs/<basename of --root>).",
)
_REPORT = flags.DEFINE_string(
    "report", None, "Markdown report to write (default: KEEP/report.md; curves beside it)."
)
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only collect what has finished.")


def _run_one(root: str, keep: str, variant: str, seed: int, flags_: list[str]) -> dict:
    name = f"{variant}_s{seed}"
    workdir = os.path.join(root, name)
    os.makedirs(root, exist_ok=True)
    # Beside the workdir, not in it: training writes only into a run's own folder.
    record_path, log_path = workdir + ".json", workdir + ".log"
    record = {"variant": variant, "seed": seed, "flags": flags_, "seconds": 0.0, "attempts": 0}
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as f:
            record.update({k: v for k, v in json.load(f).items() if k in ("seconds", "attempts")})
    if os.path.isfile(os.path.join(workdir, "results.json")):
        ablation_lib.keep_run(workdir, record, os.path.join(keep, name))
        return record
    cmd = [
        sys.executable,
        "-m",
        "pipelines.train",
        f"--config={_CONFIG.value}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *flags_,
    ]
    print(f"== {variant} seed {seed}: {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    record["seconds"] += time.perf_counter() - start
    record["attempts"] += 1
    atomic_write_json(record_path, record)
    if done.returncode != 0:
        raise RuntimeError(
            f"{variant} seed {seed} failed (exit {done.returncode}); see {log_path}. "
            "Run the same command again to resume it."
        )
    ablation_lib.keep_run(workdir, record, os.path.join(keep, name))
    return record


def main(argv: list[str]) -> None:
    del argv
    root = _ROOT.value
    if not root:
        raise app.UsageError("--root is required")
    variants = list(ablation_lib.VARIANTS) if _VARIANTS.value == ["all"] else _VARIANTS.value
    unknown = [v for v in variants if v not in ablation_lib.VARIANTS]
    if unknown:
        raise app.UsageError(
            f"unknown variants {unknown}; allowed: {sorted(ablation_lib.VARIANTS)}"
        )
    seeds = [int(s) for s in _SEEDS.value]
    keep = _KEEP.value or os.path.join(
        ROOT, "experiments", "runs", os.path.basename(os.path.normpath(root))
    )
    report = _REPORT.value or os.path.join(keep, "report.md")
    base_lr = ablation_lib.base_lr(_CONFIG.value, _OVERRIDES.value)
    for seed in seeds:  # every variant of seed 0 first: a partial run is already a comparison
        for variant in variants:
            flags_ = ablation_lib.run_flags(variant, _OVERRIDES.value, base_lr)
            finished = os.path.isfile(os.path.join(root, f"{variant}_s{seed}", "results.json"))
            if finished or not _REPORT_ONLY.value:
                _run_one(root, keep, variant, seed, flags_)
    rows = ablation_lib.collect(keep)
    command = "python -m experiments.ablations " + " ".join(sys.argv[1:])
    ablation_lib.report(rows, report, command)
    print(f"{len(rows)} finished runs; wrote {report}")


if __name__ == "__main__":
    flags.mark_flag_as_required("root")
    app.run(main)
