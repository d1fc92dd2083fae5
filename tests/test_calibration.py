"""Tests of BN re-calibration and child evaluation, on the embedded digits."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from supernet_testutil import randomize_weights

from tf_bignas.data import DEFAULT_NORMALIZATION, build_calibration_dataset, build_eval_dataset
from tf_bignas.model import Supernet
from tf_bignas.run.evaluator import ChildEvaluator
from tf_bignas.space import get_space


@pytest.fixture(scope="module")
def setup():
    space = get_space("bignas_tiny")
    net = Supernet(space, num_classes=10)
    randomize_weights(net, seed=11)
    data = {
        (split, res): [b for b, _ in zip(build_eval_dataset("embedded", split, res, 50), range(4))]
        for split in ("train", "test")
        for res in (16, 32)
    }
    return net, ChildEvaluator(net), data


def test_calibration_is_an_exact_average_over_batches(setup):
    net, evaluator, data = setup
    arch = net.space.sample(1, resolutions=[16])
    batches = data[("train", 16)][:3]
    per_batch = evaluator.calibrate(arch, iter(batches), num_batches=3, store=False)
    whole = tf.concat([b["image"] for b in batches], axis=0)
    at_once = evaluator.calibrate(arch, iter([whole]), num_batches=1, store=False)
    # The stem BN's input does not depend on earlier normalisation: exact.
    np.testing.assert_allclose(per_batch["stem_bn"][0], at_once["stem_bn"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(per_batch["stem_bn"][1], at_once["stem_bn"][1], rtol=1e-4, atol=1e-5)
    # Deeper layers see inputs normalised with each batch's statistics: close.
    for name in per_batch:
        np.testing.assert_allclose(per_batch[name][1], at_once[name][1], rtol=0.05, atol=0.05)
    # An exponential moving average would weight the last batch most: it differs.
    last = evaluator.calibrate(arch, iter(batches[2:]), num_batches=1, store=False)
    assert np.max(np.abs(last["stem_bn"][0] - at_once["stem_bn"][0])) > 1e-3
    # num_batches caps what is read.
    capped = evaluator.calibrate(arch, iter(batches), num_batches=1, store=False)
    first = evaluator.calibrate(arch, iter(batches[:1]), num_batches=1, store=False)
    np.testing.assert_allclose(capped["stem_bn"][0], first["stem_bn"][0], rtol=1e-6)


def test_evaluate_matches_a_direct_computation(setup):
    net, evaluator, data = setup
    arch = net.space.sample(2, resolutions=[32])
    evaluator.calibrate(arch, iter(data[("train", 32)]), num_batches=4)
    assert arch in net.bn_stats
    acc = evaluator.evaluate(arch, iter(data[("test", 32)]))
    images = tf.concat([b["image"] for b in data[("test", 32)]], 0)
    labels = np.concatenate([b["label"].numpy() for b in data[("test", 32)]])
    logits = net(images, arch=arch, training=False).numpy()
    order = np.argsort(-logits, axis=1)
    assert acc.num_examples == len(labels) == 200
    assert acc.top1 == pytest.approx(np.mean(order[:, 0] == labels))
    assert acc.top5 == pytest.approx(np.mean((order[:, :5] == labels[:, None]).any(axis=1)))
    assert acc.top5 >= acc.top1


def test_new_children_never_retrace(setup):
    net, evaluator, data = setup
    for res in (16, 32):  # one trace of each function per resolution
        arch = net.space.sample(0, resolutions=[res])
        evaluator.calibrate(arch, iter(data[("train", res)]), num_batches=2)
        evaluator.evaluate(arch, iter(data[("test", res)]), num_batches=1)
    traces = evaluator.tracing_count
    for seed in range(1, 7):
        for res in (16, 32):
            arch = net.space.sample(seed, resolutions=[res])
            evaluator.calibrate(arch, iter(data[("train", res)]), num_batches=2)
            evaluator.evaluate(arch, iter(data[("test", res)]), num_batches=1)
    assert evaluator.tracing_count == traces


def test_errors(setup):
    net, evaluator, data = setup
    with pytest.raises(KeyError, match="calibrate it first"):
        evaluator.evaluate(net.space.sample(123, resolutions=[16]), iter(data[("test", 16)]))
    with pytest.raises(ValueError, match="no batches"):
        evaluator.calibrate(net.space.smallest(), iter([]), num_batches=4)


def _standardised_error(stats, reference):
    """Mean over BN layers and channels of |mean - mean_ref| / std_ref and |var/var_ref - 1|."""
    mean_err, var_err = [], []
    for name, (mean_ref, var_ref) in reference.items():
        mean, var = stats[name]
        mean_err.append(np.abs(mean - mean_ref) / np.sqrt(var_ref + 1e-3))
        var_err.append(np.abs(var - var_ref) / (var_ref + 1e-3))
    return float(np.mean(np.concatenate(mean_err))), float(np.mean(np.concatenate(var_err)))


def test_calibration_statistics_converge_to_the_whole_split(setup):
    net, evaluator, _ = setup
    arch = net.space.sample(5, resolutions=[16])
    # Reference: the whole training split (3,800 digits) in a random order (deeper
    # layers see inputs normalised with each batch's statistics, so batches of
    # one class would shift them), as uint8 pixels that the evaluator
    # normalises on the device. Batches of 128 throughout (few traces).
    whole = build_calibration_dataset("embedded", "train", 16, 3800, 128, seed=3, normalize=False)
    reference = evaluator.calibrate(arch, iter(whole), store=False)
    errors = {}
    for n in (128, 512, 2048):
        sample = build_calibration_dataset("embedded", "train", 16, n, 128, seed=3, normalize=False)
        assert sum(int(b["label"].shape[0]) for b in sample) == n
        stats = evaluator.calibrate(arch, iter(sample), store=False)
        errors[n] = _standardised_error(stats, reference)
    print("standardised errors (mean, variance) by images:", errors)
    means = [errors[n][0] for n in sorted(errors)]
    variances = [errors[n][1] for n in sorted(errors)]
    # Each 4x more images about halves the error (sampling error ~ 1/sqrt(N)).
    assert all(b < 0.8 * a for a, b in zip(means, means[1:])), errors
    assert all(b < 0.8 * a for a, b in zip(variances, variances[1:])), errors
    assert means[-1] < 0.0015 and variances[-1] < 0.008, errors
    # The first 2,048 digits of the split (it lists them class by class) are a
    # biased sample: far worse than 2,048 random ones.
    first = build_eval_dataset("embedded", "train", 16, 128, normalize=False).take(16)
    biased = _standardised_error(evaluator.calibrate(arch, iter(first), store=False), reference)
    assert biased[0] > 3 * errors[2048][0], (biased, errors[2048])


def test_calibration_sample_is_fixed_random_and_normalised_in_one_place(setup):
    net, evaluator, _ = setup

    def labels(ds):
        return np.concatenate([b["label"].numpy() for b in ds])

    one = build_calibration_dataset("embedded", "train", 16, 256, 128, seed=7)
    again = build_calibration_dataset("embedded", "train", 16, 256, 128, seed=7, normalize=False)
    other = build_calibration_dataset("embedded", "train", 16, 256, 128, seed=8)
    np.testing.assert_array_equal(labels(one), labels(again))  # the same images every time
    assert not np.array_equal(labels(one), labels(other))
    assert set(labels(one)) == set(range(10))  # all classes (the split's first 256: one)
    assert set(labels(build_eval_dataset("embedded", "train", 16, 256).take(1))) == {0}
    pixels = next(iter(again))["image"]
    assert pixels.dtype == tf.uint8
    np.testing.assert_allclose(
        DEFAULT_NORMALIZATION.apply(pixels).numpy(), next(iter(one))["image"].numpy(), atol=1e-6
    )
    # uint8 pixels, normalised on the device, calibrate to the same statistics.
    arch = net.space.sample(9, resolutions=[16])
    from_float = evaluator.calibrate(arch, iter(one), store=False)
    from_uint8 = evaluator.calibrate(arch, iter(again), store=False)
    for name, (mean, var) in from_float.items():
        np.testing.assert_allclose(from_uint8[name][0], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(from_uint8[name][1], var, rtol=1e-4, atol=1e-5)
    # More images than the split: the whole split, once.
    assert len(labels(build_calibration_dataset("embedded", "test", 16, 5000, 256))) == 1000
    with pytest.raises(ValueError, match="sample must be a positive int"):
        build_eval_dataset("embedded", "train", 16, 64, sample=0)


def test_calibration_sample_of_an_image_folder(image_folder):
    full = build_eval_dataset(image_folder.spec, "train", 16, 64)
    n = sum(int(b["label"].shape[0]) for b in full)
    sample = build_calibration_dataset(image_folder.spec, "train", 16, 6, 4, seed=1)
    got = np.concatenate([b["label"].numpy() for b in sample])
    assert len(got) == 6 < n
    assert len(set(got.tolist())) > 1  # not the first class folder only
