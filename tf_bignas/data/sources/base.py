"""What every source is: the `Source` interface, its errors, split info and minival."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

MINIVAL = "minival"


class DataSourceError(ValueError):
    """A data source, split or option is invalid (the message says what was expected)."""


class CorruptImageError(DataSourceError):
    """An image file cannot be decoded and the source is strict."""


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """An image file left out because it cannot be read or decoded.

    Attributes:
        path: The file.
        reason: The decoder's or the file system's message.
    """

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about one split.

    Attributes:
        source: The source spec, e.g. "folder:/data/cifar10".
        split: The split.
        num_classes: Number of classes (the classifier's width).
        class_names: Class names, indexed by label id.
        num_examples: Readable examples in the split.
        skipped: Files left out of the split because they cannot be decoded.
        decoded_bytes: Total size of the decoded uint8 images if known, else None.
    """

    source: str
    split: str
    num_classes: int
    class_names: tuple[str, ...]
    num_examples: int
    skipped: tuple[SkippedFile, ...] = ()
    decoded_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        data["skipped"] = [dataclasses.asdict(s) for s in self.skipped]
        return data


@dataclasses.dataclass(frozen=True)
class Examples:
    """One shard of one split, as the pipeline consumes it.

    Attributes:
        dataset: Elements `(image, label)`: `label` is int32; `image` is a
            uint8 [H, W, 3] tensor (kind "pixels"), encoded bytes ("bytes") or a
            file path ("path").
        kind: "pixels", "bytes" or "path".
        info: The split's info (whole split, not just this shard).
        num_examples: Examples in this shard.
        validated: Whether every image is known to decode.
        items: The same images as an array for random access (file paths, or
            uint8 pixels [N, H, W, 3]), or None for sequential-only sources.
        labels: int32 labels [N] matching `items`, or None.
    """

    dataset: tf.data.Dataset
    kind: str
    info: DataInfo
    num_examples: int
    validated: bool
    items: np.ndarray | None = None
    labels: np.ndarray | None = None


def check_minival(minival: int | float | None) -> None:
    """Checks a minival size.

    Args:
        minival: None, a positive number of images, or a fraction in (0, 1).

    Raises:
        DataSourceError: If it is none of these.
    """
    if minival is None:
        return
    if isinstance(minival, bool) or not isinstance(minival, int | float):
        raise DataSourceError(f"minival must be an int, a float or None, got {minival!r}")
    if isinstance(minival, int) and minival < 1:
        raise DataSourceError(f"minival as a number of images must be >= 1, got {minival}")
    if isinstance(minival, float) and not 0.0 < minival < 1.0:
        raise DataSourceError(f"minival as a fraction must be in (0, 1), got {minival}")


def minival_count(minival: int | float, num_train: int) -> int:
    """Number of minival images taken out of a training split.

    Args:
        minival: Number of images or fraction (see `check_minival`).
        num_train: Size of the whole training split.

    Returns:
        The count, at least 1.

    Raises:
        DataSourceError: If the count would leave no training data.
    """
    check_minival(minival)
    count = int(minival) if isinstance(minival, int) else max(1, round(minival * num_train))
    if count >= num_train:
        raise DataSourceError(
            f"minival={minival!r} takes {count} images but the training split has only "
            f"{num_train}; expected fewer"
        )
    return count


def stratified_minival(labels: np.ndarray, keys: Sequence[str], count: int) -> np.ndarray:
    """Boolean mask of a class-stratified, hash-ordered selection of `count` examples."""
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    quota = count * sizes / labels.size
    take = np.floor(quota).astype(int)
    # Largest remainders get the images left over by rounding down.
    for i in np.argsort(-(quota - take), kind="stable")[: count - take.sum()]:
        take[i] += 1
    order = np.array([hashlib.sha1(k.encode("utf-8")).hexdigest() for k in keys])
    mask = np.zeros(labels.size, dtype=bool)
    for cls, n in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        chosen = members[np.argsort(order[members], kind="stable")[:n]]
        mask[chosen] = True
    return mask


class Source(abc.ABC):
    """A dataset with named splits. Instances cache what they index."""

    def __init__(self, spec: str, minival: int | float | None = None) -> None:
        check_minival(minival)
        self.spec = spec
        self.minival = minival

    @abc.abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Names of the splits available (including "minival" when configured)."""

    @abc.abstractmethod
    def info(self, split: str) -> DataInfo:
        """Classes, size and skipped files of a split.

        Raises:
            DataSourceError: If the split does not exist or holds no images.
        """

    @abc.abstractmethod
    def class_counts(self, split: str) -> dict[str, int]:
        """Number of images per class name in a split."""

    @abc.abstractmethod
    def examples(
        self,
        split: str,
        *,
        num_shards: int = 1,
        shard_index: int = 0,
        shuffle_files: bool = False,
        seed: int | None = None,
    ) -> Examples:
        """One shard of a split, in a fixed order (shuffling is the pipeline's job).

        Args:
            split: The split.
            num_shards: Number of disjoint shards that together cover the split.
            shard_index: Which shard, in [0, num_shards).
            shuffle_files: Shuffle the order of underlying files (TFDS).
            seed: Seed for `shuffle_files`.

        Returns:
            The shard's `Examples`.
        """

    def _unknown_split(self, split: str) -> DataSourceError:
        hint = ""
        if split == MINIVAL and self.minival is None:
            hint = " (split 'minival' needs a minival size, e.g. minival=10000 or 0.02)"
        return DataSourceError(
            f"source {self.spec!r} has no split {split!r}; available: {list(self.splits())}{hint}"
        )


def check_shard(num_shards: int, shard_index: int) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataSourceError(
            f"shard_index {shard_index} with num_shards {num_shards}: expected "
            "num_shards >= 1 and 0 <= shard_index < num_shards"
        )
