"""The on-device training loop: in-graph child sampling, K steps per call, one child copy."""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks.first_step import count_child_calls
from tf_bignas.model import Supernet
from tf_bignas.space import get_space
from tf_bignas.train.step import (
    IDLE_CPU_GRAPH_PASSES,
    ONE_ROUND_GRAPH_PASSES,
    ChildSampler,
    SandwichOptions,
    SandwichStep,
    assign_lanes,
    child_lanes,
    expected_child_macs,
    function_call_options,
    lane_threads,
    one_round_call_options,
    sample_children,
    skip_idle_graph_passes,
    smoothed_labels,
)

BATCH = 8


@pytest.fixture(scope="module")
def space():
    return get_space("bignas_tiny")


@pytest.fixture(scope="module")
def batches(space):
    """Eight real batches (embedded MNIST digits at every training resolution)."""
    from conftest import digit_batches

    return digit_batches(space.train_resolutions, BATCH, count=8, seed=3)


def _dataset(batches):
    stacked = tf.nest.map_structure(lambda *xs: tf.stack(xs), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked)


def test_in_graph_draw_equals_the_decoded_children_and_covers_every_choice(space):
    net = Supernet(space, num_classes=10)
    sampler = ChildSampler(net, num_random=3)
    seen = collections.defaultdict(set)
    encode = tf.function(sampler.encode)  # compiled, as inside the training loop
    for step in range(40):
        children = sampler.sample(7, step)
        encoded = encode(tf.constant(7, tf.int64), tf.constant(step, tf.int64))
        assert children[:2] == [space.largest(), space.smallest()]
        for i, arch in enumerate(children):
            space.validate(arch)
            for key, value in net.encode_arch(arch).items():
                np.testing.assert_array_equal(encoded[key].numpy()[i], value, err_msg=key)
            want = sorted(space.train_resolutions).index(arch.resolution)
            assert encoded["res_index"].numpy()[i] == want
        for arch in children[2:]:
            seen["resolution"].add(arch.resolution)
            seen["depths"].add(arch.depths)
            for s, stage in enumerate(arch.kernels):
                seen[f"kernels{s}"].update(stage)
                seen[f"expands{s}"].update(arch.expand_ratios[s])
            for p, w in enumerate(arch.widths):
                seen[f"width{p}"].add(w)
    assert seen["resolution"] == set(space.train_resolutions)
    assert len(seen["depths"]) > 4
    for s, stage in enumerate(space.stages):
        assert seen[f"kernels{s}"] == set(stage.kernels)
        assert seen[f"expands{s}"] == set(stage.expand_ratios)
    for p, choices in enumerate(space.width_choices()):
        assert seen[f"width{p}"] == set(choices)
    # Keyed on (seed, step) only: the module function draws the same.
    opts = SandwichOptions(num_random=3, seed=7)
    assert sample_children(net, 5, opts) == sampler.sample(7, 5)
    assert sampler.sample(7, 5) != sampler.sample(7, 6)
    assert sampler.sample(7, 5) != sampler.sample(8, 5)


def _train(space, batches, per_call, steps=8, lean_grappler=False, eager_first=False, lanes=1):
    keras.utils.set_random_seed(0)
    net = Supernet(space, num_classes=10, dropout_rate=0.5)
    opt = keras.optimizers.RMSprop(1e-3, momentum=0.9)
    step_fn = SandwichStep(
        net, opt, SandwichOptions(seed=4), BATCH, lean_grappler=lean_grappler, lanes=lanes
    )
    iterator = iter(_dataset(batches))
    losses = []
    first = 0
    if eager_first:
        out = step_fn.run_eagerly(iterator, 0)
        losses.append(out.losses.numpy())
        assert int(out.bad_step.numpy()) == -1
        # Nothing traced: neither the step nor the child pass.
        assert step_fn.loop_tracing_count == 0 and step_fn.child_tracing_count == 0
        first = 1
    for start in range(first, steps, per_call):
        out = step_fn.run(iterator, start, per_call)
        losses.append(out.losses.numpy())
        assert int(out.bad_step.numpy()) == -1
    assert step_fn.loop_tracing_count == 1
    assert int(opt.iterations.numpy()) == steps
    return [v.numpy() for v in net.trainable_variables], losses


