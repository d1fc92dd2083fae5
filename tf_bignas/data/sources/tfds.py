"""Prepared TFDS datasets (nothing is downloaded), e.g. ``tfds:imagenet2012``."""

from __future__ import annotations

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
)


class TfdsSource(Source):
    """A prepared TFDS image classification dataset (nothing is downloaded)."""

    def __init__(
        self, name: str, *, data_dir: str | None = None, minival: int | float | None = None
    ) -> None:
        """Opens a TFDS dataset.

        Args:
            name: TFDS name, optionally with config and version ("imagenet2012").
            data_dir: TFDS data directory (local or gs://); TFDS's default if None.
            minival: Minival size (see module docstring), or None.

        Raises:
            DataSourceError: If the name is unknown, the dataset is not prepared
                in `data_dir`, or it is not an image classification dataset.
        """
        super().__init__(f"tfds:{name}", minival)
        import tensorflow_datasets as tfds

        self._tfds = tfds
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataSourceError(
                f"unknown TFDS dataset {name!r}; expected a registered TFDS name such as "
                "'imagenet2012' (see tfds.list_builders())"
            ) from e
        where = data_dir or "TFDS's default data_dir"
        if not self.builder.is_prepared():
            raise DataSourceError(
                f"TFDS dataset {name!r} is not prepared in {where!r}; prepare it first "
                f"(e.g. `tfds build {name} --data_dir=...`, with manual downloads for "
                "imagenet2012) or pass the data_dir that holds it"
            )
        keys = self.builder.info.supervised_keys
        features = self.builder.info.features
        if not keys or len(keys) != 2:
            raise DataSourceError(
                f"TFDS dataset {name!r} has no (image, label) supervised keys; expected an "
                "image classification dataset"
            )
        self.image_key, self.label_key = keys
        if not isinstance(features[self.image_key], tfds.features.Image) or not isinstance(
            features[self.label_key], tfds.features.ClassLabel
        ):
            raise DataSourceError(
                f"TFDS dataset {name!r}: expected an Image feature {self.image_key!r} and a "
                f"ClassLabel feature {self.label_key!r}, got {features}"
            )

    def splits(self) -> tuple[str, ...]:
        names = tuple(sorted(self.builder.info.splits.keys()))
        if self.minival is not None and "train" in names:
            names += (MINIVAL,)
        return names

    def _split_spec(self, split: str) -> str:
        if split not in self.splits():
            raise self._unknown_split(split)
        if self.minival is None or split not in ("train", MINIVAL):
            return split
        count = minival_count(self.minival, self.builder.info.splits["train"].num_examples)
        return f"train[:{count}]" if split == MINIVAL else f"train[{count}:]"

    def class_names(self) -> tuple[str, ...]:
        """Names of the ClassLabel feature."""
        return tuple(self.builder.info.features[self.label_key].names)

    def info(self, split: str) -> DataInfo:
        n = int(self.builder.info.splits[self._split_spec(split)].num_examples)
        shape = self.builder.info.features[self.image_key].shape
        decoded = None
        if shape and all(isinstance(d, int) for d in shape[:2]):
            decoded = n * int(shape[0]) * int(shape[1]) * 3
        return DataInfo(
            source=self.spec,
            split=split,
            num_classes=len(self.class_names()),
            class_names=self.class_names(),
            num_examples=n,
            decoded_bytes=decoded,
        )

    def class_counts(self, split: str) -> dict[str, int]:
        ds = self.builder.as_dataset(
            split=self._split_spec(split),
            decoders={self.image_key: self._tfds.decode.SkipDecoding()},
        )
        labels = ds.map(lambda ex: ex[self.label_key], num_parallel_calls=tf.data.AUTOTUNE)
        counts = np.zeros(len(self.class_names()), np.int64)
        for batch in labels.batch(8192).as_numpy_iterator():
            counts += np.bincount(batch, minlength=counts.size)
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
        check_shard(num_shards, shard_index)
        spec = self._split_spec(split)
        read = spec if num_shards == 1 else self._tfds.even_splits(spec, n=num_shards)[shard_index]
        ds = self.builder.as_dataset(
            split=read,
            decoders={self.image_key: self._tfds.decode.SkipDecoding()},
            shuffle_files=shuffle_files,
            read_config=self._tfds.ReadConfig(shuffle_seed=seed),
        )
        ds = ds.map(lambda ex: (ex[self.image_key], tf.cast(ex[self.label_key], tf.int32)))
        num = int(self.builder.info.splits[read].num_examples)
        return Examples(ds, "bytes", self.info(split), num, validated=True)
