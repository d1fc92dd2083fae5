"""Tests of the BigNAS learning-rate schedules and the TF1-style RMSProp."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_bignas.train.optimizers import RMSpropTF
from tf_bignas.train.schedules import BigNASSchedule, scaled_learning_rate


def _lr(schedule, step):
    return float(schedule(step))


def test_linear_scaling_rule():
    assert scaled_learning_rate(0.256, 4096) == pytest.approx(0.256)
    assert scaled_learning_rate(0.256, 1024) == pytest.approx(0.064)


def test_warmup_exponential_decay_and_constant_ending():
    s = BigNASSchedule(1.0, steps_per_epoch=100, total_steps=100_000, warmup_epochs=5)
    assert _lr(s, 0) == pytest.approx(1.0 / 500)
    assert _lr(s, 249) == pytest.approx(0.5)
    assert _lr(s, 500) == pytest.approx(1.0)
    # 0.97 every 2.4 epochs after warmup (smooth, not staircase).
    assert _lr(s, 500 + 240) == pytest.approx(0.97, rel=1e-5)
    assert _lr(s, 500 + 2400) == pytest.approx(0.97**10, rel=1e-5)
    # log(0.05)/log(0.97) * 2.4 epochs ~= 236 epochs after warmup: then constant.
    assert _lr(s, 500 + 30_000) == pytest.approx(0.05)
    assert _lr(s, 99_999) == pytest.approx(0.05)
    values = [_lr(s, t) for t in range(500, 40_000, 500)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ablation_switches():
    no_floor = BigNASSchedule(1.0, 100, 100_000, warmup_epochs=0, constant_ending=False)
    assert _lr(no_floor, 60_000) == pytest.approx(0.97 ** (600 / 2.4), rel=1e-4)
    assert _lr(no_floor, 60_000) < 0.05
    cosine = BigNASSchedule(1.0, 100, 10_000, kind="cosine", warmup_epochs=0)
    assert _lr(cosine, 0) == pytest.approx(1.0)
    assert _lr(cosine, 5_000) == pytest.approx(0.525)
    assert _lr(cosine, 10_000) == pytest.approx(0.05)
    cosine0 = BigNASSchedule(
        1.0, 100, 10_000, kind="cosine", warmup_epochs=0, constant_ending=False
    )
    assert _lr(cosine0, 10_000) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="unknown schedule kind 'step'"):
        BigNASSchedule(1.0, 100, 100, kind="step")


def test_rmsprop_tf_starts_accumulators_at_one():
    v = keras.Variable(np.ones(3, np.float32))
    opt = RMSpropTF(learning_rate=0.1, rho=0.9, momentum=0.0, epsilon=1e-3)
    opt.apply_gradients([(np.full(3, 0.01, np.float32), v)])
    # ms = 0.9 * 1 + 0.1 * 1e-4; update = 0.1 * 0.01 / sqrt(ms + 1e-3)
    want = 1.0 - 0.1 * 0.01 / np.sqrt(0.9 + 0.1 * 1e-4 + 1e-3)
    np.testing.assert_allclose(v.numpy(), want, rtol=1e-6)
    keras_default = keras.optimizers.RMSprop(learning_rate=0.1, rho=0.9, epsilon=1e-3)
    w = keras.Variable(np.ones(3, np.float32))
    keras_default.apply_gradients([(np.full(3, 0.01, np.float32), w)])
    assert abs(1.0 - w.numpy()[0]) > 10 * abs(1.0 - v.numpy()[0])