def test_one_step_per_call_and_four_steps_per_call_train_the_same_weights(space, batches):
    one, losses_one = _train(space, batches, 1)
    four, losses_four = _train(space, batches, 4)
    keras.utils.set_random_seed(0)  # the initial weights of both runs
    start = [v.numpy() for v in Supernet(space, num_classes=10).trainable_variables]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(start, one)) > 1e-3  # it trained
    for a, b in zip(one, four):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(losses_one[3], losses_four[0])
    np.testing.assert_array_equal(losses_one[7], losses_four[1])


def test_a_first_step_run_op_by_op_trains_what_the_compiled_step_trains(space, batches):
    """`run_eagerly` (a fresh run's first step): same batch, children and losses, no trace."""
    compiled, losses_compiled = _train(space, batches, 1, steps=3)
    eager, losses_eager = _train(space, batches, 1, steps=3, eager_first=True)
    # Step 0's forward passes are the same ops on the same values: equal losses.
    np.testing.assert_array_equal(losses_compiled[0], losses_eager[0])
    # Its gradients add some terms in another order: equal to float rounding,
    # and the next steps read the next batches and draw the same children.
    for a, b in zip(losses_compiled[1:], losses_eager[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    # The BN betas start at zero and sit near 1e-6 after three steps; their
    # gradients are sums that cancel, which the two orders round apart by up
    # to 1.2e-6 since the convolution gradients run on other kernels (CI,
    # 2026-12-07; 0.9e-6 in a lone run).
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
    keras.utils.set_random_seed(0)
    net = Supernet(space, num_classes=10, mode="mask")
    xla = SandwichStep(net, keras.optimizers.SGD(0.1), SandwichOptions(), BATCH, jit_compile=True)
    assert not xla.can_run_eagerly
    with pytest.raises(ValueError, match="run_eagerly needs one replica and no XLA"):
        xla.run_eagerly(iter(_dataset(batches)), 0)


@pytest.mark.parametrize("classes", [10, 7, 1000])
def test_smoothed_labels_are_the_same_op_by_op_and_compiled(classes):
    """The largest child's targets: a step run op by op needs the compiled step's bits."""
    labels = tf.constant([5, 3, 0, 6], tf.int32)
    compiled = tf.function(smoothed_labels)
    for eps in (0.1, 0.3, 0.0):
        eps = tf.constant(eps)
        got = smoothed_labels(labels, classes, eps).numpy()
        np.testing.assert_array_equal(got, compiled(labels, classes, eps).numpy())
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
        want = np.full((4, classes), float(eps) / classes)
        want[np.arange(4), labels.numpy()] += 1.0 - float(eps)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_children_in_lanes_train_the_loop_s_weights_bit_for_bit(space, batches):
    """Lanes (children at the same time, one copy each) are the loop's ops and sum order."""
    loop, losses_loop = _train(space, batches, 1, steps=4)
    lanes, losses_lanes = _train(space, batches, 2, steps=4, lanes=2)
    for a, b in zip(loop, lanes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(losses_loop[1], losses_lanes[0])  # a call's last step
    np.testing.assert_array_equal(losses_loop[3], losses_lanes[1])
    # Op by op, the lanes' step is the loop's too.
    _, losses_eager = _train(space, batches, 1, steps=2, eager_first=True, lanes=2)
    np.testing.assert_array_equal(losses_eager[0], losses_loop[0])


def test_each_lane_waits_for_its_previous_child_only(space):
    """Child i's pass waits for the child before it in its lane, the largest's logits feed the rest."""
    net = Supernet(space, num_classes=10)
    opt = keras.optimizers.SGD(0.1)
    step_fn = SandwichStep(net, opt, SandwichOptions(num_random=3), BATCH, lanes=2)
    assert step_fn.unrolled and step_fn.lanes == 2
    spec = {
        "images": {r: tf.TensorSpec([BATCH, r, r, 3], tf.float32) for r in space.train_resolutions},
        "label": tf.TensorSpec([BATCH], tf.int32),
    }
    iterator = iter(tf.data.Dataset.from_tensors(_zeros(spec)).repeat())
    concrete = step_fn._loop_fn.get_concrete_function(
        iterator, tf.constant(0, tf.int64), tf.constant(1, tf.int64), step_fn._knobs(5)
    )
    graphs = [concrete.graph] + [
        f.graph for f in concrete.graph._functions.values() if hasattr(f, "graph")
    ]
    calls = next(
        ops
        for g in graphs
        for ops in [
            [
                op
                for op in g.get_operations()
                if op.type in ("PartitionedCall", "StatefulPartitionedCall")
                and "_child_pass" in op.get_attr("f").name
            ]
        ]
        if len(ops) == 5
    )

    def waits_for(op):
        """The child calls that `op` (or the ops that feed it) waits for by control edges."""
        found, seen, stack = set(), set(), [op]
        while stack:
            o = stack.pop()
            for c in o.control_inputs:
                if c in calls:
                    found.add(calls.index(c))
            for x in o.inputs:
                if x.op not in seen and x.op not in calls:
                    seen.add(x.op)
                    stack.append(x.op)
        return found

    lane = step_fn.child_lane
    assert sorted(set(lane)) == [0, 1]
    previous = [[j for j in range(i) if lane[j] == lane[i]][-1:] for i in range(len(lane))]
    assert [sorted(waits_for(c)) for c in calls] == previous
    one = SandwichStep(net, opt, SandwichOptions(num_random=3), BATCH, lanes=9)
    assert one.lanes == 5  # at most one lane per child
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        SandwichStep(net, opt, SandwichOptions(), BATCH, lanes=0)


def test_lanes_take_the_children_costliest_first_so_they_end_together(space):
    # Largest, smallest, two random children: the largest shares its lane with
    # the smallest, the random ones share the other.
    assert assign_lanes([10.0, 3.0, 5.5, 5.5], 2) == [0, 0, 1, 1]
    assert assign_lanes([10.0, 3.0, 5.5, 5.5], 3) == [0, 1, 1, 2]
    assert assign_lanes([10.0, 3.0, 5.5, 5.5], 1) == [0, 0, 0, 0]
    assert assign_lanes([1.0, 1.0, 1.0], 2) == [0, 1, 0]
    macs = expected_child_macs(Supernet(space, num_classes=10), num_random=2)
    assert macs[0] > macs[2] == macs[3] > macs[1] > 0


def test_a_cpu_host_runs_one_lane_per_core_with_its_cores_shared_among_them():
    assert child_lanes("default", False, 4, cores=2) == 2
    assert child_lanes("default", False, 4, cores=16) == 4
    assert child_lanes("default", False, 4, cores=1) == 1
    assert child_lanes("mirrored", False, 4, cores=8) == 1
    assert child_lanes("default", True, 4, cores=8) == 1
    assert lane_threads(2, cores=2) == (1, 2)
    assert lane_threads(4, cores=16) == (4, 16)
    assert lane_threads(4, cores=2) == (1, 2)


def test_skipping_the_idle_graph_passes_trains_the_same_weights(space, batches):
    """The lean Grappler of CPU hosts (idle passes off, one round) changes nothing in the step."""
    saved = tf.config.optimizer.get_experimental_options()
    try:
        tf.config.optimizer.set_experimental_options({p: None for p in IDLE_CPU_GRAPH_PASSES})
        full, losses_full = _train(space, batches, 2, steps=4)
        assert skip_idle_graph_passes()  # no GPU on the machines that run the suite
        options = tf.config.optimizer.get_experimental_options()
        assert all(options[p] is False for p in IDLE_CPU_GRAPH_PASSES)
        lean, losses_lean = _train(space, batches, 2, steps=4, lean_grappler=True)
    finally:
        tf.config.optimizer.set_experimental_options(
            {p: saved.get(p) for p in IDLE_CPU_GRAPH_PASSES}
        )
    for a, b in zip(full, lean):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate(losses_full), np.concatenate(losses_lean))


def test_one_round_options_reach_the_calls_in_their_block_only():
    """The step's list of passes travels with its calls, and is in the graph cache's key."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context as tf_context

    from tf_bignas.train.graph_cache import graph_fingerprint

    def rewrites():
        options = tf_context.context().function_call_options
        config = config_pb2.ConfigProto.FromString(options.config_proto_serialized)
        return config.graph_options.rewrite_options, config.allow_soft_placement

    before, soft = rewrites()
    assert not before.optimizers  # TensorFlow's default list, two rounds
    outside = graph_fingerprint("0" * 64)
    with function_call_options(one_round_call_options()):
        inside, soft_inside = rewrites()
        assert tuple(inside.optimizers) == ONE_ROUND_GRAPH_PASSES
        assert inside.meta_optimizer_iterations == rewriter_config_pb2.RewriterConfig.ONE
        assert soft_inside == soft  # the rest of the thread's options kept
        assert graph_fingerprint("0" * 64) != outside
    assert rewrites()[0] == before and graph_fingerprint("0" * 64) == outside
    with function_call_options(None):
        assert rewrites()[0] == before


def test_run_equals_calls_on_the_children_it_draws(space, batches):
    """`run` samples in-graph the children `sample_children` names, and trains as `__call__`."""
    opts = SandwichOptions(seed=2)

    def make():
        keras.utils.set_random_seed(1)
        net = Supernet(space, num_classes=10, dropout_rate=0.0)
        return net, SandwichStep(net, keras.optimizers.SGD(0.05), opts, BATCH)

    net_a, step_a = make()
    out = step_a.run(iter(_dataset(batches[:3])), 0, 3)
    net_b, step_b = make()
    for s in range(3):
        losses = step_b(batches[s], sample_children(net_b, s, opts), s)["losses"]
    np.testing.assert_allclose(out.losses.numpy(), losses, rtol=1e-5)
    for a, b in zip(net_a.trainable_variables, net_b.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_a_non_finite_loss_is_recorded_with_its_step(space, batches):
    keras.utils.set_random_seed(0)
    net = Supernet(space, num_classes=10)
    step_fn = SandwichStep(net, keras.optimizers.SGD(1e30), SandwichOptions(), BATCH)
    out = step_fn.run(iter(_dataset(batches)), 10, 6)
    bad = int(out.bad_step.numpy())
    assert 10 < bad < 16  # step 10 is finite (fresh weights); a later one is not
    assert not np.all(np.isfinite(out.bad_losses.numpy()))


@pytest.mark.parametrize(
    ("mode", "loop_copies", "unrolled_copies"),
    [("slice", 1, 4), ("mask", 2, 8)],  # mask: one branch per training resolution (2)
)
def test_the_step_holds_one_child_pass_per_resolution_branch(
    space, mode, loop_copies, unrolled_copies
):
    """Copies of the child's forward+backward in the compiled training step."""
    counts = {}
    for unrolled in (False, True):
        net = Supernet(space, num_classes=10, mode=mode)
        step_fn = SandwichStep(
            net,
            keras.optimizers.SGD(0.1),
            SandwichOptions(),
            BATCH,
            jit_compile=mode == "mask",
            unroll_children=unrolled,
        )
        spec = {
            "images": {
                r: tf.TensorSpec([BATCH, r, r, 3], tf.float32) for r in space.train_resolutions
            },
            "label": tf.TensorSpec([BATCH], tf.int32),
        }
        iterator = iter(tf.data.Dataset.from_tensors(_zeros(spec)).repeat())
        concrete = step_fn._loop_fn.get_concrete_function(
            iterator, tf.constant(0, tf.int64), tf.constant(1, tf.int64), step_fn._knobs(4)
        )
        counts[unrolled] = count_child_calls(concrete.graph.as_graph_def())
    assert counts == {False: loop_copies, True: unrolled_copies}


def _zeros(spec):
    return tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), spec)


def test_fused_rmsprop_update_equals_keras_rmsprop():
    """RMSpropTF's one-op update (TF1's ApplyRMSProp) computes Keras' RMSprop update."""
    from tf_bignas.run.optimizers import RMSpropTF

    rng = np.random.default_rng(0)
    start = [
        rng.normal(size=(3, 3, 4, 2)).astype(np.float32),
        rng.normal(size=5).astype(np.float32),
    ]
    grads = [[rng.normal(size=v.shape).astype(np.float32) for v in start] for _ in range(4)]

    def train(fused):
        variables = [keras.Variable(v) for v in start]
        opt = RMSpropTF(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
        assert opt._fused_update()
        if not fused:
            opt._fused_update = lambda: False
        opt.build(variables)
        update = tf.function(lambda gs: opt.apply_gradients(zip(gs, variables)))
        for g in grads:
            update([tf.constant(x) for x in g])
        return [v.numpy() for v in variables]

    fused, plain = train(True), train(False)
    for a, b, s in zip(fused, plain, start):
        assert np.max(np.abs(a - s)) > 1e-2
        np.testing.assert_allclose(a, b, atol=1e-6)
