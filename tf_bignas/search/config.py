"""The search's options, as an ml_collections ConfigDict, and their checks.

`default_search_config()` is the option tree with "resolve from the run"
placeholders (empty tuples, zeros), so a program can define it as a flag
before it knows the workdir; `resolve_search_config(config, space,
train_config)` fills the placeholders for a run's space and training config
and checks every value (an option it does not have is an error naming the
closest one). With `space` given, `default_search_config(space)`
returns the resolved defaults directly.

Defaults for the paper's space are the paper's (section 4.4): a coarse grid of
5 resolutions {192, 224, 256, 288, 320} x 4 depth settings x 2 width settings
x 4 kernel settings = 160 skeletons. Smaller spaces get the same settings over
their own choices (duplicates dropped) and up to 5 of their resolutions, e.g.
`bignas_tiny`: 3 resolutions x 2 depths x 2 widths x 4 kernels = 48.
"""

from __future__ import annotations

import math

import ml_collections

from tf_bignas.run.schema import unknown_option_message
from tf_bignas.run.validation import flatten
from tf_bignas.space import InvalidArchError, SearchSpace

METHODS = ("coarse_to_fine", "random", "evolution")
SELECTION_SPLITS = ("auto", "minival", "train")
PAPER_SPACE = "bignas_mobilenetv2"
PAPER_COARSE_RESOLUTIONS = (192, 224, 256, 288, 320)
MAX_DEFAULT_COARSE_RESOLUTIONS = 5


def default_search_config(space: SearchSpace | None = None) -> ml_collections.ConfigDict:
    """The search options.

    Args:
        space: If given, resolve the space-dependent defaults for it (the
            training-config-dependent ones, batch size and calibration, stay
            0 = "as in training").

    Returns:
        A ConfigDict: method, seed, selection_split, selection_examples,
        test_batches, batch_size, calibration_images, calibration_batch_size,
        cache_mb, resolutions,
        max_tries, log_every, and sections coarse, fine, baseline, evolution.
    """
    c = ml_collections.ConfigDict()
    c.method = "coarse_to_fine"  # or "random", "evolution"
    c.seed = 0
    # Where children are ranked: "minival" (held out of training), "train" (a
    # fixed subset of the training split after the calibration batches, as the
    # paper ranks on training data), "auto" (minival if the run held one out).
    c.selection_split = "auto"
    c.selection_examples = 10_000  # at most this many (whole batches); 0 = the whole split
    c.test_batches = 0  # test-split batches for the chosen children; 0 = all
    c.batch_size = 0  # selection / test batches; 0 = the calibration batch size
    # BN calibration: a fixed random sample of the training split (the same for
    # every child); 0 = as in training (train.calibration_images / _batch_size).
    c.calibration_images = 0
    c.calibration_batch_size = 0
    c.cache_mb = 1024  # keep a resolution's calibration / selection images in memory up to this
    c.resolutions = ()  # for mutations and sampling; () = the space's search resolutions
    c.max_tries = 500  # draws to find a new child that fits (mutations, sampling)
    c.log_every = 1  # progress line every N children

    c.coarse = ml_collections.ConfigDict()
    c.coarse.resolutions = ()  # () = the paper's for its space, else up to 5 of the space's
    # Settings are fractions of each stage's range of choices: 0 = smallest,
    # 1 = largest. Kernels: the fraction of stages (the last ones) that use
    # their largest kernel, the others their smallest.
    c.coarse.depth_settings = (0.0, 1 / 3, 2 / 3, 1.0)
    c.coarse.width_settings = (0.0, 1.0)
    c.coarse.kernel_settings = (0.0, 1 / 3, 2 / 3, 1.0)
    c.coarse.expand_settings = (1.0,)
    c.coarse.only_fitting = False  # skip skeletons that fit no budget (the paper evaluates all)

    c.fine = ml_collections.ConfigDict()
    c.fine.mutations = 20  # per budget, around its best fitting skeleton
    c.fine.mutation_size = 2  # each mutation changes 1..this many choices by one step

    c.baseline = ml_collections.ConfigDict()
    c.baseline.num_evaluations = 0  # random / evolution; 0 = as many as coarse_to_fine

    c.evolution = ml_collections.ConfigDict()
    c.evolution.population = 0  # per budget; 0 = a quarter of its evaluations (at least 4)
    c.evolution.parent_fraction = 0.25
    c.evolution.mutation_fraction = 0.5  # of each generation; the rest comes from crossover
    c.evolution.mutation_prob = 0.1  # per choice
    if space is not None:
        c = resolve_search_config(c, space)
    return c


