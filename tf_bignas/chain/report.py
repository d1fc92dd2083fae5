"""`WORKDIR/report.md` and `report.html`: the model family a run produced.

The report reads only files of the workdir: `results.json` (training), the
TensorBoard events (training curves of the largest and smallest child, drawn
to `training_curves.png`), `search/selection.json` and `search/pareto.png`,
and the model cards of `export/` (accuracies per format, file sizes, host
latencies). The HTML version embeds the pictures, so it is one file to send.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_bignas.common.files import atomic_write_bytes  # noqa: E402
from tf_bignas.run.card import read_card  # noqa: E402

CURVES_FILE = "training_curves.png"
CURVE_TAGS = (
    "loss/largest",
    "loss/smallest",
    "eval/top1_largest",
    "eval/top1_smallest",
    "eval/train_top1_largest",
    "eval/train_top1_smallest",
)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def read_curves(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalar curves of the run's TensorBoard events: tag -> (steps, values).

    Args:
        workdir: The workdir.

    Returns:
        The curves of `CURVE_TAGS` that the run logged (later events of a step win).
    """
    points: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag in CURVE_TAGS:
                        number = (
                            float(tf.make_ndarray(value.tensor))
                            if value.HasField("tensor")
                            else value.simple_value
                        )
                        points.setdefault(value.tag, {})[int(event.step)] = number
        except tf.errors.DataLossError:
            continue  # a file cut short by a kill: keep what was read
    return {
        tag: (np.array(sorted(p)), np.array([p[s] for s in sorted(p)])) for tag, p in points.items()
    }


def plot_curves(workdir: str, path: str) -> bool:
    """Draws the largest and smallest child's training curves to `path`.

    Args:
        workdir: The workdir.
        path: The PNG to write.

    Returns:
        False if the run logged no curve (nothing written).
    """
    curves = read_curves(workdir)
    if not curves:
        return False
    evals = [t for t in CURVE_TAGS[2:] if t in curves]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(10 if evals else 5.5, 3.6))
    axes = np.atleast_1d(axes)
    for tag in CURVE_TAGS[:2]:
        if tag in curves:
            axes[0].plot(*curves[tag], label=tag.split("/")[1] + " child")
    axes[0].set(xlabel="step", ylabel="training loss", title="Sandwich training")
    axes[0].legend()
    if evals:
        for tag in evals:
            axes[1].plot(*curves[tag], marker="o", label=tag.split("_")[-1] + " child")
        axes[1].set(xlabel="step", ylabel="top-1 (BN calibrated)", title="Held-out accuracy")
        axes[1].legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def family_rows(workdir: str) -> list[dict[str, Any]]:
    """One row per chosen child: selection facts joined with its model card."""
    selection = _read_json(os.path.join(workdir, "search", "selection.json"))
    rows = []
    for entry in selection.get("budgets", []):
        folder = entry["budget"].replace(":", "_")
        card = read_card(os.path.join(workdir, "export", folder)) or {}
        acc, files = card.get("accuracy", {}), card.get("files", {})
        host = card.get("latency", {}).get("host", {})
        rows.append(
            {
                "budget": entry["budget"],
                "arch": entry["paper_notation"],
                "mflops": entry["macs"] / 1e6,
                "params_m": entry["params"] / 1e6,
                "metric": entry.get("metric"),
                "test_top1": entry.get("test_top1"),
                "fp32_top1": acc.get("fp32", {}).get("top1"),
                "int8_top1": acc.get("int8", {}).get("top1"),
                "fp32_ms": host.get("fp32", {}).get("median_ms"),
                "int8_ms": host.get("int8", {}).get("median_ms"),
                "fp32_kb": files.get("fp32", {}).get("bytes"),
                "int8_kb": files.get("int8", {}).get("bytes"),
                "warning": entry.get("warning"),
            }
        )
    return rows


