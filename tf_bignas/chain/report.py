"""`WORKDIR/report.md` and `report.html`: the model family a run produced.

The report reads only files of the workdir: `results.json` (training), the
TensorBoard events (training curves of the largest and smallest child, drawn
to `training_curves.png`), `search/selection.json` and `search/pareto.png`,
and the model cards of `export/` (accuracies per format, file sizes, host
latencies). The HTML version embeds the pictures, so it is one file to send.

Both are rendered from one list of blocks (`_Block`) whose text pieces say
what they are: the report's own words, or text read from a file, a folder
name or a config value (`_Text`, `_Code`). Those are escaped for each output
(`tf_bignas.common.text.md_text` / `md_code` in Markdown, `html_text` in
HTML), so a data source or folder name holding backticks or HTML renders as
that text and never as markup.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import html
import json
import numbers
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_bignas.common.files import atomic_write_bytes  # noqa: E402
from tf_bignas.common.text import html_text, md_code, md_text  # noqa: E402
from tf_bignas.run.card import find_latency, read_card  # noqa: E402
from tf_bignas.run.selection import Selection, SelectionError, read_selection  # noqa: E402

CURVES_FILE = "training_curves.png"
CURVE_TAGS = (
    "loss/largest",
    "loss/smallest",
    "eval/top1_largest",
    "eval/top1_smallest",
    "eval/train_top1_largest",
    "eval/train_top1_smallest",
)


SELECTION_PATH = os.path.join("search", "selection.json")


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


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


@dataclasses.dataclass(frozen=True)
class _Text:
    """Text from a file, a folder name or a config value: escaped, shown as is."""

    value: Any


@dataclasses.dataclass(frozen=True)
class _Code:
    """Like `_Text`, shown as code (a Markdown code span, HTML <code>)."""

    value: Any


# The report's own words (str), or text from outside, escaped when rendered.
_Inline = str | _Text | _Code


@dataclasses.dataclass(frozen=True)
class _Block:
    """One block of the report.

    Attributes:
        kind: "h1", "h2", "p", "li", "table" or "img".
        pieces: The inline pieces (h1 .. li), or the alt text and the picture
            file (img).
        header: The table's header cells (the report's own words).
        rows: The table's rows, one list of pieces per cell.
    """

    kind: str
    pieces: tuple[_Inline, ...] = ()
    header: tuple[str, ...] = ()
    rows: tuple[tuple[tuple[_Inline, ...], ...], ...] = ()


def _md(pieces: Sequence[_Inline]) -> str:
    return "".join(
        md_code(p.value) if isinstance(p, _Code) else md_text(p.value) if isinstance(p, _Text)
        else p
        for p in pieces
    )  # fmt: skip


def _html_inline(pieces: Sequence[_Inline]) -> str:
    return "".join(
        f"<code>{html_text(p.value)}</code>" if isinstance(p, _Code)
        else html_text(p.value) if isinstance(p, _Text) else html.escape(p)
        for p in pieces
    )  # fmt: skip


def _num(value: Any, spec: str, scale: float = 1.0) -> _Inline:
    """A number formatted, "-" for None, anything else (a bad file) as escaped text."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return _Text(value)
    return format(value * scale, spec)


def _host_median(card: dict[str, Any], fmt: str) -> Any:
    """The host median latency of a file: fewest threads measured, latest measurement."""
    entries = find_latency(card, target="host", format=fmt)
    if not entries:
        return None

    def order(e: dict[str, Any]) -> tuple[Any, ...]:
        threads = e.get("threads")
        return (-(threads if isinstance(threads, int) else 1 << 30), str(e.get("measured_at")))

    return max(entries, key=order).get("median_ms")


