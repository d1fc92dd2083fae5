"""Search speed: children per minute, and scoring a child vs bare forward passes.

On a trained workdir (a copy of it, so the run's files stay as they are):

1. Scoring cost. For random children at random search resolutions, times
   `ChildScorer.score` (BN calibration on the run's calibration sample, then
   top-1 on the selection split, as the search does it) against bare inference
   forward passes of the same child over the same images (calibration images
   plus selection images, through one `tf.function` of
   `net(images, arch=encoded, training=False)`, uint8 images normalised on the
   device as the scorer does). Both read the same in-memory batches; the two
   measurements alternate in order; one warm-up child per resolution first.
   Prints the ratio (target: at most 1.2x) and checks that new children
   retrace nothing. Both wall and CPU time (`time.process_time`, all threads)
   are reported: on a shared machine the CPU-time ratio is the steadier one.
2. Children per minute of a whole search: `run_search` (coarse-to-fine, the
   config's grid and mutations) with the warmed-up evaluator, so the figure
   is the steady state: proposals, costs, scoring, the results file, and the
   final test-split evaluation and plots, per child evaluated.

`benchmarks.common.matmul_gmacs()` is printed beside the absolute figures.

    python -m benchmarks.search --workdir=workdirs/quickstart --budgets=mflops:1,2,3

(`--config.KEY=VALUE` overrides the search config as in `pipelines.search`.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import matmul_gmacs, timed
from tf_bignas.data import DEFAULT_NORMALIZATION
from tf_bignas.run.evaluator import network_input
from tf_bignas.run.workdir import open_workdir, read_config
from tf_bignas.search import config as search_config
from tf_bignas.search import parse_budgets, run_search
from tf_bignas.search.scoring import ChildScorer
from tf_bignas.space import ArchConfig

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training workdir (copied first).")
_BUDGETS = flags.DEFINE_string("budgets", "mflops:1,2,3", "Budgets of the timed search.")
_CHILDREN = flags.DEFINE_integer("children", 20, "Timed random children for the ratio.")
_CONFIG = config_flags.DEFINE_config_dict("config", search_config.default_search_config())
flags.mark_flags_as_required(["workdir"])

_RUN_FILES = ("config.json", "model.json", "results.json", "supernet.weights.h5", "bn_stats.npz")


def _copy_run(src: str, dst: str) -> None:
    os.makedirs(dst)
    for name in _RUN_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def main(argv: list[str]) -> None:
    del argv
    tmp = tempfile.mkdtemp(prefix="search_bench_")
    try:
        _bench(os.path.join(tmp, "run"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(path: str) -> None:
    _copy_run(_WORKDIR.value, path)
    threads = read_config(path).runtime.threads  # before TensorFlow starts
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    wd = open_workdir(path)
    config = search_config.resolve_search_config(_CONFIG.value, wd.space, wd.config)
    scorer = ChildScorer(wd, config)
    net = wd.supernet

    @tf.function
    def forward(images: tf.Tensor, arch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return net(network_input(images, DEFAULT_NORMALIZATION), arch=arch, training=False)

    def bare(arch: ArchConfig) -> None:
        encoded = net.encode_arch(arch)
        for ds in (
            scorer.calibration_data(arch.resolution),
            scorer.selection_data(arch.resolution),
        ):
            for b in ds:
                forward(b["image"], encoded).numpy()

    def ours(arch: ArchConfig) -> None:
        scorer.score(arch)

    resolutions = config.resolutions
    gmacs = matmul_gmacs()
    print(
        f"tf {tf.__version__}, {os.cpu_count()} CPUs, {threads} threads, matmul "
        f"{gmacs:.1f} GMAC/s; space={wd.space.name} resolutions={resolutions}; calibration "
        f"{scorer.calibration_images} images in batches of {scorer.calibration_batch_size}; "
        f"selection {scorer.num_selection} {scorer.split!r} images in batches of "
        f"{scorer.batch_size}"
    )
    for i, res in enumerate(resolutions):  # warm-up: every trace there is
        arch = wd.space.sample((1, i), resolutions=[res])
        ours(arch)
        bare(arch)
    warm = (scorer.tracing_count, forward.experimental_get_tracing_count(), len(net.variables))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for i in range(_CHILDREN.value):
        arch = wd.space.sample((0, i), resolutions=resolutions)
        t = {}
        order = (("bare", bare), ("ours", ours)) if i % 2 else (("ours", ours), ("bare", bare))
        for name, fn in order:
            cpu = time.process_time()
            t[name] = timed(fn, arch)
            t[name + "_cpu"] = time.process_time() - cpu
        rows.append((arch, t))
    end = (scorer.tracing_count, forward.experimental_get_tracing_count(), len(net.variables))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    ours_s = np.asarray([t["ours"] for _, t in rows])
    bare_s = np.asarray([t["bare"] for _, t in rows])
    print("\n| res | children | score ms (calibrate + evaluate) | bare forward ms | ratio |")
    print("|---|---|---|---|---|")
    for res in resolutions:
        sel = np.asarray([a.resolution == res for a, _ in rows])
        if sel.any():
            print(
                f"| {res} | {int(sel.sum())} | {np.median(ours_s[sel]) * 1e3:.1f} | "
                f"{np.median(bare_s[sel]) * 1e3:.1f} | {np.median(ours_s[sel] / bare_s[sel]):.3f} |"
            )
    print(
        f"\nscoring: median {np.median(ours_s) * 1e3:.1f} ms per child, "
        f"{60 / np.mean(ours_s):.1f} children/minute ({gmacs:.1f} GMAC/s matmul reference)"
    )
    print(
        f"ratio score / bare forward on the same images: median per child "
        f"{np.median(ours_s / bare_s):.3f}, of totals {ours_s.sum() / bare_s.sum():.3f} "
        f"(target <= 1.2)"
    )
    ours_cpu = np.asarray([t["ours_cpu"] for _, t in rows])
    bare_cpu = np.asarray([t["bare_cpu"] for _, t in rows])
    print(
        f"ratio in CPU time (all threads; steadier on a busy machine): median per child "
        f"{np.median(ours_cpu / bare_cpu):.3f}, of totals {ours_cpu.sum() / bare_cpu.sum():.3f}; "
        f"scoring {np.median(ours_cpu) * 1e3:.1f} ms CPU per child"
    )
    print(
        f"traces: scorer {warm[0]} -> {end[0]}, bare {warm[1]} -> {end[1]} "
        f"({len(resolutions)} resolutions); supernet variables {warm[2]} -> {end[2]}"
    )
    assert end == warm, f"new children retraced or rebuilt something: {warm} -> {end}"

    # A whole search, steady state (the evaluator is warm).
    start = time.perf_counter()
    out = run_search(
        wd, parse_budgets(_BUDGETS.value), config, evaluator=scorer.evaluator, log=lambda _: None
    )
    wall = time.perf_counter() - start
    print(
        f"\nsearch {out.method} under {_BUDGETS.value}: {out.newly_evaluated} children in "
        f"{wall:.1f} s wall = {60 * out.newly_evaluated / wall:.1f} children/minute end to end "
        f"(scoring, proposals, results file, final test evaluation and plot); traces "
        f"{out.tracing_count} ({gmacs:.1f} GMAC/s matmul reference)"
    )


if __name__ == "__main__":
    app.run(main)
