"""The option tree is written once (tf_bignas.run.schema): defaults, checks, resume rules."""

from __future__ import annotations

import importlib.util
import os
import urllib.error
from types import MappingProxyType

import pytest
import tensorflow as tf
from conftest import write_quickstart_variant

from tf_bignas.run import record, schema
from tf_bignas.run.config import default_config, validate_config
from tf_bignas.run.validation import (
    ConfigError,
    Rule,
    check_config_keys,
    check_model_mode,
    flatten,
    option_rules,
    validate_options,
)
from tf_bignas.train import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_config_is_the_schemas_defaults():
    config = default_config()
    assert flatten(config) == schema.defaults()
    assert list(schema.defaults()) == list(schema.OPTIONS)
    assert not config.is_locked and config.is_type_safe
    validate_options(config)  # every default keeps its own rule
    assert config.sandwich.distill_weight == 1.0 and config.sandwich.distill_ramp == 0.0


def test_the_table_is_read_only_and_complete():
    assert isinstance(schema.OPTIONS, MappingProxyType)
    with pytest.raises(TypeError):
        schema.OPTIONS["train.epochs"] = None  # type: ignore[index]
    for name, option in schema.OPTIONS.items():
        assert option.name == name
        assert isinstance(option.rule, Rule)
        assert option.doc.strip() and "\n" not in option.doc, name
        assert not isinstance(option.default, (list, dict, set)), name  # immutable defaults
    assert option_rules() == {n: o.rule for n, o in schema.OPTIONS.items()}


def test_resumable_options_derive_from_the_schema():
    assert record.RESUMABLE_OPTIONS == schema.resumable_options()
    marked = {n for n, o in schema.OPTIONS.items() if o.resumable}
    for name in schema.OPTIONS:
        assert record.is_resumable(name) == (name in marked), name
    assert "chain.*" in record.RESUMABLE_OPTIONS  # a section resumable as a whole
    assert record.RESUMABLE_OPTIONS[0] == "train.log_every"
    for defining in ("seed", "train.batch_size", "model.space", "sandwich.distill_weight"):
        assert not record.is_resumable(defining)


@pytest.mark.parametrize(
    "key, origin, expected",
    [
        (
            "train.epoch",
            "--config.train.epoch",
            "unknown option train.epoch (from --config.train.epoch); did you mean "
            "train.epochs? options of train: batch_size,",
        ),
        ("model.spce", "--config=x.py", "did you mean model.space? options of model: bn_epsilon"),
        ("trian.epochs", "--config=x.py", "did you mean train.epochs? there is no section trian"),
        ("seeds", "--config.seeds", "did you mean seed? top-level options: seed; sections: chain"),
    ],
)
def test_an_unknown_option_is_named_with_its_origin_and_a_suggestion(key, origin, expected):
    with pytest.raises(ConfigError) as e:
        schema.check_known_options([key], origin)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_a_config_with_a_misspelt_key_is_rejected():
    config = default_config()
    config.model.spce = "bignas_tiny"  # an unlocked tree accepts it; the check does not
    with pytest.raises(ConfigError, match=r"unknown option model.spce \(from --config=f.py\)"):
        check_config_keys(config, "--config=f.py")
    with pytest.raises(ConfigError, match="did you mean model.space"):
        validate_config(config)


def test_a_config_file_with_a_misspelt_key_is_rejected(tmp_path):
    path = write_quickstart_variant(tmp_path / "typo.py", "c.train.epoch = 3.0")
    spec = importlib.util.spec_from_file_location("typo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ConfigError, match=r"train.epoch \(from the config\); did you mean"):
        validate_config(module.get_config())


def test_model_mode_is_checked_in_one_place():
    check_model_mode("mask", "tpu", jit_compile=True)
    check_model_mode("slice")
    with pytest.raises(ConfigError, match=r"config.model.mode = 'masked' is out of range"):
        check_model_mode("masked")
    with pytest.raises(ConfigError, match="runtime.strategy='tpu' needs static shapes"):
        check_model_mode("slice", "tpu")
    with pytest.raises(ConfigError, match="runtime.jit_compile=True needs static shapes"):
        check_model_mode("slice", jit_compile=True)


def test_a_tpu_that_cannot_be_reached_is_named(monkeypatch):
    def unreachable(tpu=None):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", unreachable)
    with pytest.raises(ValueError) as e:
        distribute.build_strategy("tpu", "my-tpu")
    message = str(e.value)
    assert "no TPU found named 'my-tpu'" in message and "Name or service not known" in message
    assert "reachable from this VM" in message and "--tpu=local" in message
