"""Stage 4, training: the sandwich step, schedules, calibration and the run.

`step` (sandwich rule + inplace distillation, one update), `schedules` (the
paper's recipe; its optimizer, `tf_bignas.run.optimizers`, sits in the run
layer because a workdir's checkpoints hold its state), `distribute`
(tf.distribute strategies), `config` (the schedule and optimizer a config
builds), `integrity` (checkpoint recovery), `graph_cache` and `trace_cache`
(the step's optimised graph and its trace, kept for the next process) and
`loop` (the resumable run that writes a workdir through `tf_bignas.run`).

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`, `tf_bignas.run`.
"""
