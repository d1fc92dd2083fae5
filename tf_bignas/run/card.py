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
from tf_bignas.common.text import md_code, md_text

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


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _tensor(t: dict[str, Any]) -> str:
    text = f"{md_code(t['name'])} {md_text(t['dtype'])} {md_text(t['shape'])}"
    q = t.get("quantization")
    if q:
        zp = q["zero_point"]
        shifted = f"q - {zp}" if zp >= 0 else f"q + {-zp}"
        text += f", quantised: real = {q['scale']:.6g} \\* ({shifted})"
    return text


def _latency_lines(card: dict[str, Any]) -> list[str]:
    entries = latency_entries(card)
    if not entries:
        return []
    lines = [
        "",
        "## Latency",
        "",
        "Batch 1, one entry per target, device, threads, delegate and format; mean, median "
        "and 90th percentile of the timed runs (- where the tool gives no such figure).",
        "",
        "| target | device | threads | delegate | format | mean ms | median ms | p90 ms "
        "| memory MB | runs | measured |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in sorted(entries, key=lambda e: tuple(str(e.get(k)) for k in LATENCY_KEY)):
        memory = e.get("memory_mb")
        lines.append(
            "| "
            + " | ".join(
                [
                    md_text(e.get("target")),
                    md_text(e.get("device")),
                    md_text(e.get("threads")),
                    md_text(e.get("delegate")),
                    md_text(e.get("format")),
                    _ms(e.get("mean_ms")),
                    _ms(e.get("median_ms")),
                    _ms(e.get("p90_ms")),
                    "-" if memory is None else f"{memory:.1f}",
                    md_text(e.get("runs", "-")),
                    md_text(e.get("measured_at", "-")),
                ]
            )
            + " |"
        )
    return lines


def _use_lines(card: dict[str, Any]) -> list[str]:
    lines = []
    if card.get("intended_use"):
        lines += ["", "## Intended use", "", md_text(card["intended_use"])]
    if card.get("limitations"):
        lines += ["", "## Limitations", ""] + [f"- {md_text(x)}" for x in card["limitations"]]
    names = card.get("class_names")
    if names:
        labels = card.get("labels_file")
        where = f" (also in {md_code(labels)} beside the model)" if labels else ""
        lines += ["", "## Classes", "", f"Output index: class name{where}.", ""]
        lines += [f"{i}. {md_text(n)}" for i, n in enumerate(names)]
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown (every text from files, folders and devices escaped).

    Args:
        card: The JSON card.

    Returns:
        The Markdown text.
    """
    contract = card["input_contract"]
    acc = card.get("accuracy", {})
    lines = [
        f"# {md_text(card['name'])}: {md_text(card['paper_notation'])}",
        "",
        f"Child of the {md_code(card['space'])} space ({md_text(card['origin'])}), "
        f"{card['macs'] / 1e6:.2f} M MACs (MFLOPs), {card['params'] / 1e6:.4f} M parameters, "
        f"input {card['resolution']}x{card['resolution']} RGB, {card['num_classes']} classes.",
    ]
    lines += _use_lines(card)
    lines += [
        "",
        "## Input contract",
        "",
        md_text(contract["summary"]),
        "",
        "| file | input | output |",
        "|---|---|---|",
    ]
    for fmt, files in contract["files"].items():
        lines.append(f"| {md_text(fmt)} | {_tensor(files['input'])} | {_tensor(files['output'])} |")
    lines += [
        "",
        f"## Files and accuracy ({acc.get('num_examples', 0)} images of the "
        f"{md_code(acc.get('split', '?'))} split)",
        "",
        "Each file's sha256 is the one verified at export; the benchmarks and the chain "
        "refuse a file whose digest differs.",
        "",
        "| format | file | size (bytes) | sha256 | top-1 | top-5 | top-1 agreement with fp32 |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for fmt, f in card["files"].items():
        a = acc.get(fmt, {})
        lines.append(
            f"| {md_text(fmt)} | {md_code(f['file'])} | {f['bytes']} | {md_code(f['sha256'])} "
            f"| {_pct(a.get('top1'))} | {_pct(a.get('top5'))} "
            f"| {_pct(a.get('top1_agreement_vs_fp32'))} |"
        )
    check = card.get("sliced_vs_built")
    if check:
        lines += [
            "",
            f"Sliced vs built: the fp32 file has the same {check['num_ops']} ops, in the same "
            f"order, as the same arch built directly ({'yes' if check['same_ops'] else 'NO'}; "
            f"reference {md_code(check['reference_file'])}).",
        ]
    lines += _latency_lines(card)
    prov = card["provenance"]
    commit = prov.get("git_commit") or "unknown"
    lines += [
        "",
        "## Provenance and how to reproduce",
        "",
        f"- workdir: {md_code(prov['workdir'])}",
        f"- weights: {md_code(prov['weights'])} (sha256 {md_code(prov['weights_digest'])})",
        f"- BN statistics: {md_code(prov['bn_stats'])} (sha256 {md_code(prov['bn_stats_digest'])})",
        f"- git commit: {md_code(commit)}"
        + (" (uncommitted changes)" if prov.get("git_dirty") else ""),
        f"- trained with: {md_code(prov.get('train_command') or 'not recorded')}",
        f"- exported with: {md_code(prov.get('export_command') or 'not recorded')}",
        f"- exported: {md_text(prov['exported_at'])} with TensorFlow {md_text(prov['tensorflow'])}",
        "",
        "## Arch",
        "",
        "```json",
        json.dumps(card["arch"]),
        "```",
        "",
    ]
    return "\n".join(lines)
