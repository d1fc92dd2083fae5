"""Tests of the public builders in tf_bignas.data.pipeline, on real images."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from tf_bignas.data import (
    DEFAULT_NORMALIZATION,
    DataSourceError,
    build_eval_dataset,
    build_train_dataset,
    dataset_info,
    open_source,
)

pytestmark = pytest.mark.usefixtures("isolated_index_cache")


def _pixels(x: tf.Tensor) -> np.ndarray:
    """Normalised network input back to [0, 255] pixels."""
    return DEFAULT_NORMALIZATION.invert(x).numpy()


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.round(image).astype(np.uint8).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def embedded():
    return open_source("embedded")


def test_train_element_structure(embedded):
    ds = build_train_dataset(embedded, "train", [32, 16], 8, seed=0)
    spec = ds.element_spec
    assert set(spec["images"]) == {16, 32}
    assert spec["images"][16] == tf.TensorSpec([8, 16, 16, 3], tf.float32)
    assert spec["images"][32] == tf.TensorSpec([8, 32, 32, 3], tf.float32)
    assert spec["label"] == tf.TensorSpec([8], tf.int32)
    batch = next(iter(ds))
    pixels = _pixels(batch["images"][32])
    # Normalised from integer pixels in [0, 255].
    assert pixels.min() > -0.01 and pixels.max() < 255.01
    assert np.abs(pixels - np.round(pixels)).max() < 1e-3
    assert set(batch["label"].numpy()) <= set(range(10))


@pytest.mark.parametrize("source_name", ["embedded", "folder"])
def test_shared_patch_low_res_is_bicubic_resize_of_high_res(source_name, embedded, image_folder):
    source = embedded if source_name == "embedded" else image_folder.spec
    ds = build_train_dataset(source, "train", (16, 24, 32), 4, seed=3, augment="autoaugment")
    batch = next(iter(ds))
    high = _pixels(batch["images"][32])
    for r in (16, 24):
        low = _pixels(batch["images"][r])
        expected = tf.image.resize(high, [r, r], "bicubic", antialias=True).numpy()
        expected = np.round(np.clip(expected, 0, 255))
        assert np.abs(low - expected).max() <= 1.01, r
    # The patches differ between examples (not one patch broadcast).
    assert np.abs(high[0] - high[1]).mean() > 1.0


def test_shared_patch_with_larger_base(embedded):
    ds = build_train_dataset(embedded, "train", (16, 32), 4, seed=3, base_resolution=48)
    batch = next(iter(ds))
    high, low = _pixels(batch["images"][32]), _pixels(batch["images"][16])
    resized = tf.image.resize(high, [16, 16], "bicubic", antialias=True).numpy()
    resized = np.clip(resized, 0, 255)
    assert np.abs(low - resized).mean() < 1.5
    # Content of another example is far away: the tolerance is meaningful.
    assert np.abs(low - np.roll(resized, 1, axis=0)).mean() > 3 * np.abs(low - resized).mean()


def test_a_patch_per_resolution_for_the_ablation(embedded):
    kwargs = dict(seed=3, augment="none", crop_scale=(0.08, 0.3))  # small crops differ a lot
    shared = next(iter(build_train_dataset(embedded, "train", (16, 32), 8, **kwargs)))
    own = next(
        iter(build_train_dataset(embedded, "train", (16, 32), 8, shared_patch=False, **kwargs))
    )
    np.testing.assert_array_equal(own["label"], shared["label"])  # the same examples, in order

    def gap(batch) -> float:  # low resolution vs the high one resized: 0 for a shared patch
        high = _pixels(batch["images"][32])
        expected = tf.image.resize(high, [16, 16], "bicubic", antialias=True).numpy()
        return float(np.abs(_pixels(batch["images"][16]) - np.clip(expected, 0, 255)).mean())

    assert gap(shared) < 1.0 and gap(own) > 10 * max(gap(shared), 0.5)
    # The first resolution's patch is the shared one; the second is new.
    np.testing.assert_allclose(_pixels(own["images"][16]), _pixels(shared["images"][16]), atol=1e-3)
    with pytest.raises(ValueError, match="shared_patch=False .* needs transport"):
        build_train_dataset(embedded, "train", (16, 32), 8, shared_patch=False, transport="patch")


def test_a_crop_per_child_for_the_ablation(embedded):
    kwargs = dict(seed=3, augment="none", crop_scale=(0.08, 0.3))  # small crops differ a lot
    shared = next(iter(build_train_dataset(embedded, "train", (16, 32), 8, **kwargs)))
    own = next(iter(build_train_dataset(embedded, "train", (16, 32), 8, child_crops=4, **kwargs)))
    np.testing.assert_array_equal(own["label"], shared["label"])  # the same examples, in order
    for r in (16, 32):
        assert own["images"][r].shape == (8, 4, r, r, 3)
        crops = _pixels(own["images"][r])
        # The first child's crop is the shared patch; every other child has its own.
        np.testing.assert_allclose(crops[:, 0], _pixels(shared["images"][r]), atol=1e-3)
        for k in range(1, 4):
            for j in range(k):
                assert np.abs(crops[:, k] - crops[:, j]).mean() > 10
    # Each child's crop is one patch at both resolutions (resized from its own base).
    high = _pixels(own["images"][32])[:, 2]
    low = tf.image.resize(high, [16, 16], "bicubic", antialias=True).numpy()
    assert np.abs(_pixels(own["images"][16])[:, 2] - np.clip(low, 0, 255)).mean() < 1.0
    for bad in (dict(transport="patch"), dict(shared_patch=False)):
        with pytest.raises(ValueError, match="child_crops=4 is not allowed here"):
            build_train_dataset(embedded, "train", (16, 32), 8, child_crops=4, **bad)


def test_seeded_pipeline_is_deterministic(image_folder):
    def first_batches(seed: int) -> list[np.ndarray]:
        ds = build_train_dataset(image_folder.spec, "train", (16, 32), 5, seed=seed)
        return [b["images"][32].numpy() for b in ds.take(4)]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(np.abs(x - y).mean() > 0.1 for x, y in zip(a, c, strict=True))
    # Two epochs differ (reshuffled, re-augmented).
    assert np.abs(a[0] - a[3]).mean() > 0.1


def _context(index: int, pipelines: int = 2, replicas: int = 2) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=index, num_replicas_in_sync=replicas
    )


def test_input_context_shards_are_disjoint_and_cover(image_folder):
    def digests(context: tf.distribute.InputContext | None) -> list[str]:
        ds = build_eval_dataset(
            image_folder.spec, "train", 32, 4, crop_fraction=1.0, input_context=context
        )
        return [_digest(x) for b in ds for x in _pixels(b["image"])]

    whole = digests(None)
    shards = [digests(_context(i)) for i in range(2)]
    assert len(whole) == 15
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(whole)


def test_train_input_context_batches_per_replica(embedded):
    labels = []
    for i in range(2):
        ds = build_train_dataset(
            embedded,
            "test",
            (16,),
            64,
            seed=1,
            repeat=False,
            input_context=_context(i),
            augment="none",
            drop_remainder=False,
        )
        batches = list(ds)
        assert batches[0]["images"][16].shape[0] == 32  # 64 global / 2 replicas
        labels += [int(y) for b in batches for y in b["label"]]
    # One epoch over both shards sees every test image exactly once.
    assert len(labels) == 1000 and np.bincount(labels).tolist() == [100] * 10


def test_bad_arguments(embedded):
    with pytest.raises(ValueError, match="resolution must be an int >= 8, got 0"):
        build_train_dataset(embedded, "train", (0,), 8)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        build_train_dataset(embedded, "train", (16,), 0)
    with pytest.raises(ValueError, match="unknown augment 'cutmix'"):
        build_train_dataset(embedded, "train", (16,), 8, augment="cutmix")
    with pytest.raises(DataSourceError, match="no split 'validation'"):
        build_eval_dataset(embedded, "validation", 16, 8)
    with pytest.raises(DataSourceError, match="fewer than one batch of 64"):
        build_train_dataset("embedded", "minival", (16,), 64, minival=10)
    with pytest.raises(DataSourceError, match="minival=10 conflicts"):
        build_train_dataset(embedded, "train", (16,), 64, minival=10)


def test_eval_center_crop_bicubic(image_folder):
    from PIL import Image

    ds = build_eval_dataset(image_folder.spec, "test", 64, 6, crop_fraction=0.875)
    batch = next(iter(ds))
    assert batch["image"].shape == (6, 64, 64, 3) and batch["label"].dtype == tf.int32
    # The first file of the split (sorted by class, then name).
    first = image_folder.root / "test" / image_folder.class_names[0] / "0000.jpg"
    source = tf.io.decode_jpeg(tf.io.read_file(str(first))).numpy().astype(np.float32)
    assert source.shape == (28, 28, 3)
    crop = source[2:26, 2:26]  # round(0.875 * 28) = round(24.5) = 24 (half to even), centred.
    expected = tf.image.resize(crop, [64, 64], "bicubic", antialias=True).numpy()
    expected = np.round(np.clip(expected, 0, 255))
    # The test JPEGs keep full chroma (see conftest.image_folder), so decoding only the
    # crop window (decode_and_crop_jpeg) gives the pixels of a full decode: the only
    # error left is the normalisation's round trip.
    np.testing.assert_allclose(_pixels(batch["image"][0]), expected, atol=1e-3)
    assert np.abs(_pixels(batch["image"][0]) - expected).mean() < 0.05
    # PIL's bicubic agrees closely (an independent implementation).
    pil = np.asarray(
        Image.open(first).convert("RGB").resize((64, 64), Image.BICUBIC, (2, 2, 26, 26))
    )
    assert np.abs(_pixels(batch["image"][0]) - pil).mean() < 2.0


def test_dataset_info_and_minival_training(embedded):
    info = dataset_info("embedded", "train", minival=500)
    assert info.num_classes == 10 and info.num_examples == 3500
    ds = build_train_dataset("embedded", "minival", (16,), 100, minival=500, repeat=False)
    assert sum(int(b["label"].shape[0]) for b in ds) == 500


@pytest.mark.parametrize("cache", [True, False])
def test_unvalidated_folder_drops_corrupt_file_while_reading(image_folder, cache):
    source = open_source(image_folder.spec, validate=False)
    ds = build_train_dataset(
        source, "train", (16,), 4, seed=0, repeat=False, drop_remainder=False, cache=cache
    )
    labels = [int(y) for b in ds for y in b["label"]]
    assert sorted(labels) == [0] * 5 + [1] * 5 + [2] * 5


def test_iterator_checkpoint_restores_the_stream(image_folder, tmp_path):
    def pipeline() -> tf.data.Dataset:
        return build_train_dataset(image_folder.spec, "train", (16, 32), 4, seed=5, cache=False)

    it = iter(pipeline())
    for _ in range(5):
        next(it)
    path = tf.train.Checkpoint(data=it).save(str(tmp_path / "ckpt"))
    want = [next(it)["images"][16].numpy() for _ in range(3)]
    restored = iter(pipeline())
    tf.train.Checkpoint(data=restored).restore(path)
    for expected in want:
        np.testing.assert_array_equal(next(restored)["images"][16].numpy(), expected)


def test_in_memory_images_of_mixed_sizes(image_folder, tmp_path):
    from PIL import Image

    from tf_bignas.data import pipeline, transforms

    for cls, sizes in (("a", ((48, 20), (32, 32))), ("b", ((20, 40), (32, 32)))):
        folder = tmp_path / "train" / cls
        folder.mkdir(parents=True)
        photo = Image.open(image_folder.root / f"train/seven/000{len(cls)}.jpg")
        for k, size in enumerate(sizes):
            photo.resize(size, Image.BICUBIC).save(folder / f"{k}.png")
    source = open_source(f"folder:{tmp_path}")
    examples = source.examples("train")
    table = pipeline._decoded_table(examples, strict=False)
    for i, (path, label) in enumerate(examples.dataset.as_numpy_iterator()):
        expected = transforms.decode_rgb(tf.io.read_file(path)).numpy()
        np.testing.assert_array_equal(table.image(i).numpy(), expected)
        assert int(table.label(i)) == label
    ds = build_train_dataset(source, "train", (16, 24), 2, cache=True, repeat=False, seed=0)
    assert [b["images"][24].shape for b in ds] == [(2, 24, 24, 3)] * 2
