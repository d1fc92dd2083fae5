"""Stage 7, latency: how fast children run on the host and on Android phones.

- `adb`: an injection-safe wrapper of the `adb` program (argument lists only;
  device-shell words quoted one by one), device selection and its errors;
- `android`: `benchmark_android`, TFLite's `benchmark_model` on a phone for
  every `.tflite` file of a folder (each checked first against its model
  card's sha256), holding the workdir lock, resumable after a disconnect;
- `android_device`: the phone (`getprop`), the ELF check of the binary for
  its ABI, and `BenchmarkOptions` (threads, delegate, runs, CPU mask);
- `android_results`: `benchmark_android.csv` and the model cards' latency
  entries (target "android", keyed by device model, threads, delegate and
  format), and the lock the latency writers hold;
- `benchmark_output`: what `benchmark_model` prints (mean, min, max, std;
  median and p5/p95 in LiteRT's builds; memory), read into numbers;
- `host`: TFLite conversion and timing with ai-edge-litert on this machine;
- `parts`: a child as its parts (stem, blocks keyed on their description
  without position, head), every distinct part of a space;
- `table`: latency tables (each part measured as its own tiny TFLite model on
  a target, summed per child, scaled on a few whole children) as JSON data
  files, committed ones in `tables/`, and the search's `latency_ms` cost model;
- `endtoend`: whole children timed end to end (the search's other
  `latency_ms` cost model) and a table's error against them;
- `int8`: int8 TFLite accuracy of children, and the re-ranking of a search's
  candidates by it.

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`, `tf_bignas.run`, `tf_bignas.export` (not `tf_bignas.search`:
the search's scorer is taken as an argument, and its files read as JSON).
"""
