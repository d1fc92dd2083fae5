"""The run layer: everything a workdir is, read and written in one place.

Every stage stands on it: training writes a workdir through it, and search,
export and latency read and extend that workdir through it, never through
each other's files. It holds

- `config`: the option tree of a run with its defaults, and the objects every
  stage rebuilds from it (space, supernet, minival size);
- `schema`: every option in one table (default, rule, resume policy, doc);
- `validation`: the rule of every option and the checks of a run's input;
- `workdir`: the file layout and `open_workdir`, the one entry point to a
  trained run (config, space, supernet with its weights and BN statistics);
- `record` (``run.json``, what a workdir holds and the resume check) and
  `lock` (``run.lock``, one writer at a time);
- `optimizers`: the paper's RMSProp (TF1's accumulator start, EMA), whose
  state the checkpoints of a workdir hold (restored by `workdir`);
- `evaluator`: BN re-calibration on a fixed training sample and the accuracy
  of a child;
- `evaluations` (``search/evaluations.jsonl``) and `card` (the model card of
  an exported child);
- `budget`: the one grammar of budgets (``mflops:250,400``, ``params_m:1.5``,
  ``latency_ms:5``) for search, export and the chain;
- `selection` (``search/selection.json``): the children a search chose, typed
  and checked (`read_selection`, `write_selection`).

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`.
"""
