"""Model cards: what an exported child is, what it takes, how good and fast it is.

Each child folder holds `model_card.json` and `model_card.md` (the same facts
for people). The card is written last, so an export folder without a card
is unfinished. `write_card` re-renders the Markdown whenever the JSON changes.

Verified files: the export records each file's sha256 (`sha256_path`) in the
card once it has checked the file; every consumer of an exported file (the
benchmarks, the chain) opens it through `verified_file`, which refuses a file
whose digest differs from the card's, naming it.

Latency: `card["latency"]` is a list of entries, one per measurement setting,
keyed by `LATENCY_KEY` (target, device model, threads, delegate, format);
`put_latency` replaces the entry with the same key and keeps every other
one, so a 4-thread or GPU run never overwrites the 1-thread CPU one. Every
entry holds the same statistics (`LATENCY_STATS`: mean, median and 90th
percentile in ms; `None` where the tool gives no such figure) and
`memory_mb` where the tool measures it. Cards written before this layout
(a dict target -> format -> entry) are read by `latency_entries`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json, sha256_path

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
LATENCY_KEY = ("target", "device", "threads", "delegate", "format")
LATENCY_STATS = ("mean_ms", "median_ms", "p90_ms")


class FileDigestError(ValueError):
    """An exported file is not the one its card verified (changed, swapped or unverified)."""


def verified_file(folder: str, fmt: str, card: dict[str, Any] | None = None) -> str:
    """The path of the `fmt` file of a child folder, once its sha256 matches the card's.

    Args:
        folder: The child's export folder (with `model_card.json`).
        fmt: The file's key in the card ("fp32", "int8", "keras", ...).
        card: The card, if already read.

    Returns:
        The file's path.

    Raises:
        FileDigestError: No card, the card lists no such file, the file is
            missing, or its digest differs from the verified one; the message
            names the file and both digests.
    """
    card = card if card is not None else read_card(folder)
    card_path = os.path.join(folder, CARD_JSON)
    if card is None:
        raise FileDigestError(
            f"{card_path} is missing or unreadable: the files of {folder} are unverified "
            "(export them again with tools.export)"
        )
    entry = card.get("files", {}).get(fmt)
    if not isinstance(entry, dict) or "sha256" not in entry:
        allowed = ", ".join(sorted(card.get("files", {}))) or "none"
        raise FileDigestError(f"{card_path} lists no verified {fmt!r} file (it lists: {allowed})")
    path = os.path.join(folder, entry["file"])
    if not os.path.exists(path):
        raise FileDigestError(f"{path} is missing (listed in {card_path})")
    digest = sha256_path(path)
    if digest != entry["sha256"]:
        raise FileDigestError(
            f"{path} has sha256 {digest}, not the {entry['sha256']} that {card_path} verified: "
            "the file changed after export; export again (tools.export) or restore it"
        )
    return path


def latency_entries(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's latency entries as a list (cards of the older nested layout converted).

    Args:
        card: The JSON card.

    Returns:
        The entries, each with the `LATENCY_KEY` fields.
    """
    latency = card.get("latency") or []
    if isinstance(latency, list):
        return [e for e in latency if isinstance(e, dict)]
    out = []
    for target, entries in latency.items():  # the old layout: target -> format -> entry
        kind, _, device = str(target).partition(":")
        for fmt, e in (entries or {}).items():
            stats = {k: e.get(k) for k in LATENCY_STATS}
            if stats["mean_ms"] is None and "avg_ms" in e:
                stats["mean_ms"] = e["avg_ms"]
            out.append(
                {
                    "target": kind,
                    "device": e.get("device_model") or device or "unknown",
                    "threads": e.get("threads", e.get("num_threads")),
                    "delegate": e.get("delegate") or "unknown",
                    "format": fmt,
                    **e,
                    **stats,
                }
            )
    return out


def put_latency(card: dict[str, Any], entry: dict[str, Any]) -> None:
    """Adds a latency entry to the card, replacing the one with the same setting.

    Args:
        card: The JSON card (changed in place; `latency` becomes a list).
        entry: The measurement: every `LATENCY_KEY` field, every
            `LATENCY_STATS` field (None where not measured), `memory_mb`
            (None where not measured) and whatever else the tool records.

    Raises:
        ValueError: If a key or statistic field is missing.
    """
    missing = [k for k in (*LATENCY_KEY, *LATENCY_STATS, "memory_mb") if k not in entry]
    if missing:
        raise ValueError(f"latency entry lacks {missing}; it needs {LATENCY_KEY + LATENCY_STATS}")
    key = tuple(entry[k] for k in LATENCY_KEY)
    kept = [e for e in latency_entries(card) if tuple(e.get(k) for k in LATENCY_KEY) != key]
    card["latency"] = [*kept, dict(entry)]


def find_latency(card: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    """The latency entries whose fields equal `match` (e.g. target="host", format="int8")."""
    return [e for e in latency_entries(card) if all(e.get(k) == v for k, v in match.items())]


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
