"""Stage 4, training: the sandwich step, schedules, calibration and the run.

`step` (sandwich rule + inplace distillation, one update), `schedules` and
`optimizers` (the paper's recipe), `calibration` (BN re-calibration and
accuracy per child), `distribute` (tf.distribute strategies), `config` (the
option tree and what it builds), `loop` (the resumable run that writes a
workdir) and `workdir` (`open_workdir`, the one entry point through which
search, export and latency read a trained run).

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`.
"""
