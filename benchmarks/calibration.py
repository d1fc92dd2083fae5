"""Children per minute of BN calibration + evaluation, vs bare forward passes, in one process.

On the quickstart config (`bignas_tiny` at resolutions 16/24/32, embedded
digits, batch 64, 16 calibration batches), for random children at random
search resolutions, times `ChildEvaluator.calibrate` (16 training batches)
plus `ChildEvaluator.evaluate` (the whole test split) and, on the same images,
bare inference forward passes of the same child through one `tf.function`
(`net(images, arch=encoded, training=False)`). Prints children per minute and
the ratio of calibration + evaluation to the bare passes, and checks that a
new child retraces nothing: after one warm-up child per resolution, the
evaluator's and the forward function's trace counts, and the supernet's
variables, stay as they are.

The batches are materialised to tensors first, so data loading is not timed.
For each child the two measurements run back to back, in alternating order,
so machine noise hits both alike; figures are medians over children. Weights
are random unless `--workdir` holds a trained `supernet.weights.h5` (costs
do not depend on the weights).

    python -m benchmarks.calibration --children=20

(`--config=configs/NAME.py` and `--config.section.key=value` as in `pipelines.train`.)

Target (issue 4): calibration + evaluation <= 1.2x the bare forward passes.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import timed
from tf_bignas import data as data_lib
from tf_bignas.model import Supernet
from tf_bignas.run.config import build_space, build_supernet
from tf_bignas.run.evaluator import ChildEvaluator
from tf_bignas.space import ArchConfig

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_REPO / "configs" / "quickstart.py"), "Config file (the quickstart)."
)
_CHILDREN = flags.DEFINE_integer("children", 20, "Timed random children.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed repeats per child.")
_CALIB_BATCHES = flags.DEFINE_integer(
    "calibration_batches", 16, "Calibration batches (of the training batch size) per child."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Optional quickstart workdir whose supernet.weights.h5 is loaded."
)

Batch = Mapping[str, tf.Tensor]


def _materialise(
    source: str, split: str, res: int, batch: int, num_batches: int | None
) -> list[dict[str, tf.Tensor]]:
    # Read whole (a partly read cached dataset warns), then keep the first batches.
    ds = data_lib.build_eval_dataset(source, split, res, batch)
    return [{k: tf.identity(v) for k, v in b.items()} for b in ds][:num_batches]


class _Bench:
    """The measured operations of one child on pre-loaded batches."""

    def __init__(
        self,
        net: Supernet,
        calib: Mapping[int, Sequence[Batch]],
        test: Mapping[int, Sequence[Batch]],
        num_calib: int,
    ) -> None:
        self.net, self.calib, self.test, self.num_calib = net, calib, test, num_calib
        self.evaluator = ChildEvaluator(net)
        self.forward = tf.function(self._forward)

    def _forward(self, images: tf.Tensor, arch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.net(images, arch=arch, training=False)

    def calibrate(self, arch: ArchConfig) -> None:
        images = [b["image"] for b in self.calib[arch.resolution]]
        self.evaluator.calibrate(arch, images, self.num_calib)

    def evaluate(self, arch: ArchConfig) -> None:
        self.evaluator.evaluate(arch, self.test[arch.resolution])

    def bare(self, arch: ArchConfig, batches: Sequence[Batch]) -> None:
        encoded = self.net.encode_arch(arch)
        for b in batches:
            self.forward(b["image"], encoded).numpy()

    def time_child(self, arch: ArchConfig, bare_first: bool) -> dict[str, float]:
        """Seconds of calibrate, evaluate, and bare passes over the same batches."""
        res = arch.resolution
        out: dict[str, float] = {}

        def ours() -> None:
            out["calibrate"] = timed(lambda: self.calibrate(arch))
            out["evaluate"] = timed(lambda: self.evaluate(arch))

        def bare() -> None:
            out["bare_calib"] = timed(lambda: self.bare(arch, self.calib[res]))
            out["bare_test"] = timed(lambda: self.bare(arch, self.test[res]))

        for fn in (bare, ours) if bare_first else (ours, bare):
            fn()
        return out

    def traces(self) -> tuple[int, int, int]:
        """(calibration + evaluation traces, bare forward traces, supernet variables)."""
        return (
            self.evaluator.tracing_count,
            self.forward.experimental_get_tracing_count(),
            len(self.net.variables),
        )


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    threads = config.runtime.threads
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    d, batch = config.data, config.train.batch_size
    num_calib = _CALIB_BATCHES.value
    info = data_lib.dataset_info(d.source, d.train_split)
    space = build_space(config)
    net = build_supernet(config, space, info.num_classes)
    if _WORKDIR.value:
        net.load_weights(os.path.join(_WORKDIR.value, "supernet.weights.h5"))
    resolutions = space.resolutions
    calib = {r: _materialise(d.source, d.train_split, r, batch, num_calib) for r in resolutions}
    test = {r: _materialise(d.source, d.eval_split, r, batch, None) for r in resolutions}
    n_test = sum(int(b["label"].shape[0]) for b in test[resolutions[0]])
    print(
        f"tf {tf.__version__}, {os.cpu_count()} CPUs, {threads} threads, space={space.name} "
        f"resolutions={resolutions} batch={batch} calibration batches={num_calib} "
        f"test batches={len(test[resolutions[0]])} ({n_test} images)"
    )
    bench = _Bench(net, calib, test, num_calib)

    # Warm-up: one child per resolution traces everything there is to trace.
    for i, res in enumerate(resolutions):
        bench.time_child(space.sample((1, i), resolutions=[res]), bare_first=False)
    warm = bench.traces()
    print(f"after warm-up (one child per resolution): traces calib+eval {warm[0]}, bare {warm[1]}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")

    rows: list[tuple[ArchConfig, dict[str, float]]] = []
    for i in range(_CHILDREN.value):
        arch = space.sample((0, i), resolutions=resolutions)
        for r in range(_REPEATS.value):
            rows.append((arch, bench.time_child(arch, bare_first=(i + r) % 2 == 1)))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    end = bench.traces()

    def col(key: str) -> np.ndarray:
        return np.asarray([t[key] for _, t in rows])

    ours = col("calibrate") + col("evaluate")
    bare = col("bare_calib") + col("bare_test")
    print()
    print(
        "| res | calibrate ms | evaluate ms | bare (calib imgs) ms | bare (test imgs) ms | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for res in resolutions:
        sel = np.asarray([a.resolution == res for a, _ in rows])
        if not sel.any():
            continue
        med = {k: float(np.median(col(k)[sel])) * 1e3 for k in rows[0][1]}
        ratio = float(np.median(ours[sel] / bare[sel]))
        print(
            f"| {res} | {med['calibrate']:.1f} | {med['evaluate']:.1f} | "
            f"{med['bare_calib']:.1f} | {med['bare_test']:.1f} | {ratio:.3f} |"
        )
    print()
    print(
        f"children timed: {_CHILDREN.value} x {_REPEATS.value}; calibration + evaluation "
        f"per child: median {np.median(ours) * 1e3:.1f} ms, mean {np.mean(ours) * 1e3:.1f} ms"
    )
    print(f"children per minute: {60.0 / float(np.mean(ours)):.1f}")
    print(
        f"ratio (calibrate + evaluate) / bare forward: median per child "
        f"{float(np.median(ours / bare)):.3f}, of totals {ours.sum() / bare.sum():.3f} "
        f"(target <= 1.2)"
    )
    print(
        f"  calibrate / bare on calibration images: {float(np.median(col('calibrate') / col('bare_calib'))):.3f}"
        f"; evaluate / bare on test images: {float(np.median(col('evaluate') / col('bare_test'))):.3f}"
    )
    print(
        f"traces: calibration+evaluation {warm[0]} -> {end[0]}, bare forward {warm[1]} -> "
        f"{end[1]} ({len(resolutions)} resolutions); supernet variables {warm[2]} -> {end[2]}"
    )
    assert end == warm, f"new children retraced or rebuilt something: {warm} -> {end}"
    assert end[0] <= 3 * len(resolutions), f"too many traces: {end[0]}"


if __name__ == "__main__":
    app.run(main)
