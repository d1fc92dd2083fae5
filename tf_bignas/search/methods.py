"""Search methods as round-by-round proposers: coarse-to-fine, random and evolution.

A method proposes children in rounds. Round r's proposals are a pure
function of the seed and of the scores of the children it proposed in
rounds 0..r-1, so a restarted or sharded search proposes exactly the same
children, and skips those already scored. `propose` returns None when the
method is done.

- `CoarseToFine` (the paper, section 4.4): round 0 is the coarse grid of
  skeletons (`grid.coarse_grid`); round 1, per budget, perturbs the best
  skeleton that fits it (`mutations.perturb`), `fine.mutations` times.
- `RandomSearch`: round 0 draws children uniformly from the space, each under
  one budget in turn (rejection sampling).
- `Evolution` (as Once-for-All and AttentiveNAS search): per budget, a random
  population, then generations of mutants and crossovers of the best parents
  found so far that fit the budget.

The baselines get as many evaluations as coarse-to-fine proposes
(`coarse_to_fine_evaluations`) unless `baseline.num_evaluations` says otherwise.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from tf_bignas.search import grid as grid_lib
from tf_bignas.search import mutations
from tf_bignas.search.costs import Budget, CostModel
from tf_bignas.space import ArchConfig, SearchSpace

# Stage names, as written in the results file and shown in the plot.
COARSE, FINE, RANDOM, EVOLUTION = "coarse", "fine", "random", "evolution"
# Seed streams, so that methods never share random numbers by accident.
_FINE_STREAM, _RANDOM_STREAM, _EVOLUTION_STREAM = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A child a method wants scored.

    Attributes:
        arch: The child.
        stage: "coarse", "fine", "random" or "evolution".
        budget: The budget it was proposed for ("" for the coarse grid).
    """

    arch: ArchConfig
    stage: str
    budget: str = ""


@dataclasses.dataclass(frozen=True)
class Scored:
    """A child with its selection metric and its cost in the search's budget kind.

    Attributes:
        arch: The child.
        metric: Top-1 accuracy on the selection split.
        cost: Its cost in the budgets' unit.
    """

    arch: ArchConfig
    metric: float
    cost: float


def best_fitting(scored: Sequence[Scored], budget: Budget) -> Scored | None:
    """The child with the highest metric that fits the budget (ties: cheaper, then key).

    Args:
        scored: Scored children.
        budget: The budget.

    Returns:
        The best, or None if none fits.
    """
    fitting = [s for s in scored if budget.fits(s.cost)]
    if not fitting:
        return None
    return min(fitting, key=lambda s: (-s.metric, s.cost, s.arch.key))


def _ranked(scored: Sequence[Scored], budget: Budget) -> list[Scored]:
    fitting = [s for s in scored if budget.fits(s.cost)]
    return sorted(fitting, key=lambda s: (-s.metric, s.cost, s.arch.key))


class SearchMethod(abc.ABC):
    """Proposes children round by round.

    Args:
        space: The search space.
        budgets: The budgets (one kind).
        cost: The cost model of that kind.
        config: The resolved search config.
    """

    name = ""

    def __init__(
        self,
        space: SearchSpace,
        budgets: Sequence[Budget],
        cost: CostModel,
        config: ml_collections.ConfigDict,
    ) -> None:
        self.space, self.budgets, self.cost, self.config = space, tuple(budgets), cost, config
        self.resolutions = tuple(config.resolutions)

    def fits(self, budget: Budget) -> Callable[[ArchConfig], bool]:
        """A predicate: does a child fit `budget`?"""
        return lambda arch: budget.fits(self.cost(arch))

    @abc.abstractmethod
    def expected_evaluations(self) -> int:
        """How many children the method proposes in all (for progress and ETA)."""

    @abc.abstractmethod
    def propose(self, round_index: int, scored: Mapping[str, Scored]) -> list[Candidate] | None:
        """The children of one round.

        Args:
            round_index: 0, 1, ...
            scored: {arch key: Scored} of every child this method proposed in
                rounds before `round_index` (no others).

        Returns:
            The round's candidates (distinct, none of `scored`), or None when
            the method has no more rounds.
        """

    def _sample(self, rng: np.random.Generator) -> ArchConfig:
        return self.space.sample(rng, resolutions=self.resolutions)


def coarse_skeletons(space: SearchSpace, config: ml_collections.ConfigDict) -> list[ArchConfig]:
    """The coarse grid a resolved search config describes."""
    co = config.coarse
    return grid_lib.coarse_grid(
        space,
        co.resolutions,
        co.depth_settings,
        co.width_settings,
        co.kernel_settings,
        co.expand_settings,
    )