def family_rows(workdir: str, selection: Selection | None = None) -> list[dict[str, Any]]:
    """One row per chosen child: selection facts joined with its model card.

    Args:
        workdir: The workdir.
        selection: Its selection, if already read (else read; none if missing or invalid).

    Returns:
        The rows (budget, arch, costs, accuracies, host latencies, file sizes, warning).
    """
    if selection is None:
        try:
            selection = read_selection(os.path.join(workdir, SELECTION_PATH))
        except SelectionError:
            return []
    rows = []
    for entry in selection.budgets:
        card = read_card(os.path.join(workdir, "export", entry.budget.folder)) or {}
        acc, files = card.get("accuracy") or {}, card.get("files") or {}
        rows.append(
            {
                "budget": entry.budget.name,
                "arch": entry.paper_notation,
                "mflops": entry.macs / 1e6,
                "params_m": entry.params / 1e6,
                "metric": entry.metric,
                "test_top1": entry.test_top1,
                "fp32_top1": (acc.get("fp32") or {}).get("top1"),
                "int8_top1": (acc.get("int8") or {}).get("top1"),
                "fp32_ms": _host_median(card, "fp32"),
                "int8_ms": _host_median(card, "int8"),
                "fp32_kb": (files.get("fp32") or {}).get("bytes"),
                "int8_kb": (files.get("int8") or {}).get("bytes"),
                "warning": entry.warning,
            }
        )
    return rows


_TABLE_HEADER = (
    "budget", "arch (paper notation)", "MFLOPs", "params (M)", "selection top-1", "fp32 top-1",
    "int8 top-1", "fp32 ms", "int8 ms", "fp32 KB", "int8 KB",
)  # fmt: skip


def _family_block(rows: list[dict[str, Any]]) -> _Block:
    cells = [
        (
            (r["budget"],),  # a validated budget name: KIND:NUMBER
            (_Code(r["arch"]),),
            (_num(r["mflops"], ".2f"),),
            (_num(r["params_m"], ".3f"),),
            (_num(r["metric"], ".1%"),),
            (_num(r["fp32_top1"], ".1%"),),
            (_num(r["int8_top1"], ".1%"),),
            (_num(r["fp32_ms"], ".3f"),),
            (_num(r["int8_ms"], ".3f"),),
            (_num(r["fp32_kb"], ".0f", 1 / 1024),),
            (_num(r["int8_kb"], ".0f", 1 / 1024),),
        )
        for r in rows
    ]
    return _Block("table", header=_TABLE_HEADER, rows=tuple(cells))


def _md_table(block: _Block) -> str:
    lines = [
        "| " + " | ".join(block.header) + " |",
        "|" + "---|" * len(block.header),
        *("| " + " | ".join(_md(cell) for cell in row) + " |" for row in block.rows),
    ]
    return "\n".join(lines) + "\n"


def family_table(rows: list[dict[str, Any]]) -> str:
    """The report's table in Markdown (text from files escaped)."""
    return _md_table(_family_block(rows))


def _run_blocks(workdir: str, results: dict[str, Any]) -> list[_Block]:
    """The title, the run's facts and its children's accuracies."""
    config = _read_json(os.path.join(workdir, "config.json"))
    model, data = config.get("model") or {}, config.get("data") or {}
    facts = (
        "Workdir ", _Code(os.path.abspath(workdir)), ": space ", _Code(model.get("space")),
        " on ", _Code(data.get("source")), ", seed ", _Text(config.get("seed")), ", ",
        _Text(results.get("step", "?")), " training steps.",
    )  # fmt: skip
    blocks = [_Block("h1", ("BigNAS run report",)), _Block("p", facts)]
    children = results.get("children")
    for name, child in (children if isinstance(children, dict) else {}).items():
        child = child if isinstance(child, dict) else {}
        line = (
            _Text(name), " child: top-1 ", _num(child.get("top1"), ".1%"), ", top-5 ",
            _num(child.get("top5"), ".1%"), " on ", _Text(child.get("num_examples")), " ",
            _Code(results.get("eval_split")), " images (BN calibrated)",
        )  # fmt: skip
        blocks.append(_Block("li", line))
    return blocks


