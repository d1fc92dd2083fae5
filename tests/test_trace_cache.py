"""The persistent trace cache (`tf_bignas.train.trace_cache`), in one process.

Across fresh processes (the case it is for: a resume, the next run of a
sweep) it is tested in test_graph_cache.py; here a second `SandwichStep`
built like the first stands in for the later process.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import function_pb2

from tf_bignas.model import Supernet
from tf_bignas.run.optimizers import RMSpropTF
from tf_bignas.space import get_space
from tf_bignas.train import trace_cache
from tf_bignas.train.step import SandwichOptions, SandwichStep

RES, BATCH, CLASSES, STEPS = 32, 4, 10, 3


def _batches() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "images": {RES: rng.normal(size=(BATCH, RES, RES, 3)).astype("float32")},
        "label": rng.integers(0, CLASSES, size=BATCH).astype(np.int32),
    }


def _train(cache: str | None, **options: object) -> tuple[list[list[float]], SandwichStep]:
    """A fresh supernet and step, the same initial weights each time; losses of 3 steps."""
    keras.utils.set_random_seed(0)
    space = get_space("bignas_tiny").with_resolutions([RES])
    net = Supernet(space, CLASSES)
    # A fixed name: Keras numbers a second optimizer's variables ("rms_1/..."),
    # and the variables' paths are part of the key.
    opt = RMSpropTF(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-3, name="rms")
    step = SandwichStep(net, opt, SandwichOptions(**options), BATCH, graph_cache_dir=cache)
    iterator = iter(tf.data.Dataset.from_tensors(_batches()).repeat())
    losses = [step.run(iterator, s, 1).losses.numpy().tolist() for s in range(STEPS)]
    return losses, step


def _stored(cache: str) -> list[str]:
    return sorted(os.listdir(os.path.join(cache, trace_cache.TRACES_DIR)))


def test_a_later_step_loads_the_trace_and_trains_the_same_weights(tmp_path):
    cache = str(tmp_path / "cache")
    plain, plain_step = _train(None)
    first, first_step = _train(cache)
    assert first_step.loop_tracing_count == 1 and plain_step.loop_tracing_count == 1
    meta, pb = _stored(cache)
    second, second_step = _train(cache)
    assert second_step.loop_tracing_count == 0  # loaded, not traced
    assert first == second == plain  # bit for bit, and as without any cache
    assert _stored(cache) == [meta, pb]
    # Options that enter the step as tensors (a sweep's seeds, distillation
    # weights) share the trace, and train as they do without a cache.
    other, other_step = _train(cache, seed=3, distill_weight=0.5, label_smoothing=0.0)
    assert other_step.loop_tracing_count == 0 and _stored(cache) == [meta, pb]
    assert other == _train(None, seed=3, distill_weight=0.5, label_smoothing=0.0)[0] != first

    # Every function the stored library calls is in it, under its new name.
    library = function_pb2.FunctionDefLibrary()
    library.ParseFromString((tmp_path / "cache" / trace_cache.TRACES_DIR / pb).read_bytes())
    names = {f.signature.name for f in library.function}
    called = {
        a.func.name for f in library.function for n in f.node_def for a in n.attr.values()
    } | {
        g.name
        for f in library.function
        for n in f.node_def
        for a in n.attr.values()
        for g in a.list.func
    }
    called.discard("")
    suffix = "_tc" + pb[:12]
    assert called and called <= names and all(n.endswith(suffix) for n in names)
    record = json.loads((tmp_path / "cache" / trace_cache.TRACES_DIR / meta).read_text())
    assert record["function"] in names and record["num_outputs"] == 3


def test_another_step_gets_its_own_trace(tmp_path):
    cache = str(tmp_path / "cache")
    _train(cache)
    # The children's own decay is a Python constant of the trace: another graph.
    losses, step = _train(cache, regularize_all_children=True)
    assert step.loop_tracing_count == 1 and len(_stored(cache)) == 4
    again, step = _train(cache, regularize_all_children=True)
    assert step.loop_tracing_count == 0 and again == losses

    # An iterator of other batches enters as a resource handle like the first:
    # its element spec tells them apart, and the step is traced for it.
    half = {k: v for k, v in _batches().items()}
    half = {"images": {RES: half["images"][RES][:2]}, "label": half["label"][:2]}
    step.run(iter(tf.data.Dataset.from_tensors(half).repeat()), STEPS, 1)
    assert step.loop_tracing_count == 1 and len(_stored(cache)) == 6


def test_a_damaged_trace_is_removed_and_traced_again(tmp_path, caplog):
    cache = str(tmp_path / "cache")
    first, _ = _train(cache)
    _, pb = _stored(cache)
    path = tmp_path / "cache" / trace_cache.TRACES_DIR / pb
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING):
        again, step = _train(cache)
    assert "does not match its checksum; removed, the step is traced again" in caplog.text
    assert step.loop_tracing_count == 1 and again == first
    _, later = _train(cache)
    assert later.loop_tracing_count == 0


def _key(settings=("a",), variables=None, constants=(True,), flat=None) -> str:
    variables = variables if variables is not None else [keras.Variable(np.zeros((2, 3)))]
    flat = flat if flat is not None else [tf.constant(1.0)]
    return trace_cache.TraceKey.of(settings, (), variables, list(constants), flat).digest


def test_the_key_follows_what_the_trace_is_built_from():
    v = [keras.Variable(np.zeros((2, 3)), name="w")]
    base = _key(variables=v)
    assert base == _key(variables=v)
    assert base != _key(settings=("b",), variables=v)
    assert base != _key(variables=[keras.Variable(np.zeros((2, 4)), name="w")])
    assert base != _key(variables=[keras.Variable(np.zeros((2, 3)), name="u")])
    assert base != _key(variables=v, constants=(False,))
    assert base != _key(variables=v, flat=[tf.constant(1)])
    assert base != _key(variables=v, flat=[tf.constant([1.0])])


def test_the_key_follows_the_source_of_the_classes_it_is_given(tmp_path, monkeypatch):
    module = tmp_path / "custom_model_for_key.py"
    module.write_text("class Model:\n    scale = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import custom_model_for_key  # noqa: PLC0415

    def key() -> str:
        return trace_cache.TraceKey.of(["a"], [custom_model_for_key.Model()], [], [], []).digest

    before = key()
    module.write_text("class Model:\n    scale = 3\n")
    assert key() != before


def test_a_trace_that_captures_more_than_the_variables_is_not_stored(tmp_path):
    v = keras.Variable(np.ones((3,), np.float32))
    outside = tf.constant([1.0, 2.0, 3.0])
    fn = tf.function(lambda x: x * v + outside)
    x = tf.constant([1.0, 1.0, 1.0])
    concrete = fn.get_concrete_function(x)
    key = trace_cache.TraceKey.of(["t"], (), [v], [], [x])
    assert trace_cache.store(str(tmp_path), key, concrete, [x], [v], "d") is None
    assert not os.path.exists(tmp_path / trace_cache.TRACES_DIR)

    # Only the variable: stored, and the stored copy computes the same.
    fn = tf.function(lambda x: x * v + 1.0)
    concrete = fn.get_concrete_function(x)
    stored = trace_cache.store(str(tmp_path), key, concrete, [x], [v], "d")
    assert stored is not None and stored.captures == (0,)
    np.testing.assert_array_equal(stored([x], stored.captured_inputs([v]))[0], fn(x))
    loaded = trace_cache.load(str(tmp_path), key)
    assert loaded == stored


def test_a_trace_that_calls_python_is_not_stored(tmp_path, caplog):
    v = keras.Variable(np.ones((3,), np.float32))
    fn = tf.function(lambda x: tf.py_function(lambda t: t * 2.0, [x * v], tf.float32))
    x = tf.constant([1.0, 1.0, 1.0])
    key = trace_cache.TraceKey.of(["p"], (), [v], [], [x])
    with caplog.at_level(logging.INFO):
        stored = trace_cache.store(str(tmp_path), key, fn.get_concrete_function(x), [x], [v], "d")
    assert stored is None and "the step calls Python (['EagerPyFunc'])" in caplog.text


def test_an_unwritable_cache_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    v = keras.Variable(np.ones((3,), np.float32))
    x = tf.constant([1.0, 1.0, 1.0])
    concrete = tf.function(lambda x: x * v).get_concrete_function(x)
    key = trace_cache.TraceKey.of(["u"], (), [v], [], [x])
    with pytest.raises(OSError, match="runtime.graph_cache_dir"):
        trace_cache.store(str(blocker / "cache"), key, concrete, [x], [v], "d")


def test_the_sources_are_named_not_located(tmp_path):
    # The same code in two checkouts gives one key; other code another.
    for root in ("a", "b"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "m.py").write_text("x = 1\n")
    digest = trace_cache._source_digest
    a = digest({"m.py": str(tmp_path / "a" / "m.py")})
    assert a == digest({"m.py": str(tmp_path / "b" / "m.py")})
    (tmp_path / "b" / "m.py").write_text("x = 2\n")
    assert a != digest({"m.py": str(tmp_path / "b" / "m.py")})
    names = trace_cache._sources([])
    assert "train/trace_cache.py" in names and not any(os.path.isabs(n) for n in names)
