"""Atomic file writes: a crash never leaves a half-written file behind.

Files are written to a temporary name in the destination folder and renamed
over the destination, so a reader sees the old file or the new one, never a
mix. They get the same mode as any file the process creates with `open()`
(0666 minus the umask, usually 0644): the temporary file is created with
`os.open(..., 0o666)`, not with `tempfile.mkstemp`, whose files are 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file in the same folder and a rename.

    Args:
        path: Destination path (its folder is created if missing).
        data: The bytes.

    Raises:
        OSError: If the folder cannot be created or written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
    # O_EXCL: a fresh name, never someone else's file; mode 0o666 & ~umask like open().
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, value: Any) -> None:
    """Writes `value` as indented JSON to `path` atomically.

    Args:
        path: Destination path.
        value: A JSON-able value.
    """
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def sha256_path(path: str, length: int = 16) -> str:
    """The SHA-256 of a file, or of a folder's files (relative names and contents), in hex.

    The one digest of the project: model cards, benchmark CSVs, the latency
    table and the workdir record all store it, so a file can be checked
    against any of them.

    Args:
        path: A file or a folder.
        length: Hex digits kept (16 by default, as every record stores).

    Returns:
        The hex digest, truncated to `length`.

    Raises:
        OSError: If `path` cannot be read.
    """
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for n in sorted(names):
                full = os.path.join(root, n)
                h.update(os.path.relpath(full, path).encode() + b"\0")
                _hash_file(h, full)
    else:
        _hash_file(h, path)
    return h.hexdigest()[:length]


def _hash_file(h: Any, path: str) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
