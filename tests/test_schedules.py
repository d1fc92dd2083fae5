"""Tests of the BigNAS learning-rate schedules and the TF1-style RMSProp."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_bignas.run.optimizers import RMSpropTF, ema_weights
from tf_bignas.train.schedules import BigNASSchedule, scaled_learning_rate


def _lr(schedule, step):
    return float(schedule(step))


def test_linear_scaling_rule():
    assert scaled_learning_rate(0.256, 4096) == pytest.approx(0.256)
    assert scaled_learning_rate(0.256, 1024) == pytest.approx(0.064)


def test_warmup_exponential_decay_and_constant_ending():
    s = BigNASSchedule(
        1.0,
        steps_per_epoch=100,
        total_steps=100_000,
        warmup_epochs=5,
        staircase=False,
        decay_from="warmup_end",
    )
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
    no_floor = BigNASSchedule(
        1.0, 100, 100_000, warmup_epochs=0, constant_ending=False, staircase=False
    )
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
    with pytest.raises(ValueError, match="decay_from 'warmup'.*'step0', 'warmup_end'"):
        BigNASSchedule(1.0, 100, 100, decay_from="warmup")


def test_efficientnet_staircase_counted_from_step0():
    """The LR at a few epochs, computed by hand (100 steps an epoch, 5 warmup epochs).

    EfficientNet: lr = 0.97 ** floor(step / 240) from step 0, warmup included,
    so epoch 5 (step 500) already holds two decays.
    """
    s = BigNASSchedule(1.0, steps_per_epoch=100, total_steps=100_000, warmup_epochs=5)
    assert (s.staircase, s.decay_from) == (True, "step0")  # the defaults
    want = {
        0: 1.0 / 500,  # warmup: (step + 1) / 500
        249: 0.5,
        499: 1.0,  # the last warmup step
        500: 0.9409,  # epoch 5: floor(500 / 240) = 2 decays
        719: 0.9409,  # floor(719 / 240) = 2
        720: 0.912673,  # epoch 7.2: 3 decays, 0.97 ** 3
        1000: 0.88529281,  # epoch 10: floor(4.17) = 4, 0.97 ** 4
        2400: 0.7374241268949283,  # epoch 24: 0.97 ** 10
        # 0.97 ** 98 = 0.0505 > 5%; 0.97 ** 99 = 0.0490 < 5%: the floor from
        # step 99 * 240 = 23,760 (epoch 237.6).
        23_759: 0.0505394,
        23_760: 0.05,
        99_999: 0.05,
    }
    for step, lr in want.items():
        assert _lr(s, step) == pytest.approx(lr, rel=1e-5), step


def test_staircase_and_decay_clock_switches():
    kwargs = dict(initial_lr=1.0, steps_per_epoch=100, total_steps=100_000, warmup_epochs=5)
    smooth0 = BigNASSchedule(**kwargs, staircase=False, decay_from="step0")
    stairs_warm = BigNASSchedule(**kwargs, staircase=True, decay_from="warmup_end")
    smooth_warm = BigNASSchedule(**kwargs, staircase=False, decay_from="warmup_end")
    # Epoch 10 (step 1000).
    assert _lr(smooth0, 1000) == pytest.approx(0.97 ** (1000 / 240), rel=1e-5)  # 0.8808
    assert _lr(stairs_warm, 1000) == pytest.approx(0.9409, rel=1e-5)  # floor(500/240) = 2
    assert _lr(smooth_warm, 1000) == pytest.approx(0.97 ** (500 / 240), rel=1e-5)  # 0.9385
    assert _lr(stairs_warm, 500) == pytest.approx(1.0)  # decay starts at the peak
    # Counted from the end of warmup, the floor comes 5 epochs later: epoch 242.6.
    assert _lr(stairs_warm, 24_259) == pytest.approx(0.97**98, rel=1e-5)
    assert _lr(stairs_warm, 24_260) == pytest.approx(0.05)
    # Cosine ignores staircase; decay_from moves the start of its half period.
    cos0 = BigNASSchedule(1.0, 100, 10_000, kind="cosine", warmup_epochs=5)
    cos_warm = BigNASSchedule(
        1.0, 100, 10_000, kind="cosine", warmup_epochs=5, decay_from="warmup_end"
    )
    # step0: 0.05 + 0.475 * (1 + cos(pi * 500 / 10000)) at the end of warmup.
    assert _lr(cos0, 500) == pytest.approx(0.05 + 0.475 * (1 + np.cos(np.pi * 0.05)), rel=1e-5)
    assert _lr(cos_warm, 500) == pytest.approx(1.0)
    assert _lr(cos0, 5_000) == pytest.approx(0.525, rel=1e-5)
    assert _lr(cos_warm, 5_250) == pytest.approx(0.525, rel=1e-5)


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


def test_ema_warms_up_its_decay_as_tf1_and_swaps_in_for_evaluation():
    v = keras.Variable(np.zeros(2, np.float32))
    opt = RMSpropTF(learning_rate=0.1, momentum=0.0, use_ema=True, ema_momentum=0.9999)
    grads = [np.asarray([1.0, -2.0], np.float32), np.asarray([0.5, 1.0], np.float32)]
    weights, average = [], None
    for i in range(6):
        opt.apply_gradients([(grads[i % 2], v)])
        w = v.numpy().copy()
        weights.append(w)
        # TF1 ExponentialMovingAverage(0.9999, num_updates=i + 1): the first
        # update copies the weights, then decay min(0.9999, (2 + i) / (11 + i)).
        decay = 0.0 if i == 0 else min(0.9999, (2.0 + i) / (11.0 + i))
        average = w if average is None else decay * average + (1.0 - decay) * w
    assert len({tuple(w) for w in weights}) == 6  # the weights moved every step
    with ema_weights(opt, [v]) as swapped:
        assert swapped
        np.testing.assert_allclose(v.numpy(), average, rtol=1e-5)
    np.testing.assert_array_equal(v.numpy(), weights[-1])  # the raw weights are back
    plain = RMSpropTF(learning_rate=0.1)
    plain.apply_gradients([(grads[0], v)])
    before = v.numpy().copy()
    with ema_weights(plain, [v]) as swapped:
        assert not swapped
        np.testing.assert_array_equal(v.numpy(), before)