def _family_blocks(workdir: str, eval_split: Any) -> tuple[list[_Block], list[dict[str, Any]]]:
    """The model family section (or why there is none), and the table's rows."""
    blocks = [_Block("h2", ("The model family, one child per budget",))]
    path = os.path.join(workdir, SELECTION_PATH)
    try:
        selection = read_selection(path)
    except SelectionError as e:
        if not os.path.exists(path):
            blocks.append(_Block("p", ("No search yet (", _Code(SELECTION_PATH), " is missing).")))
        else:
            blocks.append(_Block("p", ("The search's selection cannot be read: ", _Text(e))))
        return blocks, []
    rows = family_rows(workdir, selection)
    about = (
        "Chosen by ", _Code(selection.method), " on the ", _Code(selection.selection_split),
        f" split ({selection.num_evaluated} children evaluated); fp32 / int8 top-1 are of the "
        "exported TFLite files on the ", _Code(eval_split), " split; latencies are host "
        "medians (ai-edge-litert, XNNPACK).",
    )  # fmt: skip
    blocks += [_Block("p", about), _family_block(rows)]
    blocks += [_Block("li", (r["budget"], ": ", _Text(r["warning"]))) for r in rows if r["warning"]]
    return blocks, rows


def _blocks(workdir: str, has_curves: bool) -> tuple[list[_Block], list[dict[str, Any]]]:
    """The report's blocks, and the family table's rows."""
    results = _read_json(os.path.join(workdir, "results.json"))
    family, rows = _family_blocks(workdir, results.get("eval_split"))
    blocks = _run_blocks(workdir, results) + family
    if os.path.isfile(os.path.join(workdir, "search", "pareto.png")):
        blocks.append(_Block("img", ("accuracy against MFLOPs", "search/pareto.png")))
    if has_curves:
        blocks += [_Block("h2", ("Training",)), _Block("img", ("training curves", CURVES_FILE))]
    return blocks, rows


def _markdown(blocks: Sequence[_Block]) -> str:
    out = []
    for i, b in enumerate(blocks):
        if b.kind == "table":
            out.append(_md_table(b))
        elif b.kind == "img":
            out += [f"![{b.pieces[0]}]({b.pieces[1]})", ""]
        else:
            prefix = {"h1": "# ", "h2": "## ", "li": "- ", "p": ""}[b.kind]
            out.append(prefix + _md(b.pieces))
            last_item = b.kind == "li" and (i + 1 == len(blocks) or blocks[i + 1].kind != "li")
            if b.kind != "li" or last_item:
                out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _html(workdir: str, blocks: Sequence[_Block]) -> str:
    """A self-contained HTML page of the report (pictures embedded)."""
    out = []
    for b in blocks:
        if b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{_html_inline(cell)}</td>" for cell in row) + "</tr>"
                for row in b.rows
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.kind == "img":
            alt, src = b.pieces
            with open(os.path.join(workdir, str(src)), "rb") as f:
                data = base64.b64encode(f.read()).decode()
            out.append(
                f'<p><img alt="{html.escape(str(alt))}" src="data:image/png;base64,{data}"></p>'
            )
        else:
            out.append(f"<{b.kind}>{_html_inline(b.pieces)}</{b.kind}>")
    style = (
        "body{font-family:sans-serif;max-width:70em}td,th{padding:2px 8px;border:1px solid #ccc}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>BigNAS run report</title>"
        f"<style>{style}</style></head><body>{''.join(out)}</body></html>\n"
    )


def write_report(workdir: str) -> str:
    """Writes `report.md`, `report.html` and `training_curves.png` into the workdir.

    Args:
        workdir: The workdir (any stage may be missing; the report says what it has).

    Returns:
        The family table (Markdown).
    """
    has_curves = plot_curves(workdir, os.path.join(workdir, CURVES_FILE))
    blocks, rows = _blocks(workdir, has_curves)
    atomic_write_bytes(os.path.join(workdir, "report.md"), _markdown(blocks).encode())
    atomic_write_bytes(os.path.join(workdir, "report.html"), _html(workdir, blocks).encode())
    return family_table(rows)
