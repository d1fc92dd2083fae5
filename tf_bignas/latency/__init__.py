"""Stage 7, latency: measured speed of children on the host and on Android phones.

`adb` (an injection-safe wrapper of the `adb` program) and `android`
(`benchmark_android`: TFLite's `benchmark_model` on a device, results in the
model cards and `benchmark_android.csv`) measure exported models; `ops` and
`table` build and read latency tables (every distinct operation of a space's
children measured as its own tiny TFLite model, summed per child); `costs`
turns a table or end-to-end measurement into the `latency_ms` cost model the
search takes.

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`, `tf_bignas.train`, `tf_bignas.export` (not `tf_bignas.search`).
"""
