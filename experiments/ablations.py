"""Section 4.3 of the paper, re-tested: each training technique switched off, per seed.

    python -m experiments.ablations --root=/tmp/bignas_ablations --seeds=0,1
    python -m experiments.ablations --root=/tmp/bignas_ablations --report_only

Every (variant, seed) is one `pipelines.train` run of `--config` (default
`configs/cifar10_miniature.py`) in `ROOT/VARIANT_sSEED`, with the variant's
switch as `--config.KEY=VALUE` overrides. Runs are resumable: killed, the same
command continues each unfinished run from its last checkpoint and skips the
finished ones (the wall time of every attempt is added up in
`ROOT/VARIANT_sSEED.json`, the output in `ROOT/VARIANT_sSEED.log`). Then it writes `--report` (a Markdown
table: test top-1 of the smallest and largest child per variant and seed, the
mean over seeds and its difference from the full method, against the full
method's seed-to-seed spread) and the curves beside it (`.png`: test top-1 of
the two children over training, one panel per child).

Variants (each against `full`, the paper's method):
  he_init             no zero-init of the last BN gamma (every gamma 1)
  he_init_lr30        the same at 30% of the learning rate
  no_constant_ending  the LR decays to the end instead of holding 5%
  regularize_all      weight decay and dropout on every child
  hard_labels         children learn from the labels (no inplace distillation)
  independent_patch   a different random crop per resolution
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

from absl import app, flags

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json

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
_REPORT = flags.DEFINE_string(
    "report", os.path.join(ROOT, "experiments", "ablations.md"), "Markdown report to write."
)
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only collect what has finished.")

# Variant -> overrides of the base config. "lr x0.3" is resolved against the base.
VARIANTS = types.MappingProxyType(
    {
        "full": {},
        "he_init": {"model.zero_init_last_bn": "False"},
        "he_init_lr30": {"model.zero_init_last_bn": "False", "optimizer.base_lr": "x0.3"},
        "no_constant_ending": {"schedule.constant_ending": "False"},
        "regularize_all": {"sandwich.regularize_all_children": "True"},
        "hard_labels": {"sandwich.inplace_distillation": "False"},
        "independent_patch": {"data.shared_patch": "False"},
    }
)


def _base_lr(config_path: str, overrides: list[str]) -> float:
    """The base config's optimizer.base_lr (after the common overrides)."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "optimizer.base_lr":
            return float(value)
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("base_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return float(module.get_config().optimizer.base_lr)


def run_flags(variant: str, common: list[str], base_lr: float) -> list[str]:
    """The `--config.KEY=VALUE` flags of one variant.

    Args:
        variant: A key of VARIANTS.
        common: KEY=VALUE overrides of every run.
        base_lr: The base config's LR (for relative LR variants).

    Returns:
        The flags.

    Raises:
        ValueError: If the variant is unknown.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {sorted(VARIANTS)}")
    out = [f"--config.{item}" for item in common]
    for key, value in VARIANTS[variant].items():
        if value.startswith("x"):
            value = repr(base_lr * float(value[1:]))
        out.append(f"--config.{key}={value}")
    return out


def _run_one(root: str, variant: str, seed: int, flags_: list[str]) -> dict:
    workdir = os.path.join(root, f"{variant}_s{seed}")
    os.makedirs(root, exist_ok=True)
    # Beside the workdir, not in it: training writes only into a run's own folder.
    record_path, log_path = workdir + ".json", workdir + ".log"
    record = {"variant": variant, "seed": seed, "flags": flags_, "seconds": 0.0, "attempts": 0}
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as f:
            record.update({k: v for k, v in json.load(f).items() if k in ("seconds", "attempts")})
    if os.path.isfile(os.path.join(workdir, "results.json")):
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
    return record


def collect(root: str) -> list[dict]:
    """Every finished run under `root`: variant, seed, test top-1 per child, seconds.

    Args:
        root: The runs' folder.

    Returns:
        One dict per finished run, sorted by variant order and seed.
    """
    rows = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        workdir = os.path.join(root, name)
        paths = [os.path.join(workdir, "results.json"), workdir + ".json"]
        if not all(os.path.isfile(p) for p in paths):
            continue
        with open(paths[0], encoding="utf-8") as f:
            results = json.load(f)
        with open(paths[1], encoding="utf-8") as f:
            record = json.load(f)
        rows.append(
            {
                "variant": record["variant"],
                "seed": record["seed"],
                "workdir": workdir,
                "seconds": record["seconds"],
                "smallest": results["children"]["smallest"]["top1"],
                "largest": results["children"]["largest"]["top1"],
            }
        )
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: (order.index(r["variant"]), r["seed"]))


def report(rows: list[dict], path: str, command: str) -> None:
    """Writes the Markdown table and the curves beside it (`path` with .png).

    Args:
        rows: From `collect`.
        path: The Markdown file.
        command: The command that produced the runs (quoted in the report).
    """
    import numpy as np  # noqa: PLC0415

    from tf_bignas.chain.report import read_curves  # noqa: PLC0415

    def mean(variant: str, child: str) -> float | None:
        values = [r[child] for r in rows if r["variant"] == variant]
        return float(np.mean(values)) if values else None

    full = [r for r in rows if r["variant"] == "full"]
    spread = {
        c: (max(r[c] for r in full) - min(r[c] for r in full)) * 100 if len(full) > 1 else None
        for c in ("smallest", "largest")
    }
    lines = [
        "# Ablations (section 4.3), test top-1 of the smallest and largest child",
        "",
        f"Produced by `{command}`. Full method's seed-to-seed spread (max - min): "
        + ", ".join(
            f"{c} {spread[c]:.2f} points" if spread[c] is not None else f"{c} n/a (one seed)"
            for c in spread
        )
        + ". An effect is called real only when it exceeds that spread.",
        "",
        "| variant | seed | smallest % | largest % | minutes |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['smallest'] * 100:.2f} | "
            f"{r['largest'] * 100:.2f} | {r['seconds'] / 60:.1f} |"
        )
    lines += ["", "| variant | mean smallest % | vs full | mean largest % | vs full |"]
    lines.append("|---|---:|---:|---:|---:|")
    for variant in VARIANTS:
        cells = []
        for child in ("smallest", "largest"):
            m, f = mean(variant, child), mean("full", child)
            cells.append("" if m is None else f"{m * 100:.2f}")
            cells.append("" if m is None or f is None else f"{(m - f) * 100:+.2f}")
        if cells[0]:
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    png = os.path.splitext(path)[0] + ".png"
    lines += ["", f"Curves: [{os.path.basename(png)}]({os.path.basename(png)})", ""]
    atomic_write_bytes(path, "\n".join(lines).encode())

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, child in zip(axes, ("smallest", "largest")):
        for r in rows:
            curve = read_curves(r["workdir"]).get(f"eval/top1_{child}")
            if curve is not None:
                ax.plot(curve[0], curve[1] * 100, marker="o", label=f"{r['variant']} s{r['seed']}")
        ax.set_title(f"{child} child")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)


def main(argv: list[str]) -> None:
    del argv
    root = _ROOT.value
    if not root:
        raise app.UsageError("--root is required")
    variants = list(VARIANTS) if _VARIANTS.value == ["all"] else _VARIANTS.value
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise app.UsageError(f"unknown variants {unknown}; allowed: {sorted(VARIANTS)}")
    seeds = [int(s) for s in _SEEDS.value]
    if not _REPORT_ONLY.value:
        base_lr = _base_lr(_CONFIG.value, _OVERRIDES.value)
        for seed in seeds:  # every variant of seed 0 first: a partial run is already a comparison
            for variant in variants:
                _run_one(root, variant, seed, run_flags(variant, _OVERRIDES.value, base_lr))
    rows = collect(root)
    command = "python -m experiments.ablations " + " ".join(sys.argv[1:])
    report(rows, _REPORT.value, command)
    print(f"{len(rows)} finished runs; wrote {_REPORT.value}")


if __name__ == "__main__":
    flags.mark_flag_as_required("root")
    app.run(main)
