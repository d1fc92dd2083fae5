"""The ablation experiments' variants, their config flags, and their report.

Used by `experiments/ablations.py` (the program, which holds the flags).
"""

from __future__ import annotations

import json
import os
import types

from tf_bignas.common.files import atomic_write_bytes

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


def base_lr(config_path: str, overrides: list[str]) -> float:
    """The base config's optimizer.base_lr (after the common overrides).

    Args:
        config_path: The base config file (a `get_config()` module).
        overrides: KEY=VALUE overrides of every run.

    Returns:
        The LR for the reference batch.
    """
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

    # One colour per variant, one line style per seed: more runs than a
    # colour cycle holds stay distinguishable.
    colors = {v: f"C{i % 10}" for i, v in enumerate(VARIANTS)}
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, child in zip(axes, ("smallest", "largest")):
        for r in rows:
            curve = read_curves(r["workdir"]).get(f"eval/top1_{child}")
            if curve is not None:
                ax.plot(
                    curve[0],
                    curve[1] * 100,
                    marker="o",
                    color=colors.get(r["variant"]),
                    linestyle=styles[r["seed"] % len(styles)],
                    label=f"{r['variant']} s{r['seed']}",
                )
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
