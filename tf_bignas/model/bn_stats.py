"""Calibrated BN statistics per child, saved and loaded as one `.npz` file.

Batch norm in the supernet keeps no running averages during training; each
child gets its own statistics by re-calibration (`tf_bignas.run.evaluator`),
and this store keeps them keyed by the child's arch (resolution included).

Several stages add children to a run's `bn_stats.npz` (the search, int8
ranking, export): each does it with `merge_bn_stats(path, {arch: stats})`,
which reads the file again under an exclusive lock, adds or replaces only
those children and writes it atomically, so no writer loses another's
entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import zipfile
from collections.abc import Iterator, Mapping

import numpy as np

from tf_bignas.common.files import atomic_write_bytes
from tf_bignas.space import ArchConfig

BNStats = dict[str, tuple[np.ndarray, np.ndarray]]


class BNStatsStore:
    """Calibrated BN statistics per child: arch key -> {bn layer name: (mean, var)}.

    Arrays are sliced to the child's active channels. The store saves and loads
    atomically as one `.npz` file.
    """

    def __init__(self) -> None:
        self._stats: dict[str, BNStats] = {}

    def __contains__(self, arch: ArchConfig) -> bool:
        return arch.key in self._stats

    def __len__(self) -> int:
        return len(self._stats)

    def put(self, arch: ArchConfig, stats: BNStats) -> None:
        """Stores a child's statistics (replacing earlier ones)."""
        self._stats[arch.key] = {k: (np.asarray(m), np.asarray(v)) for k, (m, v) in stats.items()}

    def get(self, arch: ArchConfig) -> BNStats:
        """Returns a child's statistics.

        Raises:
            KeyError: If the child was never calibrated.
        """
        if arch.key not in self._stats:
            raise KeyError(
                f"no calibrated BN statistics for arch {arch.to_paper_notation()!r}; "
                f"calibrate it first ({len(self._stats)} children are calibrated)"
            )
        return self._stats[arch.key]

    def archs(self) -> list[ArchConfig]:
        """The calibrated children."""
        return [ArchConfig.from_json(k) for k in self._stats]

    def save(self, path: str) -> None:
        """Writes the store to `path` (.npz) atomically."""
        arrays: dict[str, np.ndarray] = {}
        index = []
        for i, (key, stats) in enumerate(self._stats.items()):
            names = sorted(stats)
            index.append({"arch": key, "layers": names})
            for j, name in enumerate(names):
                arrays[f"c{i}_{j}_mean"], arrays[f"c{i}_{j}_var"] = stats[name]
        arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str) -> BNStatsStore:
        """Reads a store written by `save`."""
        store = cls()
        with np.load(path) as data:
            index = json.loads(data["index"].tobytes().decode())
            for i, entry in enumerate(index):
                store._stats[entry["arch"]] = {
                    name: (data[f"c{i}_{j}_mean"], data[f"c{i}_{j}_var"])
                    for j, name in enumerate(entry["layers"])
                }
        return store


@contextlib.contextmanager
def _folder_locked(path: str) -> Iterator[None]:
    """Holds an exclusive `flock` on the folder of `path` (a no-op on remote storage)."""
    if "://" in path:
        yield
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def merge_bn_stats(path: str, stats: Mapping[ArchConfig, BNStats]) -> int:
    """Adds children's statistics to the store file `path`, keeping every other child's.

    The file is read again and written atomically while an exclusive lock of
    its folder is held, so concurrent merges (another stage, another process)
    never drop each other's children. A child already in the file is replaced.

    Args:
        path: The `.npz` store (created if missing).
        stats: {arch: its calibrated statistics}.

    Returns:
        The number of children in the file after the merge.

    Raises:
        ValueError: If the existing file is not a readable store (it is left
            as it was; the message names it).
    """
    with _folder_locked(path):
        store = BNStatsStore()
        if os.path.isfile(path):
            try:
                store = BNStatsStore.load(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                raise ValueError(
                    f"{path} is not a readable BN statistics store ({type(e).__name__}: {e}); "
                    "nothing was written. Move it aside to start a new one (the children in it "
                    "are then calibrated again when needed)"
                ) from e
        for arch, child_stats in stats.items():
            store.put(arch, child_stats)
        store.save(path)
        return len(store)
