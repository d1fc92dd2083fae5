"""Tests of the sandwich step: children, distillation, regularisation, tracing."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_bignas.model import Supernet
from tf_bignas.model.slicing import extract_child
from tf_bignas.space import get_space
from tf_bignas.train.step import SandwichOptions, SandwichStep, sample_children

BATCH = 8


@pytest.fixture(scope="module")
def space():
    return get_space("bignas_tiny")


@pytest.fixture(scope="module")
def batches(space):
    """Real batches: embedded MNIST digits at every training resolution."""
    from conftest import digit_batches

    return digit_batches(space.train_resolutions, BATCH, count=4, seed=0)


def _make(space, options, optimizer=None, seed=0, **net_kwargs):
    keras.utils.set_random_seed(seed)
    net = Supernet(space, num_classes=10, **net_kwargs)
    opt = optimizer or keras.optimizers.SGD(learning_rate=0.1)
    return net, SandwichStep(net, opt, options, BATCH)


def test_sample_children_is_keyed_on_seed_and_step(space):
    net = Supernet(space, num_classes=10)
    opts = SandwichOptions(num_random=3, seed=7)
    a = sample_children(net, 5, opts)
    assert a == sample_children(net, 5, opts)
    assert a[0] == space.largest() and a[1] == space.smallest()
    assert len(a) == 5
    assert a != sample_children(net, 6, opts)
    assert a != sample_children(net, 5, dataclasses.replace(opts, seed=8))


def test_200_steps_trace_once_and_losses_fall(space, batches):
    opts = SandwichOptions()
    net, step = _make(space, opts, keras.optimizers.Adam(2e-3))
    first = last = None
    for s in range(200):
        losses = step(batches[s % 2], sample_children(net, s, opts), s)["losses"]
        first = losses if first is None else first
        last = losses
        assert np.all(np.isfinite(losses))
    assert step.tracing_count <= len(space.train_resolutions)
    assert step.tracing_count == 1
    assert step.child_tracing_count == 1
    assert last[0] < first[0] - 0.5  # the largest child fits the two batches


@pytest.fixture(scope="module")
def frozen(space):
    """A supernet and a step whose optimizer changes nothing (SGD, lr 0): losses only."""
    net, step = _make(space, SandwichOptions(), keras.optimizers.SGD(0.0), dropout_rate=0.9)
    return net, step


def _losses(frozen, options, batch, children):
    net, step = frozen
    step.options = options
    return step(batch, children, 0)["losses"]


def _direct_losses(net, batch, children, smoothing=0.1):
    """Label losses of each child computed outside the step (no dropout)."""
    out = []
    for arch in children:
        logits = net(batch["images"][arch.resolution], arch=arch, training=True)
        target = tf.one_hot(batch["label"], 10) * (1 - smoothing) + smoothing / 10
        out.append(float(tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(target, logits))))
    return np.asarray(out)


def test_children_learn_only_from_the_largest_childs_soft_labels(space, batches, frozen):
    opts = SandwichOptions(weight_decay=0.0)
    batch = batches[0]
    wrong = dict(batch, label=(batch["label"] + 3) % 10)
    children = sample_children(frozen[0], 0, opts)
    la = _losses(frozen, opts, batch, children)
    lb = _losses(frozen, opts, wrong, children)
    assert abs(la[0] - lb[0]) > 1e-3  # the largest child sees the labels
    np.testing.assert_allclose(la[1:], lb[1:], rtol=1e-5)  # the others only its predictions
    # Ablation: without inplace distillation every child sees the labels.
    off = dataclasses.replace(opts, inplace_distillation=False)
    lc = _losses(frozen, off, batch, children)
    ld = _losses(frozen, off, wrong, children)
    assert np.all(np.abs(lc - ld) > 1e-4)
    assert frozen[1].tracing_count == 1  # options are tensors: no retrace


def test_distill_weight_and_ramp_mix_teacher_and_labels_linearly(space, batches, frozen):
    """Cross entropy is linear in the target: a mixed target gives the mixed loss."""
    net, step = frozen
    opts = SandwichOptions(weight_decay=0.0)
    children = sample_children(net, 0, opts)

    def losses(options, at):
        step.options = options
        return step(batches[0], children, at)["losses"]

    teacher = losses(opts, 0)
    labels = losses(dataclasses.replace(opts, inplace_distillation=False), 0)
    assert np.all(np.abs(teacher[1:] - labels[1:]) > 1e-3)
    half = losses(dataclasses.replace(opts, distill_weight=0.5), 0)
    np.testing.assert_allclose(half[1:], 0.5 * teacher[1:] + 0.5 * labels[1:], rtol=1e-4)
    # Ramp over 4 steps: at step 0 the teacher's share is 1/4; from step 3 on, all of it.
    ramp = dataclasses.replace(opts, distill_ramp_steps=4)
    np.testing.assert_allclose(
        losses(ramp, 0)[1:], 0.25 * teacher[1:] + 0.75 * labels[1:], rtol=1e-4
    )
    np.testing.assert_allclose(losses(ramp, 3)[1:], losses(opts, 3)[1:], rtol=1e-5)
    np.testing.assert_allclose(teacher[0], half[0], rtol=1e-6)  # the largest: labels always


def test_each_child_trains_on_its_own_crop_when_the_batch_holds_one_per_child(batches, frozen):
    opts = SandwichOptions(inplace_distillation=False, weight_decay=0.0)
    children = sample_children(frozen[0], 0, opts)
    labels = batches[0]["label"]
    # Child k's crops: the images of batch k (real digits), under batch 0's labels.
    per_child = {
        "images": {
            r: tf.stack([b["images"][r] for b in batches[: len(children)]], axis=1)
            for r in batches[0]["images"]
        },
        "label": labels,
    }
    got = _losses(frozen, opts, per_child, children)
    for k, arch in enumerate(children[1:], start=1):
        own = dict(batches[k], label=labels)
        want = _direct_losses(frozen[0], own, [arch])[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-4)
        shared = _direct_losses(frozen[0], dict(batches[0]), [arch])[0]
        assert abs(got[k] - shared) > 1e-3  # not the shared patch
    three = dict(per_child, images={r: x[:, :3] for r, x in per_child["images"].items()})
    with pytest.raises(ValueError, match="holds 3 crops per example, one per child"):
        _losses(frozen, opts, three, children)


def test_dropout_on_the_largest_child_only_unless_switched(batches, frozen):
    net = frozen[0]
    base = SandwichOptions(inplace_distillation=False, weight_decay=0.0)
    children = sample_children(net, 0, base)
    want = _direct_losses(net, batches[0], children)
    got = _losses(frozen, base, batches[0], children)
    assert abs(got[0] - want[0]) > 1e-3  # dropout 0.9 on the largest child
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-4)
    everywhere = dataclasses.replace(base, regularize_all_children=True)
    assert np.all(np.abs(_losses(frozen, everywhere, batches[0], children) - want) > 1e-4)


def _kernel_elements(model: keras.Model) -> int:
    """Weights in the conv, depthwise and dense kernels of a (sliced, stock Keras) model."""
    return sum(int(np.prod(v.shape)) for v in model.weights if v.path.endswith("kernel"))


def test_weight_decay_of_the_largest_once_and_of_each_child_on_its_own_slices(space, batches):
    wd = 0.5
    net, step = _make(space, SandwichOptions(), keras.optimizers.SGD(1.0))
    # Kernels of magnitude 0.05 everywhere (signs kept): every decayed weight is
    # far from 0, so the decay's multiple of it can be read off per weight.
    for v in net.trainable_variables:
        if v.path.endswith("kernel"):
            v.assign(0.05 * np.sign(v.numpy()) + (v.numpy() == 0) * 0.05)
    start = [v.numpy() for v in net.variables]
    children = sample_children(net, 0, SandwichOptions())

    def update(options):
        for v, value in zip(net.variables, start):
            v.assign(value)
        step.options = options
        step(batches[0], children, 0)
        return [v.numpy() for v in net.trainable_variables]

    kernels = [v.path.endswith("kernel") for v in net.trainable_variables]
    assert sum(kernels) > 10
    before = [v for v, var in zip(start, net.variables) if var.trainable]
    # Largest child only: SGD(lr=1) takes wd * w more off every kernel, nothing else.
    decayed = update(SandwichOptions(weight_decay=wd))
    plain = update(SandwichOptions(weight_decay=0.0))
    for w0, is_kernel, a, b in zip(before, kernels, decayed, plain):
        np.testing.assert_allclose(b - a, wd * w0 if is_kernel else 0.0, atol=1e-5)
    assert step.tracing_count == 1
    # Every child: each adds wd * w on the kernel slices it uses, and only there.
    every = update(SandwichOptions(weight_decay=wd, regularize_all_children=True))
    reference = update(SandwichOptions(weight_decay=0.0, regularize_all_children=True))
    assert step.tracing_count == 2  # the children's own decay is built into the graph once
    users = []  # per kernel weight: how many children decayed it (1 + the others using it)
    for w0, is_kernel, a, b in zip(before, kernels, every, reference):
        if not is_kernel:
            np.testing.assert_allclose(b - a, 0.0, atol=1e-5)
            continue
        times = (b - a) / (wd * w0)
        np.testing.assert_allclose(times, np.round(times), atol=1e-3)
        users.append(np.round(times))
    users = np.concatenate([u.ravel() for u in users])
    assert users.min() == 1 and users.max() == len(children)
    # The weights each other child decayed add up to its own kernels' size, as
    # its sliced standalone model (tf_bignas.model.slicing) holds them.
    expected = sum(
        _kernel_elements(extract_child(net, child, allow_uncalibrated=True))
        for child in children[1:]
    )
    assert int(users.sum()) - users.size == expected


def test_mask_mode_step_under_xla(space, batches):
    opts = SandwichOptions()
    keras.utils.set_random_seed(0)
    net = Supernet(space, num_classes=10, mode="mask")
    step = SandwichStep(net, keras.optimizers.SGD(0.05), opts, BATCH, jit_compile=True)
    for s in range(3):
        losses = step(batches[s % 2], sample_children(net, s, opts), s)["losses"]
        assert np.all(np.isfinite(losses))
    assert step.tracing_count == 1
    # A child's own weight decay slices its kernels: slice mode only, said at the trace.
    step.options = dataclasses.replace(opts, regularize_all_children=True)
    with pytest.raises(ValueError, match="needs mode='slice'"):
        step(batches[0], sample_children(net, 0, opts), 0)
    with pytest.raises(ValueError, match="mode='mask'"):
        SandwichStep(Supernet(space, 10), keras.optimizers.SGD(0.1), opts, BATCH, jit_compile=True)


def test_resolution_of_each_child_is_used(space, batches, frozen):
    """Random children at 16 and 32 see the patch at their resolution."""
    opts = SandwichOptions(inplace_distillation=False, weight_decay=0.0)
    children = sample_children(frozen[0], 0, opts)
    children[2] = space.sample(99, resolutions=[16])
    children[3] = space.sample(98, resolutions=[32])
    losses = _losses(frozen, opts, batches[0], children)
    want = _direct_losses(frozen[0], batches[0], children)
    np.testing.assert_allclose(losses[2:], want[2:], rtol=1e-4)
