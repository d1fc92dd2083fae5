"""Every config loads, documents its launch command, and keeps to the default option tree."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tf_bignas.model import cost
from tf_bignas.space import get_space
from tf_bignas.train.config import build_space, default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        out |= _keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_documents_its_launch_command(name):
    module = _load(name)
    assert f"python -m pipelines.train --config=configs/{name}.py --workdir=" in module.__doc__
    config = module.get_config()
    assert _keys(config) == _keys(default_config())
    space = build_space(config)
    base = get_space(config.model.space)
    if config.model.train_resolutions:
        assert space.train_resolutions == tuple(sorted(config.model.train_resolutions))
        assert space.stages == base.stages  # an override changes resolutions only
    else:
        assert space == base
    for arch in (space.largest(), space.smallest()):
        assert cost.macs(space, arch, 10) > 0  # every child of the space builds at its size


def test_imagenet_config_is_the_papers_recipe():
    c = _load("bignas_imagenet").get_config()
    assert build_space(c).train_resolutions == (192, 224, 288, 320)
    assert c.data.source == "tfds:imagenet2012" and c.data.augment == "autoaugment"
    assert c.train.batch_size == 4096 and c.train.epochs == 360
    assert c.optimizer.base_lr == 0.256 and c.optimizer.reference_batch == 4096
    assert (c.optimizer.rho, c.optimizer.momentum, c.optimizer.epsilon) == (0.9, 0.9, 1e-3)
    assert (c.schedule.decay_rate, c.schedule.decay_epochs) == (0.97, 2.4)
    assert c.schedule.final_lr_fraction == 0.05 and c.schedule.constant_ending
    assert c.sandwich.num_random == 2 and c.sandwich.inplace_distillation
    assert c.sandwich.label_smoothing == 0.1 and c.sandwich.weight_decay == 1e-5
    assert c.model.dropout_rate == 0.2 and not c.sandwich.regularize_all_children
    assert c.model.zero_init_last_bn and c.model.stage_shortcuts
