"""Search spaces and architectures as plain, JSON-able data.

A `SearchSpace` describes every choice of a weight-sharing supernet: the stem,
the MBConv stages and the head, each with its allowed widths (output channels),
depths, per-layer kernel sizes and expand ratios, plus the input resolutions
used for training and for search/deployment. An `ArchConfig` is one child: a
frozen value with a JSON round trip, the user-facing arch file format:

    {"resolution": 224,
     "widths": [stem, s1, ..., s7, head],      # len(stages) + 2 ints
     "depths": [d1, ..., d7],                  # one per stage
     "kernels": [[k, ...], ...],               # one list per stage, one size per layer
     "expand_ratios": [[e, ...], ...]}         # one list per stage, one ratio per layer

The default space, `bignas_mobilenetv2()`, is Table 1 of the BigNAS paper.
Other spaces (a CIFAR-sized one with a stride-1 stem, a tiny one for tests and
the quickstart) are data built with the same classes, not code forks.

Example:
    >>> space = bignas_mobilenetv2()
    >>> arch = space.sample(seed=0)
    >>> space.validate(arch)
    >>> ArchConfig.from_json(arch.to_json()) == arch
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

ACTIVATIONS = ("swish", "relu", "hswish")


class InvalidArchError(ValueError):
    """An architecture (or one of its fields) is not allowed by a search space."""


def _choices(lo: int, hi: int, step: int = 8) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """The choices of one stage of inverted-residual (MBConv) blocks.

    Attributes:
        widths: Allowed output channels of the stage (stage-wise choice).
        depths: Allowed numbers of layers (stage-wise choice).
        kernels: Allowed depthwise kernel sizes (layer-wise choice).
        expand_ratios: Allowed expand ratios (layer-wise choice); (1,) is MBConv1.
        stride: Stride of the first layer of the stage.
        se: Whether blocks of this stage have squeeze-excite.
        activation: One of `ACTIVATIONS`.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expand_ratios: tuple[float, ...]
    stride: int = 1
    se: bool = True
    activation: str = "swish"

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "kernels", "expand_ratios"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)):
                raise ValueError(
                    f"StageSpec.{name} must be a non-empty ascending tuple, got {values}"
                )
        if min(self.depths) < 1:
            raise ValueError(f"StageSpec.depths must be >= 1, got {self.depths}")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"StageSpec.kernels must be odd, got {self.kernels}")
        if self.stride not in (1, 2):
            raise ValueError(f"StageSpec.stride must be 1 or 2, got {self.stride}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"StageSpec.activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def max_kernel(self) -> int:
        return max(self.kernels)


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """One child architecture: the user-facing arch file format.

    Attributes:
        resolution: Input resolution (square images).
        widths: Output channels of stem, each stage, and head.
        depths: Number of layers of each stage.
        kernels: Per stage, the depthwise kernel size of each active layer.
        expand_ratios: Per stage, the expand ratio of each active layer.
    """

    resolution: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[tuple[int, ...], ...]
    expand_ratios: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        # Normalise containers so that equal architectures compare and hash equal.
        try:
            object.__setattr__(self, "resolution", int(self.resolution))
            object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
            object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
            object.__setattr__(
                self, "kernels", tuple(tuple(int(k) for k in ks) for ks in self.kernels)
            )
            object.__setattr__(
                self,
                "expand_ratios",
                tuple(tuple(float(e) for e in es) for es in self.expand_ratios),
            )
        except (TypeError, ValueError) as e:
            raise InvalidArchError(f"ArchConfig fields have the wrong type: {e}") from e

    # ---- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Returns the arch as a JSON-able dict (integral ratios written as ints)."""

        def num(e: float) -> int | float:
            return int(e) if float(e).is_integer() else float(e)

        return {
            "resolution": self.resolution,
            "widths": list(self.widths),
            "depths": list(self.depths),
            "kernels": [list(ks) for ks in self.kernels],
            "expand_ratios": [[num(e) for e in es] for es in self.expand_ratios],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchConfig:
        """Builds an arch from a dict in the arch file format.

        Raises:
            InvalidArchError: If a key is missing or unknown.
        """
        required = ("resolution", "widths", "depths", "kernels", "expand_ratios")
        missing = [k for k in required if k not in data]
        unknown = sorted(set(data) - set(required))
        if missing or unknown:
            raise InvalidArchError(
                f"arch keys: missing {missing}, unknown {unknown}; expected exactly {list(required)}"
            )
        return cls(**{k: data[k] for k in required})

    def to_json(self, indent: int | None = None) -> str:
        """Returns the arch in the JSON arch file format."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        """Parses the JSON arch file format.

        Raises:
            InvalidArchError: If the text is not valid JSON or misses keys.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArchError(f"arch is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise InvalidArchError(f"arch JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    @property
    def key(self) -> str:
        """A compact, canonical string that identifies this arch (for caches and stores)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def with_resolution(self, resolution: int) -> ArchConfig:
        """Returns the same arch at another input resolution."""
        return dataclasses.replace(self, resolution=resolution)

    @classmethod
    def from_paper_notation(
        cls,
        resolution: int,
        depths: str,
        widths: str,
        kernels: str,
        space: SearchSpace | None = None,
        expand_ratios: str | None = None,
    ) -> ArchConfig:
        """Reads the paper's notation, e.g. depth {1:2:2:2:4:4:1}.

        Args:
            resolution: Input resolution.
            depths: Colon-separated depth per stage.
            widths: Colon-separated widths: stem, stages, head.
            kernels: Colon-separated kernel size per stage (applies to every layer).
            space: Space that supplies default expand ratios (largest allowed per
                stage); the default space if None.
            expand_ratios: Optional colon-separated stage-wise expand ratios.

        Returns:
            The ArchConfig (not validated; call `space.validate`).

        Raises:
            InvalidArchError: If a field does not parse or has the wrong length.
        """
        space = space or bignas_mobilenetv2()

        def parse(name: str, text: str, conv: Callable[[str], Any]) -> list[Any]:
            try:
                return [conv(t) for t in str(text).strip().strip("{}").split(":")]
            except ValueError as e:
                raise InvalidArchError(
                    f"{name}={text!r} is not a colon-separated list of numbers"
                ) from e

        d = parse("depths", depths, int)
        w = parse("widths", widths, int)
        k = parse("kernels", kernels, int)
        n = len(space.stages)
        for name, vals, want in (("depths", d, n), ("widths", w, n + 2), ("kernels", k, n)):
            if len(vals) != want:
                raise InvalidArchError(
                    f"{name} has {len(vals)} values, space {space.name!r} needs {want}"
                )
        if expand_ratios is None:
            e = [max(s.expand_ratios) for s in space.stages]
        else:
            e = parse("expand_ratios", expand_ratios, float)
            if len(e) != n:
                raise InvalidArchError(f"expand_ratios has {len(e)} values, needs {n}")
        return cls(
            resolution=int(resolution),
            widths=tuple(w),
            depths=tuple(d),
            kernels=tuple((k[i],) * d[i] for i in range(n)),
            expand_ratios=tuple((e[i],) * d[i] for i in range(n)),
        )

    def to_paper_notation(self) -> str:
        """Returns "RESOLUTION DEPTHS WIDTHS KERNELS" (layer kernels shown per stage max)."""
        return " ".join(
            [
                str(self.resolution),
                ":".join(map(str, self.depths)),
                ":".join(map(str, self.widths)),
                ":".join(str(max(ks)) for ks in self.kernels),
            ]
        )


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """All choices of a supernet.

    Attributes:
        name: Registry name.
        stem_widths: Allowed stem output channels.
        stages: The MBConv stages.
        head_widths: Allowed head (final 1x1 conv) channels.
        train_resolutions: Resolutions sampled during supernet training.
        resolutions: Resolutions allowed for search and deployment (a superset
            of the training resolutions).
        stem_kernel: Stem conv kernel size.
        stem_stride: Stem conv stride (2 for ImageNet, 1 for CIFAR-sized inputs).
        se_ratio: Squeeze-excite channels as a fraction of the block's input channels.
        stem_activation: Activation of stem and head.
    """

    name: str
    stem_widths: tuple[int, ...]
    stages: tuple[StageSpec, ...]
    head_widths: tuple[int, ...]
    train_resolutions: tuple[int, ...]
    resolutions: tuple[int, ...]
    stem_kernel: int = 3
    stem_stride: int = 2
    se_ratio: float = 0.25
    stem_activation: str = "swish"

    def __post_init__(self) -> None:
        if not set(self.train_resolutions) <= set(self.resolutions):
            raise ValueError(
                f"train_resolutions {self.train_resolutions} must be a subset of "
                f"resolutions {self.resolutions}"
            )
        if self.stem_activation not in ACTIVATIONS:
            raise ValueError(f"stem_activation must be one of {ACTIVATIONS}")

    # ---- derived facts ---------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depths(self) -> tuple[int, ...]:
        return tuple(s.max_depth for s in self.stages)

    @property
    def total_stride(self) -> int:
        return self.stem_stride * math.prod(s.stride for s in self.stages)

    def width_choices(self) -> tuple[tuple[int, ...], ...]:
        """Allowed widths for each of the `num_stages + 2` width positions."""
        return (self.stem_widths, *(s.widths for s in self.stages), self.head_widths)

    def layer_strides(self, stage: int) -> tuple[int, ...]:
        """Stride of each layer (up to max depth) of a stage."""
        s = self.stages[stage]
        return (s.stride,) + (1,) * (s.max_depth - 1)

    # ---- canonical children ----------------------------------------------------
    def largest(self, resolution: int | None = None) -> ArchConfig:
        """The largest child (every choice at its maximum)."""
        return ArchConfig(
            resolution=resolution or max(self.train_resolutions),
            widths=tuple(max(c) for c in self.width_choices()),
            depths=self.max_depths,
            kernels=tuple((s.max_kernel,) * s.max_depth for s in self.stages),
            expand_ratios=tuple((max(s.expand_ratios),) * s.max_depth for s in self.stages),
        )

    def smallest(self, resolution: int | None = None) -> ArchConfig:
        """The smallest child (every choice at its minimum)."""
        return ArchConfig(
            resolution=resolution or min(self.train_resolutions),
            widths=tuple(min(c) for c in self.width_choices()),
            depths=tuple(min(s.depths) for s in self.stages),
            kernels=tuple((min(s.kernels),) * min(s.depths) for s in self.stages),
            expand_ratios=tuple((min(s.expand_ratios),) * min(s.depths) for s in self.stages),
        )

    def sample(
        self,
        seed: int | Sequence[int] | np.random.Generator,
        resolutions: Sequence[int] | None = None,
    ) -> ArchConfig:
        """Samples a child uniformly per choice.

        Args:
            seed: An int, a sequence of ints (e.g. `(seed, step, index)`, so that
                every worker draws the same child) or a numpy Generator.
            resolutions: Resolutions to draw from; the training ones if None.

        Returns:
            A valid ArchConfig.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        res_choices = tuple(resolutions or self.train_resolutions)
        for r in res_choices:
            self.validate_resolution(r)

        def pick(options: Sequence[Any]) -> Any:
            return options[int(rng.integers(len(options)))]

        widths = tuple(pick(c) for c in self.width_choices())
        depths = tuple(pick(s.depths) for s in self.stages)
        kernels = tuple(
            tuple(pick(s.kernels) for _ in range(d)) for s, d in zip(self.stages, depths)
        )
        expands = tuple(
            tuple(pick(s.expand_ratios) for _ in range(d)) for s, d in zip(self.stages, depths)
        )
        return ArchConfig(pick(res_choices), widths, depths, kernels, expands)

    # ---- validation ------------------------------------------------------------
    def validate_resolution(self, resolution: int, training: bool = False) -> None:
        """Checks a resolution against the space.

        Args:
            resolution: The resolution.
            training: Check against the training resolutions instead of all.

        Raises:
            InvalidArchError: If the resolution is not allowed.
        """
        allowed = self.train_resolutions if training else self.resolutions
        if resolution not in allowed:
            kind = "training resolutions" if training else "resolutions"
            raise InvalidArchError(
                f"resolution {resolution} is not allowed by space {self.name!r}; "
                f"allowed {kind}: {list(allowed)}"
            )

    def validate(self, arch: ArchConfig) -> None:
        """Checks every field of an arch.

        Raises:
            InvalidArchError: Naming the field, the value and the allowed values.
        """
        if not isinstance(arch, ArchConfig):
            raise InvalidArchError(f"expected an ArchConfig, got {type(arch).__name__}")
        self.validate_resolution(arch.resolution)
        n = self.num_stages
        for field, want in (
            ("widths", n + 2),
            ("depths", n),
            ("kernels", n),
            ("expand_ratios", n),
        ):
            got = len(getattr(arch, field))
            if got != want:
                raise InvalidArchError(
                    f"{field} has {got} entries, space {self.name!r} needs {want}"
                )
        names = ["stem"] + [f"stage{i + 1}" for i in range(n)] + ["head"]
        for i, (w, allowed) in enumerate(zip(arch.widths, self.width_choices())):
            if w not in allowed:
                raise InvalidArchError(
                    f"widths[{i}] ({names[i]}) = {w} is not allowed; allowed: {list(allowed)}"
                )
        for i, (d, s) in enumerate(zip(arch.depths, self.stages)):
            if d not in s.depths:
                raise InvalidArchError(
                    f"depths[{i}] (stage{i + 1}) = {d} is not allowed; allowed: {list(s.depths)}"
                )
            for field, choices in (("kernels", s.kernels), ("expand_ratios", s.expand_ratios)):
                per_layer = getattr(arch, field)[i]
                if len(per_layer) != d:
                    raise InvalidArchError(
                        f"{field}[{i}] (stage{i + 1}) has {len(per_layer)} entries, but the "
                        f"stage depth is {d}: give one value per layer"
                    )
                for j, v in enumerate(per_layer):
                    if v not in choices:
                        raise InvalidArchError(
                            f"{field}[{i}][{j}] (stage{i + 1} layer{j + 1}) = {v:g} is not "
                            f"allowed; allowed: {list(choices)}"
                        )

    def cardinality(self, include_resolution: bool = False) -> int:
        """Number of distinct children.

        Args:
            include_resolution: Also multiply by the number of search resolutions.

        Returns:
            The count, as a Python int.
        """
        total = math.prod(len(c) for c in self.width_choices())
        for s in self.stages:
            per_layer = len(s.kernels) * len(s.expand_ratios)
            total *= sum(per_layer**d for d in s.depths)
        if include_resolution:
            total *= len(self.resolutions)
        return total

    def with_resolutions(
        self, train_resolutions: Sequence[int], resolutions: Sequence[int] | None = None
    ) -> SearchSpace:
        """The same space with other resolutions (e.g. small images on a CPU).

        Args:
            train_resolutions: Resolutions for training.
            resolutions: Resolutions for search and deployment (default: the
                training ones).

        Returns:
            A new SearchSpace.
        """
        train = tuple(sorted(int(r) for r in train_resolutions))
        return dataclasses.replace(
            self,
            train_resolutions=train,
            resolutions=tuple(sorted(int(r) for r in resolutions)) if resolutions else train,
        )

    def to_dict(self) -> dict[str, Any]:
        """The space as JSON-able data."""
        return dataclasses.asdict(self)


# ---- the spaces ---------------------------------------------------------------


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


def space_names() -> tuple[str, ...]:
    """Names accepted by `get_space`."""
    return ("bignas_mobilenetv2", "bignas_cifar", "bignas_tiny")


def get_space(name: str) -> SearchSpace:
    """Returns a registered space by name.

    Raises:
        ValueError: If the name is unknown (the message lists the known names).
    """
    factories: dict[str, Callable[[], SearchSpace]] = {
        "bignas_mobilenetv2": bignas_mobilenetv2,
        "bignas_cifar": bignas_cifar,
        "bignas_tiny": bignas_tiny,
    }
    if name not in factories:
        raise ValueError(f"unknown search space {name!r}; known spaces: {list(space_names())}")
    return factories[name]()


def load_arch(text_or_path: str, space: SearchSpace | None = None) -> ArchConfig:
    """Reads an arch from `largest`, `smallest`, a JSON file path, JSON text or
    the paper's notation `"RES DEPTHS WIDTHS KERNELS"`, and validates it.

    Args:
        text_or_path: The arch spec.
        space: The space (default space if None).

    Returns:
        The validated ArchConfig.

    Raises:
        InvalidArchError: If the spec cannot be read or is not in the space.
    """
    space = space or bignas_mobilenetv2()
    spec = text_or_path.strip()
    if spec == "largest":
        arch = space.largest()
    elif spec == "smallest":
        arch = space.smallest()
    elif spec.startswith("{"):
        arch = ArchConfig.from_json(spec)
    elif os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            arch = ArchConfig.from_json(f.read())
    elif len(spec.split()) == 4:
        res, depths, widths, kernels = spec.split()
        try:
            resolution = int(res)
        except ValueError as e:
            raise InvalidArchError(f"paper notation: resolution {res!r} is not an int") from e
        arch = ArchConfig.from_paper_notation(resolution, depths, widths, kernels, space=space)
    else:
        raise InvalidArchError(
            f"cannot read arch {text_or_path!r}: expected 'largest', 'smallest', a JSON file, "
            "JSON text, or paper notation 'RESOLUTION DEPTHS WIDTHS KERNELS'"
        )
    space.validate(arch)
    return arch