def default_coarse_resolutions(space: SearchSpace) -> tuple[int, ...]:
    """The paper's five resolutions for its space, else up to 5 spread over the space's."""
    if space.name == PAPER_SPACE and set(PAPER_COARSE_RESOLUTIONS) <= set(space.resolutions):
        return PAPER_COARSE_RESOLUTIONS
    res = sorted(space.resolutions)
    n = min(len(res), MAX_DEFAULT_COARSE_RESOLUTIONS)
    if n == 1:
        return (res[0],)
    picks = [res[round(i * (len(res) - 1) / (n - 1))] for i in range(n)]
    return tuple(sorted(set(picks)))


def _check_fractions(name: str, values: tuple[float, ...]) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if not values or any(not (0.0 <= v <= 1.0) or math.isnan(v) for v in values):
        raise ValueError(
            f"search config {name}={values} must be a non-empty tuple of fractions in [0, 1]"
        )
    return values


def _check_resolutions(name: str, values: tuple[int, ...], space: SearchSpace) -> tuple[int, ...]:
    out = tuple(sorted({int(r) for r in values}))
    bad = [r for r in out if r not in space.resolutions]
    if bad:
        raise InvalidArchError(
            f"search config {name}={tuple(values)}: resolutions {bad} are not allowed by space "
            f"{space.name!r}; allowed: {list(space.resolutions)}"
        )
    return out


def resolve_search_config(
    config: ml_collections.ConfigDict,
    space: SearchSpace,
    train_config: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
    """Fills the placeholders of a search config and checks every value.

    Args:
        config: From `default_search_config()`, overrides applied.
        space: The run's search space.
        train_config: The run's training config (for the calibration sample
            and the batch size); if None, those stay 0.

    Returns:
        A resolved copy (the input is not changed).

    Raises:
        ValueError: Naming the option, its value and what is allowed, or an
            option that the search does not have (with the closest one).
    """
    known = set(flatten(default_search_config()))
    for name in flatten(config):
        if name not in known:
            raise ValueError(unknown_option_message(name, known, "the search config"))
    c = ml_collections.ConfigDict(config.to_dict())
    if c.method not in METHODS:
        raise ValueError(f"search method {c.method!r} is unknown; known: {list(METHODS)}")
    if c.selection_split not in SELECTION_SPLITS:
        raise ValueError(
            f"selection_split {c.selection_split!r} is unknown; known: {list(SELECTION_SPLITS)}"
        )
    for name in (
        "selection_examples",
        "test_batches",
        "batch_size",
        "calibration_images",
        "calibration_batch_size",
    ):
        if c[name] < 0:
            raise ValueError(f"search config {name}={c[name]} must be >= 0")
    if train_config is not None:
        t = train_config.train
        c.calibration_images = c.calibration_images or int(t.calibration_images)
        c.calibration_batch_size = c.calibration_batch_size or int(t.calibration_batch_size)
        c.batch_size = c.batch_size or c.calibration_batch_size
    c.resolutions = _check_resolutions(
        "resolutions", tuple(c.resolutions) or space.resolutions, space
    )
    co = c.coarse
    co.resolutions = _check_resolutions(
        "coarse.resolutions", tuple(co.resolutions) or default_coarse_resolutions(space), space
    )
    for name in ("depth_settings", "width_settings", "kernel_settings", "expand_settings"):
        co[name] = _check_fractions(f"coarse.{name}", tuple(co[name]))
    if c.fine.mutations < 0 or c.fine.mutation_size < 1 or c.max_tries < 1:
        raise ValueError(
            f"search config: fine.mutations={c.fine.mutations} must be >= 0, "
            f"fine.mutation_size={c.fine.mutation_size} and max_tries={c.max_tries} >= 1"
        )
    if c.baseline.num_evaluations < 0:
        raise ValueError(
            f"baseline.num_evaluations={c.baseline.num_evaluations} must be >= 0 (0 = as many "
            f"as coarse_to_fine)"
        )
    ev = c.evolution
    for name in ("parent_fraction", "mutation_fraction", "mutation_prob"):
        if not 0.0 <= ev[name] <= 1.0:
            raise ValueError(f"evolution.{name}={ev[name]} must be in [0, 1]")
    if ev.population < 0:
        raise ValueError(f"evolution.population={ev.population} must be >= 0 (0 = auto)")
    if c.log_every < 1 or c.cache_mb < 0:
        raise ValueError(f"log_every={c.log_every} must be >= 1 and cache_mb={c.cache_mb} >= 0")
    return c
