"""Tests of tf_bignas.space."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tf_bignas.space import (
    ArchConfig,
    InvalidArchError,
    SearchSpace,
    StageSpec,
    bignas_mobilenetv2,
    get_space,
    space_names,
)

PAPER = dict(
    resolution=256,
    depths="1:2:2:2:4:4:1",
    widths="32:16:24:48:88:128:216:352:1408",
    kernels="3:3:5:3:5:5:3",
)


def test_default_space_is_table_1():
    space = bignas_mobilenetv2()
    largest, smallest = space.largest(), space.smallest()
    assert largest.widths == (40, 24, 32, 48, 88, 128, 216, 352, 1408)
    assert smallest.widths == (32, 16, 24, 40, 80, 112, 192, 320, 1280)
    assert largest.depths == (2, 3, 3, 4, 6, 6, 2)
    assert smallest.depths == (1, 2, 2, 2, 2, 2, 1)
    assert largest.kernels[0] == (3, 3) and largest.kernels[2] == (5, 5, 5)
    assert smallest.expand_ratios[0] == (1.0,) and smallest.expand_ratios[1] == (6.0, 6.0)
    assert space.train_resolutions == (192, 224, 288, 320)
    assert space.resolutions == tuple(range(192, 337, 16))
    assert [s.stride for s in space.stages] == [1, 2, 2, 2, 1, 2, 1]
    assert all(s.se for s in space.stages)
    assert space.cardinality() > 10**12


def test_json_round_trip_and_format():
    space = bignas_mobilenetv2()
    for seed in range(10):
        arch = space.sample(seed)
        text = arch.to_json()
        assert ArchConfig.from_json(text) == arch
        data = json.loads(text)
        assert sorted(data) == ["depths", "expand_ratios", "kernels", "resolution", "widths"]
        assert len(data["widths"]) == 9 and len(data["depths"]) == 7
        assert [len(k) for k in data["kernels"]] == data["depths"]
        assert isinstance(data["expand_ratios"][1][0], int)  # 6, not 6.0


def test_paper_notation():
    arch = bignas_mobilenetv2().from_paper_notation(**PAPER)
    bignas_mobilenetv2().validate(arch)
    assert arch.resolution == 256
    assert arch.depths == (1, 2, 2, 2, 4, 4, 1)
    assert arch.kernels[2] == (5, 5) and arch.kernels[5] == (5, 5, 5, 5)
    assert arch.expand_ratios[0] == (1.0,) and arch.expand_ratios[4] == (6.0,) * 4
    text = "256 1:2:2:2:4:4:1 32:16:24:48:88:128:216:352:1408 3:3:5:3:5:5:3"
    assert bignas_mobilenetv2().load_arch(text) == arch
    assert arch.to_paper_notation() == text


def test_sample_is_seeded_and_valid():
    space = bignas_mobilenetv2()
    assert space.sample((7, 3)) == space.sample((7, 3))
    archs = {space.sample((7, step)) for step in range(50)}
    assert len(archs) == 50
    for arch in archs:
        space.validate(arch)
        assert arch.resolution in space.train_resolutions
    arch = space.sample(1, resolutions=[208])
    assert arch.resolution == 208


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(resolution=200), "resolution 200"),
        (dict(widths=(40, 24, 32, 48, 88, 128, 216, 352, 1404)), "widths[8] (head) = 1404"),
        (dict(depths=(2, 3, 3, 4, 6, 6, 3)), "depths[6] (stage7) = 3"),
        (
            dict(kernels=((3, 3), (3, 3, 3), (5, 5, 7), (5,) * 4, (5,) * 6, (5,) * 6, (5, 5))),
            "kernels[2][2] (stage3 layer3) = 7",
        ),
        (
            dict(kernels=((5, 3), (3, 3, 3), (5, 5, 5), (5,) * 4, (5,) * 6, (5,) * 6, (5, 5))),
            "kernels[0][0] (stage1 layer1) = 5",
        ),
        (
            dict(kernels=((3,), (3, 3, 3), (5, 5, 5), (5,) * 4, (5,) * 6, (5,) * 6, (5, 5))),
            "kernels[0] (stage1) has 1 entries",
        ),
        (dict(widths=(40, 24)), "widths has 2 entries"),
    ],
)
def test_validate_names_field_value_and_allowed(change, message):
    space = bignas_mobilenetv2()
    arch = dataclasses.replace(space.largest(), **change)
    with pytest.raises(InvalidArchError) as err:
        space.validate(arch)
    assert message in str(err.value)
    assert "allowed" in str(err.value) or "needs" in str(err.value) or "depth is" in str(err.value)


def test_from_dict_rejects_unknown_and_missing_keys():
    data = bignas_mobilenetv2().largest().to_dict()
    data["width"] = data.pop("widths")
    with pytest.raises(InvalidArchError, match=r"missing \['widths'\], unknown \['width'\]"):
        ArchConfig.from_dict(data)
    with pytest.raises(InvalidArchError, match="not valid JSON"):
        ArchConfig.from_json("{nope")


def test_spaces_are_data():
    assert set(space_names()) == {"bignas_mobilenetv2", "bignas_cifar", "bignas_tiny"}
    cifar = get_space("bignas_cifar")
    assert cifar.stem_stride == 1 and cifar.stages[1].expand_ratios == (3.0, 4.0, 6.0)
    tiny = get_space("bignas_tiny")
    assert tiny.stages[-1].se is False
    with pytest.raises(ValueError, match="known spaces"):
        get_space("nope")
    # An OFA-like stage (expand choices, no SE, relu) is expressible as data.
    ofa = SearchSpace(
        name="ofa_like",
        stem_widths=(16,),
        stages=(StageSpec((24,), (2, 3, 4), (3, 5, 7), (3.0, 4.0, 6.0), 2, False, "relu"),),
        head_widths=(64,),
        train_resolutions=(32,),
        resolutions=(32,),
    )
    assert ofa.cardinality() == 9**2 + 9**3 + 9**4
    with pytest.raises(ValueError, match="activation"):
        StageSpec((8,), (1,), (3,), (1.0,), activation="gelu")


def test_with_resolutions():
    space = bignas_mobilenetv2().with_resolutions([64, 32])
    assert space.train_resolutions == (32, 64) and space.resolutions == (32, 64)
    assert space.largest().resolution == 64
