"""Tests of BN re-calibration and child evaluation, on the embedded digits."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from supernet_testutil import randomize_weights

from tf_bignas.data import build_eval_dataset
from tf_bignas.model import Supernet
from tf_bignas.space import get_space
from tf_bignas.train.calibration import ChildEvaluator


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
