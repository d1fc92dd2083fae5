"""The paper's claims re-tested at small scale (issue 14); results in RESULTS.md.

Programs (absl flags; each resumable, skipping finished runs):
- `ablations`: section 4.3, each training technique switched off, per seed.
- `from_scratch`: Table 3, sliced children against the same children trained alone.
- `finetune`: Table 2, the sliced children finetuned at constant learning rates.
- `search_methods`: coarse-to-fine selection against random and evolution.

Libraries (no flags): `ablation_lib` (variants, report), `children_lib`
(children trained as plain Keras models, the search's choices, reports).
They import `tf_bignas` and `pipelines` (as subprocesses) only.
"""
