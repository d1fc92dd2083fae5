"""The named search spaces: the paper's Table 1 space and small ones, as data.

`bignas_mobilenetv2()` is Table 1 of the BigNAS paper. `bignas_cifar()` (a
stride-1 stem for 32x32 inputs) and `bignas_tiny()` (tests, quickstart) are
the same classes given other values, not code forks. `get_space(name)` and
`space_names()` read one registry.
"""

from __future__ import annotations

from collections.abc import Callable

from tf_bignas.space.space import SearchSpace, StageSpec


def _choices(lo: int, hi: int, step: int = 8) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


def bignas_mobilenetv2() -> SearchSpace:
    """The paper's Table 1 space (MobileNetV2-like, MBConv + SE + swish)."""
    k35 = (3, 5)
    return SearchSpace(
        name="bignas_mobilenetv2",
        stem_widths=_choices(32, 40),
        stages=(
            StageSpec(_choices(16, 24), (1, 2), (3,), (1.0,), stride=1),
            StageSpec(_choices(24, 32), (2, 3), (3,), (6.0,), stride=2),
            StageSpec(_choices(40, 48), (2, 3), k35, (6.0,), stride=2),
            StageSpec(_choices(80, 88), (2, 3, 4), k35, (6.0,), stride=2),
            StageSpec(_choices(112, 128), (2, 3, 4, 5, 6), k35, (6.0,), stride=1),
            StageSpec(_choices(192, 216), (2, 3, 4, 5, 6), k35, (6.0,), stride=2),
            StageSpec(_choices(320, 352), (1, 2), k35, (6.0,), stride=1),
        ),
        head_widths=_choices(1280, 1408),
        train_resolutions=(192, 224, 288, 320),
        resolutions=tuple(range(192, 337, 16)),
        stem_stride=2,
    )


def bignas_cifar() -> SearchSpace:
    """A CIFAR-sized space (32x32 inputs): stride-1 stem, narrower stages."""
    k35 = (3, 5)
    return SearchSpace(
        name="bignas_cifar",
        stem_widths=_choices(16, 24),
        stages=(
            StageSpec(_choices(16, 24), (1, 2), (3,), (1.0,), stride=1),
            StageSpec(_choices(24, 32), (1, 2), k35, (3.0, 4.0, 6.0), stride=2),
            StageSpec(_choices(40, 56), (2, 3), k35, (3.0, 4.0, 6.0), stride=2),
            StageSpec(_choices(80, 96), (2, 3), k35, (3.0, 4.0, 6.0), stride=2),
        ),
        head_widths=_choices(256, 320, 32),
        train_resolutions=(24, 32),
        resolutions=(24, 32, 40),
        stem_stride=1,
    )


def bignas_tiny() -> SearchSpace:
    """A tiny space for tests and the quickstart (seconds per step on a CPU)."""
    return SearchSpace(
        name="bignas_tiny",
        stem_widths=(8, 16),
        stages=(
            StageSpec((8, 16), (1, 2), (3, 5), (1.0, 2.0), stride=2),
            StageSpec((16, 24), (1, 2), (3, 5), (2.0, 4.0), stride=2),
            StageSpec((24, 32), (1, 2), (3, 5), (2.0, 4.0), stride=1, se=False),
        ),
        head_widths=(32, 64),
        train_resolutions=(16, 32),
        resolutions=(16, 24, 32),
        stem_stride=1,
    )


def _factories() -> tuple[tuple[str, Callable[[], SearchSpace]], ...]:
    return (
        ("bignas_mobilenetv2", bignas_mobilenetv2),
        ("bignas_cifar", bignas_cifar),
        ("bignas_tiny", bignas_tiny),
    )


def space_names() -> tuple[str, ...]:
    """Names accepted by `get_space`."""
    return tuple(name for name, _ in _factories())


def get_space(name: str) -> SearchSpace:
    """Returns a registered space by name.

    Raises:
        ValueError: If the name is unknown (the message lists the known names).
    """
    factories = dict(_factories())
    if name not in factories:
        raise ValueError(f"unknown search space {name!r}; known spaces: {list(space_names())}")
    return factories[name]()
