"""Every config loads, documents its launch command, and keeps to the default option tree."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from tf_bignas.model import cost
from tf_bignas.run.config import build_space, default_config, validate_config
from tf_bignas.run.workdir import read_config
from tf_bignas.space import get_space
from tf_bignas.train.config import build_schedule

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


def test_imagenet_config_follows_efficientnet_where_the_paper_is_silent():
    c = _load("bignas_imagenet").get_config()
    assert c.schedule.staircase and c.schedule.decay_from == "step0"
    assert c.optimizer.ema and c.optimizer.ema_decay == 0.9999
    assert c.model.mode == "mask" and c.runtime.strategy == "tpu"
    assert c.train.calibration_images == 2048 and c.train.calibration_batch_size == 256
    assert c.data.transport == "patch"  # uint8 patch; the TPU resizes (benchmarks/README.md)
    validate_config(c)
    # 1,231,167 training images (ImageNet minus the minival) at 4096: 300 steps an epoch.
    schedule = build_schedule(c, steps_per_epoch=300, total_steps=108_000)
    lr = 0.256  # at the reference batch
    assert float(schedule(1499)) == pytest.approx(lr, rel=1e-5)  # last warmup step
    assert float(schedule(1500)) == pytest.approx(lr * 0.97**2, rel=1e-5)  # epoch 5: 2 decays
    assert float(schedule(300 * 100)) == pytest.approx(lr * 0.97**41, rel=1e-5)  # floor(100/2.4)
    assert float(schedule(300 * 238)) == pytest.approx(lr * 0.05, rel=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"runtime.strategy": "tpu"}, "model.mode='slice'.*use --config.model.mode=mask"),
        ({"runtime.jit_compile": True}, "use --config.model.mode=mask"),
        (
            {"model.mode": "sliced"},
            r"config.model.mode = 'sliced' is out of range; allowed: one of \['slice', 'mask'\]",
        ),
        (
            {"schedule.decay_from": "warmup"},
            r"config.schedule.decay_from = 'warmup' is out of range; allowed: one of \['step0'",
        ),
        (
            {"data.transport": "bf16"},
            r"config.data.transport = 'bf16' is out of range; allowed: one of \['float'",
        ),
        ({"train.calibration_images": 0}, "config.train.calibration_images = 0 is out of range"),
        (
            {"data.shared_patch": False, "data.transport": "patch"},
            r"data.shared_patch=False \(a patch per resolution\) needs data.transport='uint8'",
        ),
        (
            {"data.crop_per_child": True, "data.shared_patch": False},
            r"data.crop_per_child=True with data.shared_patch=False .* is not allowed",
        ),
        (
            {"sandwich.regularize_all_children": True, "model.mode": "mask"},
            r"regularize_all_children=True needs model.mode='slice'",
        ),
        (
            {"runtime.strategy": "multi_worker", "runtime.steps_per_loop": 4},
            "steps_per_loop=4 is not supported with runtime.strategy='multi_worker'",
        ),
        (
            {"train.calibration_batch_size": -3},
            "config.train.calibration_batch_size = -3 is out of range; allowed: an integer >= 1",
        ),
        (
            {"train.epoch": 3.0},
            r"unknown option train.epoch \(from the config\); did you mean train.epochs\?",
        ),
    ],
)
def test_invalid_combinations_are_rejected_up_front(overrides, message):
    c = default_config()
    assert c.model.mode == "slice"
    validate_config(c)
    with c.unlocked():
        for key, value in overrides.items():
            section, name = key.split(".")
            c[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate_config(c)


def test_a_workdir_config_of_an_older_version_still_reads(tmp_path):
    old = default_config().to_dict()
    del old["train"]["calibration_images"], old["train"]["calibration_batch_size"]
    del old["schedule"]["staircase"], old["schedule"]["decay_from"]
    old["train"]["calibration_batches"] = 16
    old["train"]["batch_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(old))
    c = read_config(str(tmp_path))
    assert c.train.calibration_images == 16 * 64  # as many images as it calibrated on
    assert not c.schedule.staircase and c.schedule.decay_from == "warmup_end"  # as it trained
