"""Public builders of the training and evaluation `tf.data` pipelines.

Training elements carry one shared patch at every training resolution:

    {"images": {res: float32 [B, res, res, 3] for res in resolutions},
     "label": int32 [B]}

Why all training resolutions in every batch, rather than only the ones the
step samples: the sandwich rule trains the largest child at the largest
resolution and the smallest child at the smallest resolution on every step,
plus N random children at random resolutions, so most steps need most
resolutions anyway. A fixed element structure keeps the training step traced
once (a per-step subset would retrace per subset, or force padding), and it
keeps the input pipeline independent of the architecture sampler, whose
random state then lives in one place. The extra cost is small: the patches
are made once per batch from the base patch with one bicubic resize each (a
few percent of the pipeline's time, see `benchmarks/README.md`).

The resizes run per batch, after batching: one batched resize per resolution
is faster than one per image (measured in `benchmarks/data_pipeline.py`).

Evaluation elements: `{"image": float32 [B, r, r, 3], "label": int32 [B]}`.

Distribution: pass the `tf.distribute.InputContext` that
`strategy.distribute_datasets_from_function` hands over; each input pipeline
then reads its own disjoint shard (`input_pipeline_id` of
`num_input_pipelines`) and batches `get_per_replica_batch_size(batch_size)`.

Determinism: with a seed, the order and every random crop, flip and
augmentation are fixed: shuffling is seeded and augmentation uses stateless
random ops keyed on (seed, input pipeline, example position in the stream).

Caching: small datasets (decoded size at most `CACHE_LIMIT_BYTES` per input
pipeline, e.g. CIFAR-10 or the embedded digits) are decoded once and kept in
memory; large ones (ImageNet) are decoded every epoch with JPEG
decode-and-crop, which only decodes the crop window.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tf_bignas.data import augment as augment_lib
from tf_bignas.data import sources, transforms
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization
from tf_bignas.search_space import SearchSpace

CACHE_LIMIT_BYTES = 2 * 1024**3
SHUFFLE_BUFFER_LIMIT = 50_000
_MAX_SEED = 2**31 - 1

CacheOption = bool | str


def _check_resolution(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 8:
        raise ValueError(f"{what} must be an int >= 8, got {value!r}")
    return value


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _shard_and_batch(
    batch_size: int, input_context: tf.distribute.InputContext | None
) -> tuple[int, int, int]:
    """(num_shards, shard_index, per-replica batch size)."""
    if input_context is None:
        return 1, 0, batch_size
    per_replica = input_context.get_per_replica_batch_size(batch_size)
    return input_context.num_input_pipelines, input_context.input_pipeline_id, per_replica


def _should_cache(cache: CacheOption, decoded_bytes: int | None, num_shards: int) -> bool:
    if cache == "auto":
        return decoded_bytes is not None and decoded_bytes / num_shards <= CACHE_LIMIT_BYTES
    if isinstance(cache, bool):
        return cache
    if isinstance(cache, str) and cache:
        return True
    raise ValueError(f"cache must be 'auto', True, False or a file path, got {cache!r}")


def _cache(ds: tf.data.Dataset, cache: CacheOption, shard_index: int) -> tf.data.Dataset:
    if isinstance(cache, str) and cache != "auto":
        return ds.cache(f"{cache}.shard{shard_index}")
    return ds.cache()


def _options(deterministic: bool, sharded_by_us: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    if sharded_by_us:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _decode_map(kind: str) -> Any:
    def decode(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        contents = tf.io.read_file(image) if kind == "path" else image
        return transforms.decode_rgb(contents), label

    return decode


def build_train_dataset(
    source: str | sources.Source,
    split: str,
    resolutions: Sequence[int],
    batch_size: int,
    *,
    data_dir: str | None = None,
    augment: str = "autoaugment",
    base_resolution: int | None = None,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    minival: int | float | None = None,
    strict: bool = False,
    space: SearchSpace | None = None,
    repeat: bool = True,
    cache: CacheOption = "auto",
    crop_scale: Sequence[float] = transforms.DEFAULT_CROP_SCALE,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """Builds the multi-resolution training pipeline (shared patch per example).

    Args:
        source: "folder:PATH", "tfds:NAME", "embedded", or an open `Source`.
        split: Split to read, usually "train" (without the minival slice).
        resolutions: Training resolutions; every batch carries all of them.
        batch_size: Global batch size (divided by the replicas in sync when
            `input_context` is given).
        data_dir: TFDS data directory (TFDS sources).
        augment: "autoaugment" (ImageNet policy), "randaugment" or "none".
        base_resolution: Side of the shared patch; max(resolutions) if None.
            The paper uses 224 on ImageNet.
        seed: Seed for a deterministic stream; nondeterministic if None.
        input_context: From `distribute_datasets_from_function`, or None.
        minival: Minival size (number or fraction of train images), or None.
        strict: Folder sources: fail on an unreadable file instead of skipping it.
        space: If given, each resolution must be one of its training resolutions.
        repeat: Repeat indefinitely (True) or stop after one pass.
        cache: "auto" (cache decoded images in memory when small), True, False,
            or a file path prefix to cache decoded images on disk.
        crop_scale: (min, max) area fraction of the random resized crop.
        normalization: The input normalisation.
        drop_remainder: Drop the last partial batch (static batch shape).

    Returns:
        A dataset of `{"images": {res: float32 [B, res, res, 3]}, "label": int32 [B]}`
        with int keys, B the per-replica batch size.

    Raises:
        ValueError: On a bad resolution, batch size, augment or cache option
            (`InvalidArchError` for a resolution the space does not allow).
        sources.DataSourceError: On a bad source, split or minival size.
        FileNotFoundError: If a folder source or split folder is missing.
    """
    if isinstance(resolutions, int) or not resolutions:
        raise ValueError(f"resolutions must be a non-empty sequence of ints, got {resolutions!r}")
    res = tuple(sorted({_check_resolution(r, "resolution") for r in resolutions}))
    if space is not None:
        for r in res:
            space.validate_resolution(r, training=True)
    base = _check_resolution(base_resolution or max(res), "base_resolution")
    _check_batch_size(batch_size)
    augment_lib.check_augment_name(augment)
    if len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(
            f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale}"
        )

    src = sources.open_source(source, data_dir=data_dir, minival=minival, strict=strict)
    num_shards, shard_index, per_replica = _shard_and_batch(batch_size, input_context)
    deterministic = seed is not None
    base_seed = seed if seed is not None else random.SystemRandom().randrange(_MAX_SEED)
    examples = src.examples(
        split,
        num_shards=num_shards,
        shard_index=shard_index,
        shuffle_files=True,
        seed=base_seed,
    )
    if examples.num_examples < per_replica and drop_remainder:
        raise sources.DataSourceError(
            f"split {split!r} of {src.spec!r} has {examples.num_examples} examples in this "
            f"input pipeline, fewer than one batch of {per_replica}; expected at least one batch"
        )
    ds, kind = examples.dataset, examples.kind
    if _should_cache(cache, examples.info.decoded_bytes, num_shards):
        if kind != "pixels":
            ds = ds.map(_decode_map(kind), num_parallel_calls=tf.data.AUTOTUNE)
            if not examples.validated and not strict:
                ds = ds.ignore_errors(log_warning=True)
            kind = "pixels"
        ds = _cache(ds, cache, shard_index)
        buffer = min(examples.num_examples, SHUFFLE_BUFFER_LIMIT)
    else:
        # Paths are tiny: shuffle the whole list. Encoded records: a bounded buffer.
        limit = examples.num_examples if kind == "path" else SHUFFLE_BUFFER_LIMIT // 5
        buffer = min(examples.num_examples, limit)
    ds = ds.shuffle(buffer, seed=base_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    stream_seed = tf.constant([base_seed, shard_index], tf.int64)

    def make_patch(position: tf.Tensor, example: tuple[tf.Tensor, tf.Tensor]) -> Any:
        image, label = example
        element_seed = tf.random.experimental.stateless_fold_in(stream_seed, position)
        patch = transforms.train_patch(
            image,
            element_seed,
            base_resolution=base,
            kind=kind,
            augment=augment,
            crop_scale=crop_scale,
        )
        return patch, label

    ds = ds.enumerate().map(make_patch, num_parallel_calls=tf.data.AUTOTUNE)
    if kind != "pixels" and not examples.validated and not strict:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(per_replica, drop_remainder=drop_remainder)

    def to_resolutions(patches: tf.Tensor, labels: tf.Tensor) -> dict[str, Any]:
        images = transforms.resize_patches(patches, res)
        return {
            "images": {r: normalization.apply(x) for r, x in images.items()},
            "label": labels,
        }

    ds = ds.map(to_resolutions, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(deterministic, input_context is not None))


def build_eval_dataset(
    source: str | sources.Source,
    split: str,
    resolution: int,
    batch_size: int,
    *,
    data_dir: str | None = None,
    crop_fraction: float = transforms.DEFAULT_EVAL_CROP_FRACTION,
    input_context: tf.distribute.InputContext | None = None,
    minival: int | float | None = None,
    strict: bool = False,
    space: SearchSpace | None = None,
    cache: CacheOption = "auto",
    normalization: Normalization = DEFAULT_NORMALIZATION,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Builds the evaluation pipeline: centre crop, bicubic resize, normalise.

    One pass over the split in a fixed order. When cached, the resized images
    are cached, so repeated evaluations at one resolution skip decoding.

    Args:
        source: "folder:PATH", "tfds:NAME", "embedded", or an open `Source`.
        split: Split to read ("test", "validation", "minival", ...).
        resolution: Output resolution.
        batch_size: Global batch size (per replica with `input_context`).
        data_dir: TFDS data directory (TFDS sources).
        crop_fraction: Fraction of the shorter side kept by the centre crop.
        input_context: From `distribute_datasets_from_function`, or None.
        minival: Minival size (number or fraction of train images), or None.
        strict: Folder sources: fail on an unreadable file instead of skipping it.
        space: If given, the resolution must be one the space allows.
        cache: "auto", True, False or a file path prefix (see `build_train_dataset`).
        normalization: The input normalisation.
        drop_remainder: Drop the last partial batch.

    Returns:
        A dataset of `{"image": float32 [B, r, r, 3], "label": int32 [B]}`.

    Raises:
        ValueError: On a bad resolution, batch size, crop fraction or cache
            option (`InvalidArchError` for a resolution the space does not allow).
        sources.DataSourceError: On a bad source, split or minival size.
        FileNotFoundError: If a folder source or split folder is missing.
    """
    resolution = _check_resolution(resolution, "resolution")
    if space is not None:
        space.validate_resolution(resolution)
    _check_batch_size(batch_size)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    src = sources.open_source(source, data_dir=data_dir, minival=minival, strict=strict)
    num_shards, shard_index, per_replica = _shard_and_batch(batch_size, input_context)
    examples = src.examples(split, num_shards=num_shards, shard_index=shard_index)
    kind = examples.kind

    def transform(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        out = transforms.eval_image(image, resolution, kind=kind, crop_fraction=crop_fraction)
        return out, label

    ds = examples.dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    if kind != "pixels" and not examples.validated and not strict:
        ds = ds.ignore_errors(log_warning=True)
    cached_bytes = examples.num_examples * resolution * resolution * 3
    if _should_cache(cache, cached_bytes, 1):
        ds = _cache(ds, cache, shard_index)
    ds = ds.batch(per_replica, drop_remainder=drop_remainder)

    def finish(images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"image": normalization.apply(images), "label": labels}

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(True, input_context is not None))


def dataset_info(
    source: str | sources.Source,
    split: str,
    data_dir: str | None = None,
    *,
    minival: int | float | None = None,
    strict: bool = False,
) -> sources.DataInfo:
    """Number of classes, class names, number of examples and skipped files of a split.

    Args:
        source: "folder:PATH", "tfds:NAME", "embedded", or an open `Source`.
        split: The split.
        data_dir: TFDS data directory (TFDS sources).
        minival: Minival size, or None.
        strict: Folder sources: fail on an unreadable file.

    Returns:
        The split's `DataInfo`.

    Raises:
        sources.DataSourceError: On a bad source, split or minival size.
        FileNotFoundError: If a folder source or split folder is missing.
    """
    src = sources.open_source(source, data_dir=data_dir, minival=minival, strict=strict)
    return src.info(split)