def family_table(rows: list[dict[str, Any]]) -> str:
    """The report's table in Markdown."""
    head = (
        "| budget | arch (paper notation) | MFLOPs | params (M) | selection top-1 | "
        "fp32 top-1 | int8 top-1 | fp32 ms | int8 ms | fp32 KB | int8 KB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['budget']} | `{r['arch']}` | {r['mflops']:.2f} | {r['params_m']:.3f} | "
        f"{_fmt(r['metric'], '.1%')} | {_fmt(r['fp32_top1'], '.1%')} | "
        f"{_fmt(r['int8_top1'], '.1%')} | {_fmt(r['fp32_ms'], '.3f')} | "
        f"{_fmt(r['int8_ms'], '.3f')} | {_fmt(r['fp32_kb'], '.0f', 1 / 1024)} | "
        f"{_fmt(r['int8_kb'], '.0f', 1 / 1024)} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def write_report(workdir: str) -> str:
    """Writes `report.md`, `report.html` and `training_curves.png` into the workdir.

    Args:
        workdir: The workdir (any stage may be missing; the report says what it has).

    Returns:
        The family table (Markdown).
    """
    results = _read_json(os.path.join(workdir, "results.json"))
    config = _read_json(os.path.join(workdir, "config.json"))
    selection = _read_json(os.path.join(workdir, "search", "selection.json"))
    rows = family_rows(workdir)
    table = family_table(rows)
    has_curves = plot_curves(workdir, os.path.join(workdir, CURVES_FILE))
    pareto = os.path.join(workdir, "search", "pareto.png")
    model = config.get("model", {})
    data = config.get("data", {})
    lines = [
        "# BigNAS run report",
        "",
        f"Workdir `{os.path.abspath(workdir)}`: space `{model.get('space')}` on "
        f"`{data.get('source')}`, seed {config.get('seed')}, "
        f"{results.get('step', '?')} training steps.",
        "",
    ]
    for name, child in results.get("children", {}).items():
        lines.append(
            f"- {name} child: top-1 {child['top1']:.1%}, top-5 {child['top5']:.1%} on "
            f"{child['num_examples']} `{results.get('eval_split')}` images (BN calibrated)"
        )
    lines += ["", "## The model family, one child per budget", ""]
    if selection:
        lines.append(
            f"Chosen by `{selection.get('method')}` on the `{selection.get('selection_split')}` "
            f"split ({selection.get('num_evaluated')} children evaluated); fp32 / int8 top-1 "
            f"are of the exported TFLite files on the `{results.get('eval_split')}` split; "
            "latencies are host medians (ai-edge-litert, XNNPACK)."
        )
        lines += ["", table]
        lines += [f"- {r['budget']}: {r['warning']}" for r in rows if r["warning"]]
    else:
        lines.append("No search yet (`search/selection.json` is missing).")
    if os.path.isfile(pareto):
        lines += ["", "![accuracy against MFLOPs](search/pareto.png)", ""]
    if has_curves:
        lines += ["## Training", "", f"![training curves]({CURVES_FILE})", ""]
    markdown = "\n".join(lines) + "\n"
    atomic_write_bytes(os.path.join(workdir, "report.md"), markdown.encode())
    atomic_write_bytes(os.path.join(workdir, "report.html"), _html(workdir, markdown).encode())
    return table


def _html(workdir: str, markdown: str) -> str:
    """A self-contained HTML page of the Markdown report (pictures embedded)."""
    out, table = [], []

    def flush_table() -> None:
        if table:
            cells = [[c.strip() for c in row.strip("|").split("|")] for row in table]
            body = "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                for i, row in enumerate(r for j, r in enumerate(cells) if j != 1)
            )  # fmt: skip
            out.append(f"<table>{body}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            with open(os.path.join(workdir, src.rstrip(")")), "rb") as f:
                data = base64.b64encode(f.read()).decode()
            out.append(f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:70em}td,th{padding:2px 8px;border:1px solid #ccc}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>BigNAS run report</title>"
        f"<style>{style}</style></head><body>{''.join(out)}</body></html>\n"
    )
