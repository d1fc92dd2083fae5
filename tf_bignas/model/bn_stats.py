"""Calibrated BN statistics per child, saved and loaded as one `.npz` file.

Batch norm in the supernet keeps no running averages during training; each
child gets its own statistics by re-calibration (`tf_bignas.run.evaluator`),
and this store keeps them keyed by the child's arch (resolution included).
"""

from __future__ import annotations

import io
import json

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
