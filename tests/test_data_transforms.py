"""Tests of tf_bignas.data.transforms and normalization on real JPEGs.

`sample_jpegs` (tests/conftest.py) gives JPEGs of the embedded digits, and
also CIFAR-10 photos when their tarball is present beside the repository.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tf_bignas.data import transforms
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization

pytestmark = pytest.mark.usefixtures("isolated_index_cache")


@pytest.fixture(scope="module")
def jpeg(sample_jpegs) -> bytes:
    return sample_jpegs[1]


def test_random_crop_window_stays_inside_and_respects_scale():
    size = tf.constant([200, 300])
    areas = []
    for i in range(50):
        y, x, h, w = transforms.random_crop_window(size, tf.constant([i, 1])).numpy()
        assert 0 <= y and 0 <= x and y + h <= 200 and x + w <= 300
        areas.append(h * w / 60000)
        if (h, w) != (200, 300):
            assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    assert min(areas) >= 0.08 - 1e-3 and max(areas) <= 1.0
    assert np.std(areas) > 0.05  # Crops vary with the seed.


@pytest.mark.parametrize("augment", ["none", "autoaugment", "randaugment"])
def test_train_patch_same_for_pixels_bytes_and_paths(jpeg, tmp_path, augment):
    path = tmp_path / "ship.jpg"
    path.write_bytes(jpeg)
    seed = tf.constant([4, 2], tf.int64)
    kwargs = {"base_resolution": 40, "augment": augment}
    pixels = transforms.train_patch(transforms.decode_rgb(jpeg), seed, kind="pixels", **kwargs)
    from_bytes = transforms.train_patch(tf.constant(jpeg), seed, kind="bytes", **kwargs)
    from_path = transforms.train_patch(tf.constant(str(path)), seed, kind="path", **kwargs)
    assert pixels.shape == (40, 40, 3) and pixels.dtype == tf.uint8
    # decode_and_crop_jpeg may move a pixel by one next to the crop window's edge
    # (which histogram operations such as Equalize can amplify).
    for other in (from_bytes, from_path):
        diff = np.abs(pixels.numpy().astype(int) - other.numpy().astype(int))
        assert diff.mean() < (0.1 if augment == "none" else 1.0)
    np.testing.assert_array_equal(from_bytes.numpy(), from_path.numpy())
    again = transforms.train_patch(transforms.decode_rgb(jpeg), seed, kind="pixels", **kwargs)
    np.testing.assert_array_equal(pixels.numpy(), again.numpy())


def test_train_patch_without_crop_is_image_or_its_mirror(jpeg):
    image = transforms.decode_rgb(jpeg)
    side = int(image.shape[0])
    assert image.shape == (side, side, 3)
    flips = set()
    for i in range(8):
        patch = transforms.train_patch(
            image,
            tf.constant([i, 0]),
            base_resolution=side,
            kind="pixels",
            augment="none",
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
        ).numpy()
        if np.array_equal(patch, image.numpy()):
            flips.add(False)
        else:
            np.testing.assert_array_equal(patch, image.numpy()[:, ::-1])
            flips.add(True)
    assert flips == {False, True}


def test_png_and_jpeg_paths_decode_to_rgb(image_folder):
    for path in (image_folder.grey_png, image_folder.rgba_png, image_folder.cmyk_jpeg):
        out = transforms.eval_image(tf.constant(str(path)), 24, kind="path", crop_fraction=1.0)
        assert out.shape == (24, 24, 3) and out.dtype == tf.uint8


def test_resize_patches_shares_one_patch(sample_jpegs):
    patches = tf.stack([transforms.decode_rgb(data) for data in sample_jpegs[2:]])
    side = int(patches.shape[1])
    out = transforms.resize_patches(patches, (16, side))
    assert set(out) == {16, side} and out[16].dtype == tf.float32
    np.testing.assert_array_equal(out[side].numpy(), patches.numpy().astype(np.float32))
    expected = tf.image.resize(tf.cast(patches, tf.float32), [16, 16], "bicubic", antialias=True)
    np.testing.assert_allclose(out[16], np.round(np.clip(expected, 0, 255)), atol=1e-4)


def test_eval_image_rejects_bad_arguments(jpeg):
    with pytest.raises(ValueError, match="crop_fraction must be in"):
        transforms.eval_image(tf.constant(jpeg), 32, kind="bytes", crop_fraction=0.0)
    with pytest.raises(ValueError, match="unknown image kind 'url'"):
        transforms.eval_image(tf.constant(jpeg), 32, kind="url")


def test_normalization_round_trip_keras_layer_and_metadata(jpeg):
    image = tf.cast(transforms.decode_rgb(jpeg), tf.float32)[None]
    norm = DEFAULT_NORMALIZATION
    x = norm.apply(image)
    np.testing.assert_allclose(norm.invert(x), image, atol=1e-3)
    np.testing.assert_allclose(norm.keras_layer()(image), x, atol=1e-5)
    np.testing.assert_allclose(norm.apply_numpy(image.numpy()), x, atol=1e-5)
    channel_means = tf.reduce_mean(x, axis=[0, 1, 2]).numpy()
    assert np.all(np.abs(channel_means) < 3.0)
    meta = norm.to_dict()
    assert meta["input_range"] == [0.0, 255.0] and meta["color_order"] == "RGB"
    assert Normalization.from_dict(meta) == norm
    with pytest.raises(ValueError, match="std must be positive"):
        Normalization(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="mean must have 3 values"):
        Normalization(mean=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"lacks \['std'\]"):
        Normalization.from_dict({"mean": [0, 0, 0]})
