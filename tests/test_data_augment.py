"""AutoAugment / RandAugment operations against PIL, on real images.

`sample_jpegs` (tests/conftest.py) gives a coloured embedded digit (28x28),
and also a CIFAR-10 photo (32x32) when its tarball is present beside the
repository.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from tf_bignas.data import augment

GREY = (128, 128, 128)


@pytest.fixture(scope="module")
def photo(sample_jpegs) -> Image.Image:
    return Image.open(io.BytesIO(sample_jpegs[0])).convert("RGB")


def _run(fn, photo: Image.Image, strength: float, sign: float = 1.0) -> np.ndarray:
    x = tf.constant(np.asarray(photo))
    out = fn(x, tf.constant(strength), tf.constant(sign))
    assert out.dtype == tf.uint8 and out.shape == x.shape
    return out.numpy().astype(int)


def _affine(photo: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return photo.transform(photo.size, Image.AFFINE, coeffs, fillcolor=GREY)


# A shift of (150/331) * 0.5 of the side, rounded: 6.34 -> 6 px at 28 px, 7.25 -> 7 px at 32 px.
HALF_TRANSLATE_PX = {28: 6, 32: 7}


def _translate(photo: Image.Image, dx_sign: int, dy_sign: int) -> Image.Image:
    assert photo.width == photo.height
    shift = HALF_TRANSLATE_PX[photo.width]
    return _affine(photo, (1, 0, dx_sign * shift, 0, 1, dy_sign * shift))


# (op, strength, sign, PIL reference): the ranges of the module docstring.
CASES = (
    (augment.auto_contrast, 0.0, 1.0, ImageOps.autocontrast),
    (augment.equalize, 0.0, 1.0, ImageOps.equalize),
    (augment.invert, 0.0, 1.0, ImageOps.invert),
    (augment.posterize, 0.5, 1.0, lambda im: ImageOps.posterize(im, 6)),
    (augment.posterize, 1.0, 1.0, lambda im: ImageOps.posterize(im, 4)),
    (augment.solarize, 0.5, 1.0, lambda im: ImageOps.solarize(im, 128)),
    (augment.color, 0.0, 1.0, lambda im: ImageEnhance.Color(im).enhance(0.1)),
    (augment.color, 1.0, 1.0, lambda im: ImageEnhance.Color(im).enhance(1.9)),
    (augment.contrast, 0.25, 1.0, lambda im: ImageEnhance.Contrast(im).enhance(0.55)),
    (augment.contrast, 1.0, 1.0, lambda im: ImageEnhance.Contrast(im).enhance(1.9)),
    (augment.brightness, 0.75, 1.0, lambda im: ImageEnhance.Brightness(im).enhance(1.45)),
    (augment.sharpness, 0.0, 1.0, lambda im: ImageEnhance.Sharpness(im).enhance(0.1)),
    (augment.sharpness, 1.0, 1.0, lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
    (augment.rotate, 1.0, 1.0, lambda im: im.rotate(30, fillcolor=GREY)),
    (augment.rotate, 0.5, -1.0, lambda im: im.rotate(-15, fillcolor=GREY)),
    (augment.shear_x, 0.5, 1.0, lambda im: _affine(im, (1, 0.15, 0, 0, 1, 0))),
    (augment.shear_y, 1.0, -1.0, lambda im: _affine(im, (1, 0, 0, -0.3, 1, 0))),
    (augment.translate_x, 0.5, 1.0, lambda im: _translate(im, -1, 0)),
    (augment.translate_y, 0.5, -1.0, lambda im: _translate(im, 0, 1)),
)


@pytest.mark.parametrize(
    "fn,strength,sign,reference",
    CASES,
    ids=[f"{c[0].__name__}-{c[1]}-{c[2]}" for c in CASES],
)
def test_op_matches_pil(photo, fn, strength, sign, reference):
    ours = _run(fn, photo, strength, sign)
    expected = np.asarray(reference(photo)).astype(int)
    # PIL builds autocontrast's LUT from a float offset: allow off-by-one there only.
    tolerance = 1 if fn is augment.auto_contrast else 0
    assert np.abs(ours - expected).max() <= tolerance
    assert np.abs(ours - expected).mean() < 0.02
    if fn not in (augment.equalize, augment.auto_contrast):
        assert np.abs(ours - np.asarray(photo).astype(int)).mean() > 0.5  # The op did something.


def test_apply_op_dispatches_by_index(photo):
    x = tf.constant(np.asarray(photo))
    for name, fn in (("Invert", augment.invert), ("Rotate", augment.rotate)):
        out = augment.apply_op(x, augment.op_index(name), 0.7, -1.0)
        expected = fn(x, tf.constant(0.7), tf.constant(-1.0))
        np.testing.assert_array_equal(out.numpy(), expected.numpy())
    np.testing.assert_array_equal(augment.apply_op(x, 0, 1.0, 1.0).numpy(), x.numpy())
    with pytest.raises(ValueError, match="unknown augmentation op 'Blur'"):
        augment.op_index("Blur")


def test_policy_tables_are_well_formed():
    assert len(augment.IMAGENET_POLICY) == 25
    for sub in augment.IMAGENET_POLICY:
        assert len(sub) == 2
        for name, prob, magnitude in sub:
            augment.op_index(name)
            assert 0.0 <= prob <= 1.0 and 0 <= magnitude <= 9
    assert len(augment.RANDAUGMENT_OPS) == 14
    for name in augment.RANDAUGMENT_OPS:
        augment.op_index(name)


@pytest.mark.parametrize("fn", [augment.auto_augment, augment.rand_augment])
def test_policies_are_seeded(photo, fn):
    x = tf.constant(np.asarray(photo))
    runs = {s: fn(x, tf.constant([5, s], tf.int64)).numpy() for s in range(12)}
    again = fn(x, tf.constant([5, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(runs[3], again)
    distinct = {r.tobytes() for r in runs.values()}
    assert len(distinct) >= 6  # Different seeds pick different sub-policies.
    side = photo.width
    assert all(r.shape == (side, side, 3) and r.dtype == np.uint8 for r in runs.values())


def test_rand_augment_arguments(photo):
    x = tf.constant(np.asarray(photo))
    np.testing.assert_array_equal(
        augment.rand_augment(x, tf.constant([1, 2]), num_layers=0).numpy(), x.numpy()
    )
    with pytest.raises(ValueError, match="magnitude must be in"):
        augment.rand_augment(x, tf.constant([1, 2]), magnitude=11)
    with pytest.raises(ValueError, match="unknown augment 'mixup'"):
        augment.augment(x, tf.constant([1, 2]), "mixup")
