"""Stage 5, search: which child of a trained supernet is best under each budget?

The paper's coarse-to-fine selection (section 4.4) and two baselines with the
same number of evaluations (random search; evolution with mutation and
crossover under the constraint), from a trained workdir to
`WORKDIR/search/` (`evaluations.jsonl`, `selection.json`, `pareto.png`,
`report.md`):

- `costs`: budgets (`mflops`, `params_m`, `latency_ms`) and the cost-model
  interface (latency plugs in from outside);
- `config`: the search options (`default_search_config`);
- `grid`: the coarse grid of network-wise skeletons;
- `mutations`: perturbation, mutation and crossover of children;
- `methods`: coarse-to-fine, random and evolution as round-by-round proposers;
- `scoring`: per-child BN calibration and selection-split accuracy, no retrace;
- `results`: the append-only, resumable, shardable results file;
- `plot`, `report`: `pareto.png`, `selection.json` and `report.md`;
- `runner`: `run_search`, the whole run.

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`, `tf_bignas.run` (never `tf_bignas.export` or
`tf_bignas.latency`: latency costs are passed in as functions).
"""

from tf_bignas.run.evaluations import ResultsFileError
from tf_bignas.search.config import default_search_config, resolve_search_config
from tf_bignas.search.costs import (
    BUDGET_KINDS,
    Budget,
    BudgetError,
    FunctionCost,
    parse_budgets,
)
from tf_bignas.search.runner import SearchOutcome, run_search

__all__ = [
    "BUDGET_KINDS",
    "Budget",
    "BudgetError",
    "FunctionCost",
    "ResultsFileError",
    "SearchOutcome",
    "default_search_config",
    "parse_budgets",
    "resolve_search_config",
    "run_search",
]
