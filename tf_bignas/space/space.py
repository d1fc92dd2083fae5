"""The search space: every choice of a supernet, as plain data.

A `SearchSpace` describes the stem, the MBConv stages (`StageSpec`) and the
head, each with its allowed widths (output channels), depths, per-layer kernel
sizes and expand ratios, plus the input resolutions used for training and for
search/deployment. It samples, validates and counts children (`ArchConfig`),
reads the paper's notation and arch files (`load_arch`), and round-trips
through JSON (`to_dict` / `from_dict`), so a run's space, overrides included,
travels with its workdir. Named spaces live in `tf_bignas.space.registry`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tf_bignas.space.arch import ArchConfig, InvalidArchError

ACTIVATIONS = ("swish", "relu", "hswish")


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

    def width_choices(self) -> tuple[tuple[int, ...], ...]:
        """Allowed widths for each of the `num_stages + 2` width positions."""
        return (self.stem_widths, *(s.widths for s in self.stages), self.head_widths)

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

    def from_paper_notation(
        self,
        resolution: int,
        depths: str,
        widths: str,
        kernels: str,
        expand_ratios: str | None = None,
    ) -> ArchConfig:
        """Reads the paper's notation, e.g. depth {1:2:2:2:4:4:1}.

        Args:
            resolution: Input resolution.
            depths: Colon-separated depth per stage.
            widths: Colon-separated widths: stem, stages, head.
            kernels: Colon-separated kernel size per stage (applies to every layer).
            expand_ratios: Optional colon-separated stage-wise expand ratios; the
                largest allowed per stage by default.

        Returns:
            The ArchConfig (not validated; call `space.validate`).

        Raises:
            InvalidArchError: If a field does not parse or has the wrong length.
        """
        space = self

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
        return ArchConfig(
            resolution=int(resolution),
            widths=tuple(w),
            depths=tuple(d),
            kernels=tuple((k[i],) * d[i] for i in range(n)),
            expand_ratios=tuple((e[i],) * d[i] for i in range(n)),
        )

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
        """The space as JSON-able data (`from_dict` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Rebuilds a space from `to_dict` output (lists become tuples).

        Args:
            data: The dict.

        Returns:
            The SearchSpace.

        Raises:
            ValueError: If a key is missing or unknown, or a value is invalid.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        stage_fields = {f.name for f in dataclasses.fields(StageSpec)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"space keys {unknown} are unknown; allowed: {sorted(fields)}")

        def tup(v: Any) -> Any:
            return tuple(v) if isinstance(v, list) else v

        kwargs = {k: tup(v) for k, v in data.items() if k != "stages"}
        stages = []
        for i, s in enumerate(data.get("stages", ())):
            bad = sorted(set(s) - stage_fields)
            if bad:
                raise ValueError(
                    f"stages[{i}] keys {bad} are unknown; allowed: {sorted(stage_fields)}"
                )
            stages.append(StageSpec(**{k: tup(v) for k, v in s.items()}))
        try:
            return cls(stages=tuple(stages), **kwargs)
        except TypeError as e:
            raise ValueError(f"space is incomplete: {e}") from e

    def load_arch(self, text_or_path: str) -> ArchConfig:
        """Reads an arch from `largest`, `smallest`, a JSON file path, JSON text or
        the paper's notation `"RES DEPTHS WIDTHS KERNELS"`, and validates it.

        Args:
            text_or_path: The arch spec.

        Returns:
            The validated ArchConfig.

        Raises:
            InvalidArchError: If the spec cannot be read or is not in the space.
        """
        space = self
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
            arch = space.from_paper_notation(resolution, depths, widths, kernels)
        else:
            raise InvalidArchError(
                f"cannot read arch {text_or_path!r}: expected 'largest', 'smallest', a JSON file, "
                "JSON text, or paper notation 'RESOLUTION DEPTHS WIDTHS KERNELS'"
            )
        space.validate(arch)
        return arch
