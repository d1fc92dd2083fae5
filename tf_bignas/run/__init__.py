"""The run layer: everything a workdir is, read and written in one place.

Every stage stands on it: training writes a workdir through it, and search,
export and latency read and extend that workdir through it, never through
each other's files. It holds

- `config`: the option tree of a run with its defaults, and the objects every
  stage rebuilds from it (space, supernet, minival size);
- `validation`: the rule of every option and the checks of a run's input;
- `workdir`: the file layout and `open_workdir`, the one entry point to a
  trained run (config, space, supernet with its weights and BN statistics);
- `record` (``run.json``, what a workdir holds and the resume check) and
  `lock` (``run.lock``, one writer at a time);
- `evaluator`: BN re-calibration on a fixed training sample and the accuracy
  of a child;
- `evaluations` (``search/evaluations.jsonl``) and `card` (the model card of
  an exported child).

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`.
"""
