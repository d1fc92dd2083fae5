"""Image folders: ``PATH/<split>/<class>/*.jpg|jpeg|png|bmp|gif``, checked once and cached."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tf_bignas.common.files import atomic_write_bytes
from tf_bignas.data import transforms
from tf_bignas.data.sources.base import (
    MINIVAL,
    CorruptImageError,
    DataInfo,
    DataSourceError,
    Examples,
    SkippedFile,
    Source,
    check_shard,
    minival_count,
    stratified_minival,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


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


def _listdir(folder: str) -> list[str]:
    """`tf.io.gfile.listdir`, with a clear error for a name that is not UTF-8.

    Raises:
        DataSourceError: Naming the folder and the undecodable name.
    """
    try:
        return tf.io.gfile.listdir(folder)
    except UnicodeDecodeError as e:
        bad = [n for n in _raw_names(folder) if not _is_utf8(n)]
        shown = ", ".join(repr(n) for n in bad[:3]) or repr(e.object[e.start : e.end + 8])
        raise DataSourceError(
            f"folder {folder!r} holds a name that is not valid UTF-8 ({shown}); rename it: "
            "split, class and image names must be UTF-8 text"
        ) from None


def _raw_names(folder: str) -> list[bytes]:
    try:
        return sorted(os.listdir(os.fsencode(folder)))
    except OSError:
        return []


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
            buf = io.BytesIO()
            np.savez(
                buf,
                keys=keys,
                nbytes=np.where(ok, nbytes, -1),
                reasons=np.array(json.dumps(reasons)),
            )
            atomic_write_bytes(cache_file, buf.getvalue())
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
        listdir = _listdir
        return tuple(
            sorted(
                d.rstrip("/")
                for d in listdir(self.root)
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
                for d in _listdir(split_dir)
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
                f
                for f in _listdir(class_dir)
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
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
            mask = stratified_minival(labels, rel, count)
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
        check_shard(num_shards, shard_index)
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
