"""The ablation experiments' variants, their config flags, and their report.

Used by `experiments/ablations.py` (the program, which holds the flags).
"""

from __future__ import annotations

import json
import os
import types

import numpy as np

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json

# Variant -> overrides of the base config. "lr x0.3" is resolved against the base.
# He init is the paper's baseline of section 4.3: every BN gamma 1 AND no
# shortcuts at stage transitions (the miniature's he_init switched only gamma).
VARIANTS = types.MappingProxyType(
    {
        "full": {},
        "he_init": {"model.zero_init_last_bn": "False", "model.stage_shortcuts": "False"},
        "he_init_lr30": {
            "model.zero_init_last_bn": "False",
            "model.stage_shortcuts": "False",
            "optimizer.base_lr": "x0.3",
        },
        "no_constant_ending": {"schedule.constant_ending": "False"},
        "regularize_all": {"sandwich.regularize_all_children": "True"},
        "hard_labels": {"sandwich.inplace_distillation": "False"},
        "independent_patch": {"data.shared_patch": "False"},
        # Not the paper's: distillation for short budgets (the teacher is weak
        # early). Labels first, the teacher's share rising to 1 by half-way;
        # or half teacher, half labels throughout.
        "distill_ramp": {"sandwich.distill_ramp": "0.5"},
        "distill_mix": {"sandwich.distill_weight": "0.5"},
        "hard_labels_independent_patch": {
            "sandwich.inplace_distillation": "False",
            "data.shared_patch": "False",
        },
        # The paper's ablation of the shared patch: a crop per child of the step
        # (not per resolution), alone and with hard labels (augmentation vs
        # target mismatch).
        "crop_per_child": {"data.crop_per_child": "True"},
        "hard_labels_crop_per_child": {
            "sandwich.inplace_distillation": "False",
            "data.crop_per_child": "True",
        },
    }
)
RUN_FILES = ("results.json", "record.json", "curves.json")  # what is kept of a run


def split_config_arg(config: str) -> tuple[str, str]:
    """`path.py:arg` (ml_collections' config-file argument) as (path, arg)."""
    path, _, arg = config.partition(":")  # as ml_collections splits it
    return path, arg


def base_lr(config_path: str, overrides: list[str]) -> float:
    """The base config's optimizer.base_lr (after the common overrides).

    Args:
        config_path: The base config file (a `get_config()` module), with its
            `:arg` if any.
        overrides: KEY=VALUE overrides of every run.

    Returns:
        The LR for the reference batch.
    """
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "optimizer.base_lr":
            return float(value)
    import importlib.util  # noqa: PLC0415

    path, arg = split_config_arg(config_path)
    spec = importlib.util.spec_from_file_location("base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    return float(config.optimizer.base_lr)


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


def keep_run(workdir: str, record: dict, keep: str) -> None:
    """Copies a finished run's small files into `keep` (a folder in the repository).

    `keep/results.json` (the run's), `keep/record.json` (variant, seed, flags,
    wall time) and `keep/curves.json` (every logged curve: tag -> [[step,
    value], ...]), so that a report can be regenerated and checked after the
    run's workdir is gone.

    Args:
        workdir: The finished run.
        record: Its record (variant, seed, flags, seconds, attempts).
        keep: The folder to write.
    """
    from tf_bignas.chain.report import read_curves  # noqa: PLC0415

    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    curves = {
        tag: [[int(s), float(v)] for s, v in zip(steps, values)]
        for tag, (steps, values) in sorted(read_curves(workdir).items())
    }
    os.makedirs(keep, exist_ok=True)
    for name, value in zip(RUN_FILES, (results, record, curves)):
        atomic_write_json(os.path.join(keep, name), value)


def collect(keep_root: str) -> list[dict]:
    """Every kept run under `keep_root`: variant, seed, test and train top-1 per child.

    Args:
        keep_root: The folder of kept runs (one sub-folder per run, see `keep_run`).

    Returns:
        One dict per run, sorted by variant order and seed.
    """
    rows = []
    for name in sorted(os.listdir(keep_root)) if os.path.isdir(keep_root) else []:
        folder = os.path.join(keep_root, name)
        if not all(os.path.isfile(os.path.join(folder, f)) for f in RUN_FILES):
            continue
        loaded = {}
        for file in RUN_FILES:
            with open(os.path.join(folder, file), encoding="utf-8") as f:
                loaded[file] = json.load(f)
        results, record = loaded["results.json"], loaded["record.json"]
        children = results["children"]
        rows.append(
            {
                "variant": record["variant"],
                "seed": record["seed"],
                "folder": folder,
                "seconds": record["seconds"],
                "smallest": children["smallest"]["top1"],
                "largest": children["largest"]["top1"],
                "train_smallest": children["smallest"].get("train_top1"),
                "train_largest": children["largest"].get("train_top1"),
                "curves": {k: np.asarray(v) for k, v in loaded["curves.json"].items()},
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

    def mean(variant: str, child: str) -> float | None:
        values = [r[child] for r in rows if r["variant"] == variant]
        return float(np.mean(values)) if values else None

    full = [r for r in rows if r["variant"] == "full"]
    spread = {
        c: (max(r[c] for r in full) - min(r[c] for r in full)) * 100 if len(full) > 1 else None
        for c in ("smallest", "largest")
    }
    lines = [
        "# Ablations (sections 3.1 and 4.3), test top-1 of the smallest and largest child",
        "",
        f"Produced by `{command}`. Full method's seed-to-seed spread (max - min): "
        + ", ".join(
            f"{c} {spread[c]:.2f} points" if spread[c] is not None else f"{c} n/a (one seed)"
            for c in spread
        )
        + ". An effect is called real only when it exceeds that spread.",
        "",
        "| variant | seed | smallest % | largest % | smallest train % | largest train % "
        "| minutes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def pct(value: float | None) -> str:
        return "" if value is None else f"{value * 100:.2f}"

    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {pct(r['smallest'])} | {pct(r['largest'])} | "
            f"{pct(r['train_smallest'])} | {pct(r['train_largest'])} | {r['seconds'] / 60:.1f} |"
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

    # One colour per variant, one line style per seed: more runs than a
    # colour cycle holds stay distinguishable.
    colors = {v: f"C{i % 10}" for i, v in enumerate(VARIANTS)}
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, child in zip(axes, ("smallest", "largest")):
        for r in rows:
            color, style = colors.get(r["variant"]), styles[r["seed"] % len(styles)]
            curve = r["curves"].get(f"eval/top1_{child}")
            if curve is not None:
                ax.plot(
                    curve[:, 0],
                    curve[:, 1] * 100,
                    marker="o",
                    color=color,
                    linestyle=style,
                    label=f"{r['variant']} s{r['seed']}",
                )
            train = r["curves"].get(f"eval/train_top1_{child}")
            if train is not None:  # training accuracy: thin, no label (same colour)
                ax.plot(train[:, 0], train[:, 1] * 100, color=color, linestyle=style, lw=0.8)
        ax.set_title(f"{child} child")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%): test (markers), training images (thin)")
    # Outside the axes: a legend inside hid curve points (issue 21).
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
