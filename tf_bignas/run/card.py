"""Model cards: what an exported child is, what it takes, how good and fast it is.

Each child folder holds `model_card.json` and `model_card.md` (the same facts
for people). The card is written last, so an export folder without a card
is unfinished. The host benchmark (and the Android one) add measured
latencies under "latency" -> target ("host", "android:SERIAL") -> format;
`write_card` re-renders the Markdown whenever the JSON changes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"


def read_card(folder: str) -> dict[str, Any] | None:
    """The card of a child folder, or None if it has none (or an unreadable one)."""
    path = os.path.join(folder, CARD_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) else None


def write_card(folder: str, card: dict[str, Any]) -> None:
    """Writes `model_card.md`, then `model_card.json`, each atomically."""
    atomic_write_bytes(os.path.join(folder, CARD_MD), card_markdown(card).encode())
    atomic_write_json(os.path.join(folder, CARD_JSON), card)


def remove_card(folder: str) -> None:
    """Removes the card (the mark of a finished export) before the folder changes."""
    for name in (CARD_JSON, CARD_MD):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(entry: dict[str, Any] | None, key: str) -> str:
    if not entry or entry.get(key) is None:
        return "-"
    return f"{entry[key]:.3f}"


def _tensor(t: dict[str, Any]) -> str:
    text = f"`{t['name']}` {t['dtype']} {t['shape']}"
    q = t.get("quantization")
    if q:
        zp = q["zero_point"]
        shifted = f"q - {zp}" if zp >= 0 else f"q + {-zp}"
        text += f", quantised: real = {q['scale']:.6g} * ({shifted})"
    return text


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown.

    Args:
        card: The JSON card.

    Returns:
        The Markdown text.
    """
    contract = card["input_contract"]
    acc = card.get("accuracy", {})
    host = card.get("latency", {}).get("host", {})
    lines = [
        f"# {card['name']}: {card['paper_notation']}",
        "",
        f"Child of the `{card['space']}` space ({card['origin']}), "
        f"{card['macs'] / 1e6:.2f} M MACs (MFLOPs), {card['params'] / 1e6:.4f} M parameters, "
        f"input {card['resolution']}x{card['resolution']} RGB, {card['num_classes']} classes.",
        "",
        "## Input contract",
        "",
        contract["summary"],
        "",
        "| file | input | output |",
        "|---|---|---|",
    ]
    for fmt, files in contract["files"].items():
        lines.append(f"| {fmt} | {_tensor(files['input'])} | {_tensor(files['output'])} |")
    lines += [
        "",
        f"## Files, accuracy ({acc.get('num_examples', 0)} images of the "
        f"'{acc.get('split', '?')}' split) and host latency",
        "",
        "| format | file | size (bytes) | top-1 | top-5 | top-1 agreement with fp32 "
        "| host median ms | host p90 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fmt, f in card["files"].items():
        a = acc.get(fmt, {})
        lines.append(
            f"| {fmt} | `{f['file']}` | {f['bytes']} | {_pct(a.get('top1'))} | "
            f"{_pct(a.get('top5'))} | {_pct(a.get('top1_agreement_vs_fp32'))} | "
            f"{_ms(host.get(fmt), 'median_ms')} | {_ms(host.get(fmt), 'p90_ms')} |"
        )
    check = card.get("sliced_vs_built")
    if check:
        lines += [
            "",
            f"Sliced vs built: the fp32 file has the same {check['num_ops']} ops, in the same "
            f"order, as the same arch built directly ({'yes' if check['same_ops'] else 'NO'}; "
            f"reference `{check['reference_file']}`).",
        ]
    others = {t: v for t, v in card.get("latency", {}).items() if t != "host"}
    if host or others:
        lines += ["", "## Latency", ""]
        for target, entries in card.get("latency", {}).items():
            for fmt, e in entries.items():
                median = e.get("median_ms", e.get("avg_ms"))
                text = "-" if median is None else f"{median:.3f} ms"
                lines.append(f"- {target} {fmt}: {text} (threads {e.get('threads', '?')})")
    prov = card["provenance"]
    lines += [
        "",
        "## Provenance",
        "",
        f"- workdir: `{prov['workdir']}`",
        f"- weights: `{prov['weights']}` (sha256 {prov['weights_digest']})",
        f"- BN statistics: `{prov['bn_stats']}` (sha256 {prov['bn_stats_digest']})",
        f"- git commit: {prov.get('git_commit') or 'unknown'}"
        + (" (uncommitted changes)" if prov.get("git_dirty") else ""),
        f"- exported: {prov['exported_at']} with TensorFlow {prov['tensorflow']}",
        "",
        "## Arch",
        "",
        "```json",
        json.dumps(card["arch"]),
        "```",
        "",
    ]
    return "\n".join(lines)
