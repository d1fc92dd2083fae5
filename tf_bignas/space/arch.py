"""An architecture as a plain value: `ArchConfig` and its file formats.

An `ArchConfig` is one child of a search space: a frozen value with a JSON
round trip, the user-facing arch file format:

    {"resolution": 224,
     "widths": [stem, s1, ..., s7, head],      # len(stages) + 2 ints
     "depths": [d1, ..., d7],                  # one per stage
     "kernels": [[k, ...], ...],               # one list per stage, one size per layer
     "expand_ratios": [[e, ...], ...]}         # one list per stage, one ratio per layer

and the paper's notation "RESOLUTION DEPTHS WIDTHS KERNELS" as output
(`to_paper_notation`); reading that notation needs a space (for the number of
stages and the expand ratios), so it lives in `SearchSpace.from_paper_notation`.

Example:
    >>> arch = ArchConfig(32, (8, 8, 16, 24, 32), (1, 1, 1), ((3,), (3,), (5,)),
    ...                   ((1,), (2,), (4,)))
    >>> ArchConfig.from_json(arch.to_json()) == arch
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np


class InvalidArchError(ValueError):
    """An architecture (or one of its fields) is not allowed by a search space."""


def _integer(name: str, value: Any) -> int:
    """`value` as an int, refusing non-integral numbers, strings and bools.

    Raises:
        InvalidArchError: Naming the field and the value.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise InvalidArchError(f"{name} = {value!r} is not an integer")
    if isinstance(value, (numbers.Integral, np.integer)):
        return int(value)
    if not math.isfinite(value) or not float(value).is_integer():
        raise InvalidArchError(f"{name} = {value!r} is not an integer")
    return int(value)


def _number(name: str, value: Any) -> float:
    """`value` as a finite float, refusing strings and bools.

    Raises:
        InvalidArchError: Naming the field and the value.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise InvalidArchError(f"{name} = {value!r} is not a number")
    if not math.isfinite(value):
        raise InvalidArchError(f"{name} = {value!r} is not a finite number")
    return float(value)


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
        # Values are checked, never truncated: depth 1.5 or resolution 224.7 is an
        # error (an integral float such as 2.0 is read as 2), a string or a bool
        # is refused, and expand ratios must be finite numbers.
        def nested(name: str, value: Any) -> tuple[Any, ...]:
            if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
                raise InvalidArchError(
                    f"{name} must be a list, got {type(value).__name__} {value!r}"
                )
            return tuple(value)

        object.__setattr__(self, "resolution", _integer("resolution", self.resolution))
        widths = nested("widths", self.widths)
        object.__setattr__(
            self, "widths", tuple(_integer(f"widths[{i}]", w) for i, w in enumerate(widths))
        )
        depths = nested("depths", self.depths)
        object.__setattr__(
            self, "depths", tuple(_integer(f"depths[{i}]", d) for i, d in enumerate(depths))
        )
        for field, conv in (("kernels", _integer), ("expand_ratios", _number)):
            per_stage = nested(field, getattr(self, field))
            value = tuple(
                tuple(
                    conv(f"{field}[{i}][{j}]", v) for j, v in enumerate(nested(f"{field}[{i}]", vs))
                )
                for i, vs in enumerate(per_stage)
            )
            object.__setattr__(self, field, value)

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
