"""The append-only results file: one whole JSON line per evaluated child.

`WORKDIR/search/evaluations.jsonl` starts with a header line
``{"header": {...}}`` (format, space name and fingerprint, weights digest,
number of classes, selection split and images, batch size, calibration
sample)
and then holds one record per evaluated child:

    {"method": "coarse_to_fine", "stage": "coarse", "round": 0, "budget": "",
     "arch": {...}, "paper_notation": "...", "resolution": 32, "macs": ...,
     "params": ..., "latency_ms": null, "metric": 0.91, "top5": 0.99,
     "num_examples": 500, "split": "minival", "seconds": 0.21, "reused": false}

Each record is written with one `write` of a whole line, then flushed and
fsynced; a line torn by a crash (no final newline) is dropped on the next
open, and only that child is evaluated again. A process running one shard
(`--shard=I/N`) writes `evaluations.shard-I-of-N.jsonl` instead; every file
is read, and an unsharded run folds shard records into `evaluations.jsonl`.

Files whose header names another space, other weights or another selection
setup are refused with an error (they are left untouched): their metrics do
not compare with this run's.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

from tf_bignas.space import ArchConfig

FORMAT = 1
MAIN_FILE = "evaluations.jsonl"
SHARD_PATTERN = "evaluations.shard-*-of-*.jsonl"
# Header fields that must match for records to be reused, with how to say so.
_IDENTITY = ("space", "space_fingerprint", "weights_digest", "num_classes")
_SETUP = (
    "selection_split",
    "selection_images",
    "batch_size",
    "calibration_images",
    "calibration_batch_size",
    "calibration_seed",
)


class ResultsFileError(ValueError):
    """A results file is unreadable or belongs to another run or setup."""


def shard_file(index: int, count: int) -> str:
    """The file name a shard writes."""
    return f"evaluations.shard-{index}-of-{count}.jsonl"


def record_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """(method, arch key) of a record: what a restarted method skips."""
    return record["method"], _arch_key(record["arch"])


def _arch_key(arch: Mapping[str, Any]) -> str:
    return ArchConfig.from_dict(arch).key


class EvaluationLog:
    """The results files of one search folder.

    Args:
        folder: `WORKDIR/search`.
        header: This run's header (see the module docstring).
        shard: (index, count) when this process runs one shard, else None.
    """

    def __init__(
        self,
        folder: str,
        header: Mapping[str, Any],
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.folder = folder
        self.header = {"format": FORMAT, **header}
        self.shard = shard
        name = shard_file(*shard) if shard and shard[1] > 1 else MAIN_FILE
        self.path = os.path.join(folder, name)
        self._ready = False

    def files(self) -> list[str]:
        """Every results file of the folder, the main one first."""
        main = os.path.join(self.folder, MAIN_FILE)
        shards = sorted(glob.glob(os.path.join(self.folder, SHARD_PATTERN)))
        return ([main] if os.path.isfile(main) else []) + shards

    def _check_header(self, path: str, header: Mapping[str, Any]) -> None:
        if header.get("format") != FORMAT:
            raise ResultsFileError(
                f"{path} has results format {header.get('format')!r}; this version reads "
                f"format {FORMAT}: move the file aside (nothing was changed)"
            )
        for field in _IDENTITY:
            if header.get(field) != self.header.get(field):
                raise ResultsFileError(
                    f"{path} holds children evaluated on another run: its {field} is "
                    f"{header.get(field)!r}, this workdir's is {self.header.get(field)!r} (space "
                    f"{header.get('space')!r}, weights {header.get('weights_digest')!r} there; "
                    f"{self.header.get('space')!r}, {self.header.get('weights_digest')!r} here). "
                    f"Their metrics do not apply: move the file aside or search another workdir "
                    f"(nothing was changed)"
                )
        for field in _SETUP:
            if header.get(field) != self.header.get(field):
                theirs = {f: header.get(f) for f in _SETUP}
                ours = {f: self.header.get(f) for f in _SETUP}
                raise ResultsFileError(
                    f"{path} ranked children with {theirs}, this search asks for {ours} "
                    f"({field} differs): scores would not compare. Use the same search options "
                    f"(--config.selection_split, selection_examples, batch_size, "
                    f"calibration_images, calibration_batch_size) or move the file aside "
                    f"(nothing was changed)"
                )

    def _read(self, path: str) -> list[dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        elif lines:  # torn last line (no newline): the write never finished
            lines.pop()
        records: list[dict[str, Any]] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultsFileError(
                    f"{path} line {n} is not JSON ({e}); the file was edited or damaged: fix or "
                    f"remove that line (nothing was changed)"
                ) from e
            if n == 1:
                if not isinstance(value, dict) or "header" not in value:
                    raise ResultsFileError(
                        f"{path} does not start with a header line: it is not a results file "
                        f"of this search (nothing was changed)"
                    )
                self._check_header(path, value["header"])
                continue
            records.append(value)
        return records

    def load(self) -> list[dict[str, Any]]:
        """Every record of every results file (duplicates dropped), checked against the header.

        Raises:
            ResultsFileError: If a file belongs to another run or setup or is damaged.
        """
        seen: set[tuple[str, str]] = set()
        out = []
        for path in self.files():
            for record in self._read(path):
                key = record_key(record)
                if key not in seen:
                    seen.add(key)
                    out.append(record)
        return out

    def _prepare(self) -> None:
        """Creates the file with its header, or cuts a torn last line."""
        os.makedirs(self.folder, exist_ok=True)
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            self._append_line(json.dumps({"header": self.header}, sort_keys=True))
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _append_line(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: Mapping[str, Any]) -> None:
        """Appends one record as one whole line."""
        if not self._ready:
            self._prepare()
            self._ready = True
        self._append_line(json.dumps(record, sort_keys=True))

    def merge_shards(self) -> int:
        """Folds the records of shard files into the main file (unsharded runs only).

        Returns:
            How many records were added to the main file.
        """
        if self.shard and self.shard[1] > 1:
            raise ValueError("merge_shards is for unsharded runs; this one runs a shard")
        main = os.path.join(self.folder, MAIN_FILE)
        have = {record_key(r) for r in self._read(main)} if os.path.isfile(main) else set()
        added = 0
        for path in sorted(glob.glob(os.path.join(self.folder, SHARD_PATTERN))):
            for record in self._read(path):
                key = record_key(record)
                if key not in have:
                    have.add(key)
                    self.append(record)
                    added += 1
        return added
