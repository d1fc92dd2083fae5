"""One child being exported: its Keras models and the images it is checked on.

`ChildData` builds the sliced child, the deployable model (normalisation
folded in) and a float SavedModel lazily, once, and reads the verification
split and the int8 calibration sample; the export steps (`export_lib`) and
the card (`card_builder`) share one instance.

May import what `tf_bignas.export` may (see its `__init__`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_bignas import data as data_lib
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION
from tf_bignas.export import models
from tf_bignas.export.children import ExportChild
from tf_bignas.export.options import RAW_PIXELS, SAVED_MODEL_DIR, ExportOptions
from tf_bignas.model.slicing import extract_child
from tf_bignas.run.config import minival_size
from tf_bignas.run.workdir import Workdir


def training_sample(
    workdir: Workdir, resolution: int, num_images: int, batch_size: int
) -> tf.data.Dataset:
    """A fixed random sample of the training split (uint8 pixels, evaluation transform).

    The same sample the training run calibrates BN statistics on (same seed),
    cut to `num_images`.
    """
    c = workdir.config
    d = c.data
    return data_lib.build_calibration_dataset(
        d.source,
        d.train_split,
        resolution,
        num_images,
        batch_size,
        seed=int(c.seed),
        data_dir=d.data_dir or None,
        minival=minival_size(c),
        strict=d.strict,
        normalize=False,
    )


def _topk(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return np.any(top == labels[:, None], axis=-1)


class Tally:
    """Top-1/top-5 of one model, and how it compares with a reference."""

    def __init__(self) -> None:
        self.n = 0
        self.top1 = 0
        self.top5 = 0
        self.agree = 0
        self.max_abs_diff = 0.0

    def add(self, logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> None:
        self.n += len(labels)
        self.top1 += int(_topk(logits, labels, 1).sum())
        self.top5 += int(_topk(logits, labels, 5).sum())
        if reference is not None:
            self.agree += int((logits.argmax(-1) == reference.argmax(-1)).sum())
            self.max_abs_diff = max(self.max_abs_diff, float(np.abs(logits - reference).max()))

    def accuracy(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {"top1": self.top1 / n, "top5": self.top5 / n, "num_examples": self.n}


class ChildData:
    """A child's models (built once, lazily) and the images it is verified on.

    Args:
        workdir: The trained run.
        child: The child.
        folder: Its export folder.
        options: How to export (resolved).
    """

    def __init__(
        self, workdir: Workdir, child: ExportChild, folder: str, options: ExportOptions
    ) -> None:
        self.wd = workdir
        self.child = child
        self.arch = child.arch
        self.folder = folder
        self.options = options
        self.norm = DEFAULT_NORMALIZATION if options.fold_normalization else None
        self.split = options.verify_split or workdir.config.data.eval_split
        self._child_model: keras.Model | None = None
        self._deployable: keras.Model | None = None
        self._eval: tf.data.Dataset | None = None
        self._float_saved_model: str | None = None
        self._first: tuple[np.ndarray, np.ndarray] | None = None
        self._class_names: list[str] | None | bool = False

    @property
    def child_model(self) -> keras.Model:
        if self._child_model is None:
            self._child_model = extract_child(self.wd.supernet, self.arch)
        return self._child_model

    @property
    def deployable(self) -> keras.Model:
        if self._deployable is None:
            self._deployable = models.deployable_model(
                self.child_model, self.norm, self.options.input_dtype, name=self.child.name
            )
        return self._deployable

    def eval_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(raw float pixels [B, R, R, 3], labels) of the verification split."""
        if self._eval is None:
            # Cached in memory when small, for the passes of later formats; not
            # when only part of the split is read (a partial pass drops a cache).
            self._eval = self.wd.eval_dataset(
                self.split, self.arch.resolution, self.options.verify_batch,
                normalization=RAW_PIXELS,
                cache="auto" if self.options.verify_examples is None else False,
            )  # fmt: skip
        left = self.options.verify_examples
        for batch in self._eval:
            images, labels = batch["image"].numpy(), batch["label"].numpy()
            if left is not None:
                images, labels = images[:left], labels[:left]
                left -= len(labels)
            yield images, labels
            if left is not None and left <= 0:
                return

    def model_input(self, raw: np.ndarray) -> np.ndarray:
        """Raw pixels -> what the exported models take (raw, or normalised)."""
        return raw if self.norm is not None else DEFAULT_NORMALIZATION.apply_numpy(raw)

    def keras_logits(self, raw: np.ndarray) -> np.ndarray:
        x = DEFAULT_NORMALIZATION.apply_numpy(raw)
        return np.asarray(self.child_model(x, training=False))

    def first_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The first verification batch (checks of the reloaded Keras file and SavedModel)."""
        if self._first is None:
            dataset = self.wd.eval_dataset(
                self.split, self.arch.resolution, self.options.verify_batch,
                normalization=RAW_PIXELS, cache=False,
            )  # fmt: skip
            batch = next(iter(dataset))
            self._first = (batch["image"].numpy(), batch["label"].numpy())
        return self._first

    def representative_images(self) -> Iterator[np.ndarray]:
        """Random training images [1, R, R, 3] on the models' input scale (for int8)."""
        n = self.options.representative_examples
        for batch in training_sample(self.wd, self.arch.resolution, n, min(n, 64)):
            for image in batch["image"].numpy().astype(np.float32):
                yield self.model_input(image[None])

    def float_saved_model(self, work: str) -> str:
        """A SavedModel with float input to convert from."""
        if self.options.input_dtype == "float32":
            return os.path.join(self.folder, SAVED_MODEL_DIR)
        if self._float_saved_model is None:
            path = os.path.join(work, "float_saved_model")
            model = models.deployable_model(self.child_model, self.norm, "float32")
            models.write_saved_model(model, path)
            self._float_saved_model = path
        return self._float_saved_model

    def class_names(self) -> list[str] | None:
        """The class names of the run's data, index order (None if the data is not here)."""
        if self._class_names is False:
            d = self.wd.config.data
            try:
                info = data_lib.dataset_info(
                    d.source, self.split, d.data_dir or None, minival=minival_size(self.wd.config)
                )
                self._class_names = [str(n) for n in info.class_names]
            except (ValueError, OSError):
                self._class_names = None
        return self._class_names  # type: ignore[return-value]
