"""Stage 1, the search space: what a child is, and which children exist.

`ArchConfig` (arch.py) is one child as a plain JSON-able value; `SearchSpace`
(space.py) holds the choices and samples, validates, counts and parses
children; registry.py names the concrete spaces (the paper's Table 1 space and
small ones for CIFAR-sized data and tests).

May import: the standard library and numpy only (no TensorFlow), so every
later stage can use it and tools can cost children without loading a model.
"""

from tf_bignas.space.arch import ArchConfig, InvalidArchError
from tf_bignas.space.registry import (
    bignas_cifar,
    bignas_mobilenetv2,
    bignas_tiny,
    get_space,
    space_names,
)
from tf_bignas.space.space import ACTIVATIONS, SearchSpace, StageSpec

__all__ = [
    "ACTIVATIONS",
    "ArchConfig",
    "InvalidArchError",
    "SearchSpace",
    "StageSpec",
    "bignas_cifar",
    "bignas_mobilenetv2",
    "bignas_tiny",
    "get_space",
    "space_names",
]
