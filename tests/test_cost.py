"""Tests of tf_bignas.model.cost: arch-only cost model and Keras layer walker."""

from __future__ import annotations

import keras
import pytest

from tf_bignas.model import Supernet, cost
from tf_bignas.model.slicing import extract_child
from tf_bignas.space import bignas_mobilenetv2, get_space


def test_pinned_costs_of_default_space():
    space = bignas_mobilenetv2()
    assert cost.macs(space, space.largest()) == 1_891_542_528  # at 320
    assert cost.params(space, space.largest(), 1000) == 11_101_382
    assert cost.macs(space, space.smallest()) == 217_632_640  # at 192
    assert cost.params(space, space.smallest(), 1000) == 3_874_548
    assert cost.macs(space, space.largest(224)) == 928_406_304
    c = cost.cost(space, space.largest())
    assert sum(c.stage_macs) == c.macs and sum(c.stage_params) == c.params


def test_cost_grows_with_every_choice():
    space = bignas_mobilenetv2()
    small = space.smallest()
    assert cost.macs(space, small.with_resolution(224)) > cost.macs(space, small)
    bigger = space.smallest()
    widths = list(bigger.widths)
    widths[5] += 8
    import dataclasses

    wider = dataclasses.replace(bigger, widths=tuple(widths))
    assert cost.macs(space, wider) > cost.macs(space, small)
    assert cost.params(space, wider) > cost.params(space, small)


@pytest.mark.parametrize(
    "factory, published",
    [
        (keras.applications.MobileNetV2, 300e6),
        (keras.applications.EfficientNetB0, 390e6),
        (keras.applications.MobileNetV3Large, 219e6),
    ],
)
def test_layer_walker_matches_published_macs(factory, published):
    model = factory(weights=None, input_shape=(224, 224, 3))
    assert abs(cost.count_model_macs(model) - published) / published < 0.02


@pytest.mark.parametrize("space_name, resolution", [("bignas_tiny", 24), ("bignas_cifar", 32)])
def test_arch_cost_equals_walker_and_count_params_on_sliced_children(space_name, resolution):
    space = get_space(space_name)
    net = Supernet(space, num_classes=10)
    archs = [space.largest(resolution), space.smallest(resolution)]
    archs += [space.sample(s, resolutions=[resolution]) for s in range(6)]
    for arch in archs:
        child = extract_child(net, arch, allow_uncalibrated=True)
        assert cost.macs(space, arch, 10) == cost.count_model_macs(child)
        assert cost.params(space, arch, 10) == child.count_params()


def test_walker_agrees_on_default_space_extremes():
    space = bignas_mobilenetv2().with_resolutions([64])
    net = Supernet(space, num_classes=1000)
    for arch in (space.largest(), space.smallest()):
        child = extract_child(net, arch, allow_uncalibrated=True)
        assert cost.macs(space, arch) == cost.count_model_macs(child)
        assert cost.params(space, arch) == child.count_params()


def test_walker_needs_fixed_resolution():
    space = get_space("bignas_tiny")
    child = extract_child(
        Supernet(space, 10), space.smallest(), fixed_resolution=False, allow_uncalibrated=True
    )
    with pytest.raises(ValueError, match="fixed input resolution"):
        cost.count_model_macs(child)
