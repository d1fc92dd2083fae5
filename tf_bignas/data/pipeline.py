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
are made once per batch from the base patch with one bicubic resize each
(under a tenth of the pipeline's time on CIFAR-10, see `benchmarks/README.md`).

The resizes run per batch, after batching: one batched resize per resolution
is about 3x faster than one per image (measured by `benchmarks/data_pipeline.py`).

Transport (`transport=`): what leaves the host. ``"float"`` (the elements
above, normalised float32 at every resolution), ``"uint8"`` (the same images
as uint8 pixels, a quarter of the bytes; the step normalises them) or
``"patch"`` (`{"patch": uint8 [B, base, base, 3], "label"}`: only the shared
patch, which the step resizes to every resolution and normalises, see
`tf_bignas.data.device`). `benchmarks/README.md` compares their bytes per
example and host images per second.

Evaluation elements: `{"image": float32 [B, r, r, 3], "label": int32 [B]}`.

Distribution: pass the `tf.distribute.InputContext` that
`strategy.distribute_datasets_from_function` hands over; each input pipeline
then reads its own disjoint shard (`input_pipeline_id` of
`num_input_pipelines`) and batches `get_per_replica_batch_size(batch_size)`.

Determinism: with a seed, the order and every random crop, flip and
augmentation are fixed: shuffling is seeded and augmentation uses stateless
random ops keyed on (seed, input pipeline, example position in the stream).

Caching and shuffling: small datasets (decoded size at most
`CACHE_LIMIT_BYTES` per input pipeline, e.g. CIFAR-10 or the embedded digits)
are decoded once into memory; large image folders (ImageNet) are decoded every
epoch with JPEG decode-and-crop, which decodes only the crop window. Both are
shuffled in full through a shuffle of their indices, so the pipeline starts at
once and a checkpointed iterator (`tf.train.Checkpoint(data=iterator)`) stores
int64 indices, not images. TFDS sources that are not cached are read
sequentially through a `shuffle_buffer` of encoded images (TFDS also shuffles
its files), whose contents a checkpointed iterator does store.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tf_bignas.data import augment as augment_lib
from tf_bignas.data import sources, transforms
from tf_bignas.data.device import TRANSPORTS
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization

CACHE_LIMIT_BYTES = 2 * 1024**3
DEFAULT_SHUFFLE_BUFFER = 10_000
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
    raise ValueError(f"cache must be 'auto', True or False, got {cache!r}")


@dataclasses.dataclass(frozen=True)
class _Table:
    """Random-access examples: `image(i)` (pixels or a path) and `label(i)`."""

    kind: str
    image: Callable[[tf.Tensor], tf.Tensor]
    label: Callable[[tf.Tensor], tf.Tensor]
    size: int


def _pixel_table(flat: np.ndarray, shapes: np.ndarray, labels: np.ndarray) -> _Table:
    """Decoded images held in memory, from their concatenated pixels and shapes.

    Images of one shape are stored stacked; mixed shapes as one flat buffer
    with offsets.
    """
    label_table = tf.constant(np.asarray(labels, np.int32))
    shapes = np.asarray(shapes, np.int64).reshape(-1, 3)
    if len(np.unique(shapes, axis=0)) == 1:
        stacked = tf.constant(np.asarray(flat, np.uint8).reshape(-1, *shapes[0]))
        image = functools.partial(tf.gather, stacked)
    else:
        offsets = tf.constant(np.concatenate([[0], np.cumsum(np.prod(shapes, axis=1))]))
        shape_table = tf.constant(shapes)
        flat_table = tf.constant(np.asarray(flat, np.uint8))

        def image(i: tf.Tensor) -> tf.Tensor:
            return tf.reshape(flat_table[offsets[i] : offsets[i + 1]], shape_table[i])

    return _Table("pixels", image, functools.partial(tf.gather, label_table), len(labels))


def _decoded_table(examples: sources.Examples, strict: bool) -> _Table:
    """Decodes a (small) shard once into memory, in parallel and in large batches."""
    if examples.kind == "pixels" and examples.items is not None:
        items = np.asarray(examples.items)
        return _pixel_table(items, np.tile(items.shape[1:], (len(items), 1)), examples.labels)
    ds = examples.dataset
    if examples.kind != "pixels":
        ds = ds.map(_decode_map(examples.kind), num_parallel_calls=tf.data.AUTOTUNE)
        if not examples.validated and not strict:
            ds = ds.ignore_errors(log_warning=True)
    ds = ds.map(lambda x, y: (tf.reshape(x, [-1]), tf.shape(x), y))
    flats, shapes, labels = [], [], []
    for flat, shape, label in ds.ragged_batch(4096):
        values = flat.flat_values if isinstance(flat, tf.RaggedTensor) else flat
        flats.append(tf.reshape(values, [-1]).numpy())
        shapes.append(shape.numpy())
        labels.append(label.numpy())
    if not labels:
        raise sources.DataSourceError(
            f"no decodable images in split {examples.info.split!r} of {examples.info.source!r}"
        )
    return _pixel_table(np.concatenate(flats), np.concatenate(shapes), np.concatenate(labels))


def _path_table(examples: sources.Examples) -> _Table:
    paths = tf.constant([str(p) for p in examples.items])
    labels = tf.constant(np.asarray(examples.labels, np.int32))
    return _Table(
        "path",
        functools.partial(tf.gather, paths),
        functools.partial(tf.gather, labels),
        len(examples.items),
    )


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
    repeat: bool = True,
    cache: CacheOption = "auto",
    crop_scale: Sequence[float] = transforms.DEFAULT_CROP_SCALE,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    drop_remainder: bool = True,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    transport: str = "float",
    shared_patch: bool = True,
    child_crops: int = 0,
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
        repeat: Repeat indefinitely (True) or stop after one pass.
        cache: "auto" (decode once into memory when the decoded shard is at
            most `CACHE_LIMIT_BYTES`), True (always) or False (decode every epoch).
        crop_scale: (min, max) area fraction of the random resized crop.
        normalization: The input normalisation.
        drop_remainder: Drop the last partial batch (static batch shape).
        shuffle_buffer: Shuffle buffer of sequential sources (TFDS); folders and
            in-memory data are shuffled in full through their indices.
        transport: "float", "uint8" or "patch" (see the module docstring);
            `tf_bignas.data.device.network_images` turns any of them into the
            network's input.
        shared_patch: One random crop per example, resized to every resolution
            (the paper's). False, for ablation: an independent crop, flip and
            augmentation per resolution (needs transport "float" or "uint8").
        child_crops: 0 (the default): as `shared_patch` says. K > 0, for
            ablation: K independent crops (flips, augmentations) per example,
            one for each child of a sandwich step (the k-th child trains on
            the k-th), each resized to every resolution; the first is the
            shared patch. Images are then [B, K, res, res, 3]. Needs
            `shared_patch` and transport "float" or "uint8".

    Returns:
        A dataset of `{"images": {res: float32 [B, res, res, 3]}, "label": int32 [B]}`
        with int keys, B the per-replica batch size (uint8 images for
        "uint8"; `{"patch": uint8 [B, base, base, 3], "label"}` for "patch";
        [B, K, res, res, 3] images with `child_crops=K`).

    Raises:
        ValueError: On a bad resolution, batch size, augment or cache option.
        sources.DataSourceError: On a bad source, split or minival size.
        FileNotFoundError: If a folder source or split folder is missing.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; allowed: {list(TRANSPORTS)}")
    if not shared_patch and transport == "patch":
        raise ValueError(
            "shared_patch=False (a patch per resolution) needs transport 'float' or 'uint8'; "
            "transport 'patch' ships one shared patch"
        )
    if child_crops < 0 or (child_crops and (transport == "patch" or not shared_patch)):
        raise ValueError(
            f"child_crops={child_crops} is not allowed here; allowed: 0, or a number of children "
            "with shared_patch=True and transport 'float' or 'uint8'"
        )
    if isinstance(resolutions, int) or not resolutions:
        raise ValueError(f"resolutions must be a non-empty sequence of ints, got {resolutions!r}")
    res = tuple(sorted({_check_resolution(r, "resolution") for r in resolutions}))
    base = _check_resolution(base_resolution or max(res), "base_resolution")
    _check_batch_size(batch_size)
    augment_lib.check_augment_name(augment)
    if (
        isinstance(shuffle_buffer, bool)
        or not isinstance(shuffle_buffer, int)
        or shuffle_buffer < 1
    ):
        raise ValueError(f"shuffle_buffer must be a positive int, got {shuffle_buffer!r}")
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
    table = None
    if _should_cache(cache, examples.info.decoded_bytes, num_shards):
        table = _decoded_table(examples, strict)
    elif examples.items is not None:
        table = (
            _path_table(examples) if examples.kind == "path" else _decoded_table(examples, strict)
        )
    kind = table.kind if table is not None else examples.kind
    stream_seed = tf.constant([base_seed, shard_index], tf.int64)

    def make_patch(position: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        element_seed = tf.random.experimental.stateless_fold_in(stream_seed, position)

        def patch(seed: tf.Tensor) -> tf.Tensor:
            return transforms.train_patch(
                image, seed, base_resolution=base, kind=kind, augment=augment, crop_scale=crop_scale
            )

        if child_crops:
            # Ablation: [K, base, base, 3], the k-th crop for the k-th child; the
            # first is the shared patch, the others come from seeds of their own.
            return tf.stack(
                [patch(element_seed)]
                + [
                    patch(tf.random.experimental.stateless_fold_in(element_seed, 1000 + k))
                    for k in range(1, child_crops)
                ]
            )
        if shared_patch:
            return patch(element_seed)
        # Ablation: [len(res), base, base, 3], the k-th patch for the k-th resolution;
        # the first is the shared patch, the others come from seeds of their own.
        seeds = [element_seed] + [
            tf.random.experimental.stateless_fold_in(element_seed, k) for k in range(1, len(res))
        ]
        return tf.stack([patch(s) for s in seeds])

    if table is not None:
        # Shuffle indices, not images: a full-size buffer of int64s is cheap to
        # fill and to checkpoint.
        ds = tf.data.Dataset.range(table.size)
        ds = ds.shuffle(table.size, seed=base_seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.enumerate().map(
            lambda pos, i: (make_patch(pos, table.image(i)), table.label(i)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = examples.dataset.shuffle(
            min(shuffle_buffer, examples.num_examples),
            seed=base_seed,
            reshuffle_each_iteration=True,
        )
        if repeat:
            ds = ds.repeat()
        ds = ds.enumerate().map(
            lambda pos, ex: (make_patch(pos, ex[0]), ex[1]), num_parallel_calls=tf.data.AUTOTUNE
        )
    if kind != "pixels" and not examples.validated and not strict:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(per_replica, drop_remainder=drop_remainder)

    def to_resolutions(patches: tf.Tensor, labels: tf.Tensor) -> dict[str, Any]:
        if transport == "patch":
            return {"patch": patches, "label": labels}
        if child_crops:
            flat = tf.reshape(patches, [-1, *patches.shape[2:]])
            images = {
                r: tf.reshape(x, [-1, child_crops, r, r, 3])
                for r, x in transforms.resize_patches(flat, res).items()
            }
        elif shared_patch:
            images = transforms.resize_patches(patches, res)
        else:
            images = {
                r: transforms.resize_patches(patches[:, k], [r])[r] for k, r in enumerate(res)
            }
        if transport == "uint8":
            return {"images": {r: tf.cast(x, tf.uint8) for r, x in images.items()}, "label": labels}
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
    cache: CacheOption = "auto",
    normalization: Normalization = DEFAULT_NORMALIZATION,
    drop_remainder: bool = False,
    sample: int | None = None,
    sample_seed: int = 0,
    normalize: bool = True,
) -> tf.data.Dataset:
    """Builds the evaluation pipeline: centre crop, bicubic resize, normalise.

    One pass over the split (or over a fixed random sample of it) in a fixed
    order. When cached, the resized images are cached, so repeated evaluations
    at one resolution skip decoding.

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
        cache: "auto" (keep the resized images in memory when they take at most
            `CACHE_LIMIT_BYTES`), True or False.
        normalization: The input normalisation.
        drop_remainder: Drop the last partial batch.
        sample: Read only this many examples (all of the split if it has
            fewer), drawn at random without replacement by `sample_seed`: the
            same examples on every call. With `input_context`, each input
            pipeline reads its share of its shard. Sources without random access
            (TFDS) give the first examples of their (generation-shuffled) files.
        sample_seed: Seed of the sample.
        normalize: Normalise on the host (float32 output); False yields the
            uint8 pixels, for the network side to normalise (with the same
            `normalization`: `tf_bignas.data.device.network_input`).

    Returns:
        A dataset of `{"image": float32 [B, r, r, 3], "label": int32 [B]}`
        (uint8 images if `normalize` is False).

    Raises:
        ValueError: On a bad resolution, batch size, crop fraction, sample or
            cache option.
        sources.DataSourceError: On a bad source, split or minival size.
        FileNotFoundError: If a folder source or split folder is missing.
    """
    resolution = _check_resolution(resolution, "resolution")
    _check_batch_size(batch_size)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    if sample is not None and (
        isinstance(sample, bool) or not isinstance(sample, int) or sample < 1
    ):
        raise ValueError(f"sample must be a positive int or None, got {sample!r}")
    src = sources.open_source(source, data_dir=data_dir, minival=minival, strict=strict)
    num_shards, shard_index, per_replica = _shard_and_batch(batch_size, input_context)
    examples = src.examples(split, num_shards=num_shards, shard_index=shard_index)
    kind = examples.kind
    ds, num_examples = examples.dataset, examples.num_examples
    if sample is not None:
        ds, num_examples = _sampled(examples, -(-sample // num_shards), sample_seed)

    def transform(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        out = transforms.eval_image(image, resolution, kind=kind, crop_fraction=crop_fraction)
        return out, label

    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    if kind != "pixels" and not examples.validated and not strict:
        ds = ds.ignore_errors(log_warning=True)
    cached_bytes = num_examples * resolution * resolution * 3
    if _should_cache(cache, cached_bytes, 1):
        ds = ds.cache()
    ds = ds.batch(per_replica, drop_remainder=drop_remainder)

    def finish(images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"image": normalization.apply(images) if normalize else images, "label": labels}

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(True, input_context is not None))


def build_calibration_dataset(
    source: str | sources.Source,
    split: str,
    resolution: int,
    num_images: int,
    batch_size: int,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    minival: int | float | None = None,
    strict: bool = False,
    cache: CacheOption = "auto",
    normalization: Normalization = DEFAULT_NORMALIZATION,
    normalize: bool = True,
) -> tf.data.Dataset:
    """The images BN calibration averages over: a fixed random sample of a split.

    `num_images` examples drawn at random (by `seed`) from the split, the same
    ones on every call, so every child is calibrated on the same images;
    centre-cropped and resized like evaluation. A random sample, not the first
    images: folder and embedded sources list their images class by class, so
    the first few thousand would hold one or two classes. Small enough to be
    cached in memory after its first full pass (read it to the end).

    Args:
        source: "folder:PATH", "tfds:NAME", "embedded", or an open `Source`.
        split: The split, usually the training split.
        resolution: Output resolution.
        num_images: Images in the sample (the whole split if it has fewer).
        batch_size: Global batch size (the last batch may be partial).
        seed: Seed of the sample.
        data_dir: TFDS data directory (TFDS sources).
        input_context: From `distribute_datasets_from_function`, or None.
        minival: Minival size (number or fraction of train images), or None.
        strict: Folder sources: fail on an unreadable file instead of skipping it.
        cache: As `build_eval_dataset`.
        normalization: The input normalisation.
        normalize: Normalise on the host (float32), or yield uint8 pixels.

    Returns:
        A dataset of `{"image": [B, r, r, 3], "label": int32 [B]}`.

    Raises:
        ValueError: On a bad resolution, batch size or image count.
        sources.DataSourceError: On a bad source, split or minival size.
    """
    return build_eval_dataset(
        source,
        split,
        resolution,
        batch_size,
        data_dir=data_dir,
        input_context=input_context,
        minival=minival,
        strict=strict,
        cache=cache,
        normalization=normalization,
        sample=num_images,
        sample_seed=seed,
        normalize=normalize,
    )


def _sampled(examples: sources.Examples, count: int, seed: int) -> tuple[tf.data.Dataset, int]:
    """(dataset of `count` examples drawn at random without replacement, its size)."""
    count = min(count, examples.num_examples)
    if examples.items is None or examples.labels is None:
        return examples.dataset.take(count), count
    order = np.random.default_rng(seed).permutation(len(examples.labels))[:count]
    items = examples.items[order]
    if items.dtype == object:
        items = tf.constant([p if isinstance(p, bytes) else str(p) for p in items])
    labels = np.asarray(examples.labels, np.int32)[order]
    return tf.data.Dataset.from_tensor_slices((items, labels)), count


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
