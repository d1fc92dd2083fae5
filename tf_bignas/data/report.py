"""A pre-flight report on a data source: class counts, skipped files, batch shapes.

`tools/inspect_data.py` prints it; users run that before a long job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tf_bignas.data import pipeline, sources

_TRAIN_SPLITS = ("train", sources.MINIVAL)


def inspect_data(
    source: str,
    split: str,
    resolutions: Sequence[int],
    *,
    num_batches: int = 2,
    batch_size: int = 8,
    data_dir: str | None = None,
    minival: int | float | None = None,
    strict: bool = False,
    augment: str = "autoaugment",
    seed: int = 0,
) -> dict[str, Any]:
    """Indexes a split and reads a few batches through the real pipeline.

    Training splits ("train", "minival") go through `build_train_dataset` with
    all resolutions in one batch; other splits through `build_eval_dataset`,
    once per resolution.

    Args:
        source: "folder:PATH", "tfds:NAME" or "embedded".
        split: The split.
        resolutions: Resolutions to build batches at.
        num_batches: Batches to read (per resolution for evaluation splits).
        batch_size: Batch size.
        data_dir: TFDS data directory.
        minival: Minival size, or None.
        strict: Fail on an unreadable file instead of skipping it.
        augment: Training augmentation.
        seed: Pipeline seed.

    Returns:
        A JSON-able dict: source, split, num_examples, num_classes,
        images_per_class, skipped {count, files [{path, reason}]}, batches
        (number read), batch_shapes {resolution: [B, r, r, 3]}, label_shape,
        seconds.

    Raises:
        ValueError: On bad arguments (see the builders).
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    start = time.perf_counter()
    src = sources.open_source(source, data_dir=data_dir, minival=minival, strict=strict)
    info = src.info(split)
    batch_size = min(batch_size, info.num_examples)
    shapes: dict[str, list[int]] = {}
    label_shape: list[int] = []
    read = 0
    if split in _TRAIN_SPLITS:
        ds = pipeline.build_train_dataset(
            src, split, resolutions, batch_size, augment=augment, seed=seed
        )
        for batch in ds.take(num_batches):
            read += 1
            shapes = {str(r): list(x.shape) for r, x in sorted(batch["images"].items())}
            label_shape = list(batch["label"].shape)
    else:
        for r in sorted(set(resolutions)):
            ds = pipeline.build_eval_dataset(src, split, r, batch_size)
            for batch in ds.take(num_batches):
                read += 1
                shapes[str(r)] = list(batch["image"].shape)
                label_shape = list(batch["label"].shape)
    return {
        "source": src.spec,
        "split": split,
        "num_examples": info.num_examples,
        "num_classes": info.num_classes,
        "images_per_class": src.class_counts(split),
        "skipped": {
            "count": len(info.skipped),
            "files": [{"path": s.path, "reason": s.reason} for s in info.skipped],
        },
        "batches": read,
        "batch_shapes": shapes,
        "label_shape": label_shape,
        "seconds": round(time.perf_counter() - start, 3),
    }
