"""`pareto.png`: the selection metric of every evaluated child against its cost.

One point per evaluated child (x: its cost in the budgets' unit, MFLOPs for
``mflops`` budgets; y: top-1 on the selection split). Marker and colour tell
the stage: coarse skeletons, fine mutations, random samples, evolution
children. The chosen children are red stars labelled with their budget; each
budget is a dashed vertical line. Matplotlib's Agg backend, no display needed.
"""

from __future__ import annotations

import io
import types
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tf_bignas.common.files import atomic_write_bytes  # noqa: E402

# stage -> (label, marker, colour)
_STYLES = types.MappingProxyType(
    {
        "coarse": ("coarse skeletons", "o", "tab:gray"),
        "fine": ("fine mutations", "^", "tab:blue"),
        "random": ("random search", "s", "tab:orange"),
        "evolution": ("evolution", "D", "tab:green"),
        "largest": ("largest child", "P", "tab:purple"),
    }
)


def write_pareto_png(
    path: str,
    points: Sequence[Mapping[str, Any]],
    chosen: Sequence[Mapping[str, Any]],
    budgets: Sequence[tuple[str, float]],
    xlabel: str,
    title: str,
) -> None:
    """Draws the plot and writes it atomically.

    Args:
        path: The PNG to write.
        points: One per evaluated child: {"cost", "metric", "stage"}.
        chosen: One per budget: {"cost", "metric", "budget"}.
        budgets: (name, limit) per budget, in the x axis' unit.
        xlabel: The x axis' label (the cost and its unit).
        title: The title.
    """
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for stage, (label, marker, colour) in _STYLES.items():
        pts = [p for p in points if p["stage"] == stage]
        if pts:
            ax.scatter(
                [p["cost"] for p in pts],
                [100 * p["metric"] for p in pts],
                marker=marker,
                s=22,
                c=colour,
                alpha=0.65,
                label=f"{label} ({len(pts)})",
            )
    for i, (name, limit) in enumerate(budgets):
        ax.axvline(limit, color="tab:red", linestyle="--", linewidth=1, alpha=0.7,
                   label="budgets" if i == 0 else None)  # fmt: skip
        ax.annotate(name, (limit, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=7, color="tab:red")  # fmt: skip
    if chosen:
        ax.scatter(
            [c["cost"] for c in chosen],
            [100 * c["metric"] for c in chosen],
            marker="*",
            s=260,
            c="red",
            edgecolors="black",
            linewidths=0.8,
            zorder=5,
            label="chosen",
        )
        for c in chosen:
            ax.annotate(
                c["budget"],
                (c["cost"], 100 * c["metric"]),
                textcoords="offset points",
                xytext=(6, 8),
                fontsize=8,
                color="darkred",
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 on the selection split (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