class CoarseToFine(SearchMethod):
    """The paper's coarse-to-fine selection (see the module docstring)."""

    name = "coarse_to_fine"

    def _grid(self) -> list[ArchConfig]:
        skeletons = coarse_skeletons(self.space, self.config)
        if self.config.coarse.only_fitting:
            top = max(b.limit for b in self.budgets)
            skeletons = [a for a in skeletons if self.cost(a) <= top]
        return skeletons

    def expected_evaluations(self) -> int:
        return len(self._grid()) + len(self.budgets) * self.config.fine.mutations

    def propose(self, round_index: int, scored: Mapping[str, Scored]) -> list[Candidate] | None:
        if round_index == 0:
            return [Candidate(a, COARSE) for a in self._grid()]
        if round_index > 1:
            return None
        seen = set(scored)
        out: list[Candidate] = []
        coarse = list(scored.values())
        for bi, budget in enumerate(self.budgets):
            best = best_fitting(coarse, budget)
            if best is None:  # No skeleton fits: start from the smallest child.
                base = self.space.smallest(min(self.resolutions))
                if base.key not in seen:
                    out.append(Candidate(base, FINE, budget.name))
                    seen.add(base.key)
            else:
                base = best.arch
            rng = np.random.default_rng([self.config.seed, _FINE_STREAM, bi])
            fine = self.config.fine

            def draw(
                r: np.random.Generator, base: ArchConfig = base, size: int = fine.mutation_size
            ) -> ArchConfig:
                return mutations.perturb(self.space, base, r, size, self.resolutions)

            for _ in range(fine.mutations):
                arch = mutations.draw_new(draw, rng, self.fits(budget), seen, self.config.max_tries)
                if arch is not None:
                    out.append(Candidate(arch, FINE, budget.name))
                    seen.add(arch.key)
        return out


def coarse_to_fine_evaluations(
    space: SearchSpace,
    budgets: Sequence[Budget],
    cost: CostModel,
    config: ml_collections.ConfigDict,
) -> int:
    """How many children coarse-to-fine proposes: the baselines' default allowance."""
    return CoarseToFine(space, budgets, cost, config).expected_evaluations()


class _Baseline(SearchMethod):
    def num_evaluations(self) -> int:
        n = self.config.baseline.num_evaluations
        return n or coarse_to_fine_evaluations(self.space, self.budgets, self.cost, self.config)

    def expected_evaluations(self) -> int:
        return self.num_evaluations()


class RandomSearch(_Baseline):
    """Uniform random children, each drawn under one budget in turn."""

    name = "random"

    def propose(self, round_index: int, scored: Mapping[str, Scored]) -> list[Candidate] | None:
        if round_index > 0:
            return None
        seen: set[str] = set(scored)
        out = []
        for i in range(self.num_evaluations()):
            budget = self.budgets[i % len(self.budgets)]
            rng = np.random.default_rng([self.config.seed, _RANDOM_STREAM, i])
            arch = mutations.draw_new(
                self._sample, rng, self.fits(budget), seen, self.config.max_tries
            )
            if arch is not None:
                out.append(Candidate(arch, RANDOM, budget.name))
                seen.add(arch.key)
        return out


class Evolution(_Baseline):
    """Per budget: a random population, then generations of mutants and crossovers.

    Each budget gets an equal share of the evaluations. A generation of
    `population` children: `mutation_fraction` of them mutate a parent, the
    rest cross two parents; parents are the best `parent_fraction x
    population` children found so far that fit the budget (any budget's
    children count). When the parents' neighbourhood holds no new child that
    fits, a random one that fits takes its place.
    """

    name = "evolution"

    def _shares(self) -> list[int]:
        n, b = self.num_evaluations(), len(self.budgets)
        return [n // b + (1 if i < n % b else 0) for i in range(b)]

    def _population(self, share: int) -> int:
        return self.config.evolution.population or max(4, math.ceil(share / 4))

    def propose(self, round_index: int, scored: Mapping[str, Scored]) -> list[Candidate] | None:
        ev, g = self.config.evolution, round_index
        seen: set[str] = set(scored)
        out: list[Candidate] = []
        any_left = False
        for bi, (budget, share) in enumerate(zip(self.budgets, self._shares())):
            pop = self._population(share)
            size = min(pop, share - g * pop)
            if size <= 0:
                continue
            any_left = True
            rng = np.random.default_rng([self.config.seed, _EVOLUTION_STREAM, bi, g])
            fits = self.fits(budget)
            parents = _ranked(list(scored.values()), budget)
            parents = parents[: max(1, round(ev.parent_fraction * pop))]
            n_mutants = round(ev.mutation_fraction * size)
            for j in range(size):
                if g == 0 or not parents:
                    draw = self._sample
                elif j < n_mutants:

                    def draw(r: np.random.Generator, parents: list[Scored] = parents) -> ArchConfig:
                        parent = parents[int(r.integers(len(parents)))].arch
                        return mutations.mutate(
                            self.space, parent, r, ev.mutation_prob, self.resolutions
                        )
                else:

                    def draw(r: np.random.Generator, parents: list[Scored] = parents) -> ArchConfig:
                        a = parents[int(r.integers(len(parents)))].arch
                        b = parents[int(r.integers(len(parents)))].arch
                        return mutations.crossover(self.space, a, b, r)

                arch = mutations.draw_new(draw, rng, fits, seen, self.config.max_tries)
                if arch is None:  # The parents' neighbourhood is used up: a random child.
                    arch = mutations.draw_new(self._sample, rng, fits, seen, self.config.max_tries)
                if arch is not None:
                    out.append(Candidate(arch, EVOLUTION, budget.name))
                    seen.add(arch.key)
        return out if any_left else None


def build_method(
    space: SearchSpace,
    budgets: Sequence[Budget],
    cost: CostModel,
    config: ml_collections.ConfigDict,
) -> SearchMethod:
    """The method `config.method` names.

    Raises:
        ValueError: If the method is unknown.
    """
    methods = {m.name: m for m in (CoarseToFine, RandomSearch, Evolution)}
    if config.method not in methods:
        raise ValueError(f"search method {config.method!r} is unknown; known: {sorted(methods)}")
    return methods[config.method](space, budgets, cost, config)
