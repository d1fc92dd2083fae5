"""Input pipeline vs training step throughput, in one process.

Prints the images per second of the training pipeline (shared-patch batches
at all training resolutions, AutoAugment) on the CIFAR-10 image folder and on
the embedded digits, next to the images per second that a sandwich training
step consumes on the space each would train (bignas_cifar at 24/32 for
CIFAR-10, bignas_tiny at 16/32 for the digits), and their ratio. Also times
where the multi-resolution resize runs: once per batch (what the pipeline
does) or once per image.

    python -m benchmarks.data_pipeline --batch_size=128

The CIFAR-10 folder is unpacked from ../shared/data/cifar10-jpeg.tar.gz into
--cifar_dir when missing. The sandwich step is forward + backward of the
largest child (cross-entropy on labels), the smallest and two random children
(distilled from the largest's soft labels), in one tf.function with one
GradientTape and one SGD update, as in the paper: `tf_bignas.train.step.SandwichStep`.

Target (issue 2): pipeline >= 3x the step's images per second.
"""

from __future__ import annotations

import os
import pathlib
import tarfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from tf_bignas.data import build_train_dataset, open_source, transforms
from tf_bignas.model import Supernet
from tf_bignas.space import SearchSpace, get_space
from tf_bignas.train import step as train_step

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TARBALL = _REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

_CIFAR_DIR = flags.DEFINE_string("cifar_dir", "/tmp/cifar10", "Unpacked CIFAR-10 folder.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 200, "Batches timed per pipeline.")
_STEPS = flags.DEFINE_integer("steps", 8, "Training steps timed per space.")
_AUGMENT = flags.DEFINE_enum(
    "augment", "autoaugment", ["autoaugment", "randaugment", "none"], "Augmentation."
)


def _ensure_cifar(path: str) -> str:
    if not os.path.isdir(os.path.join(path, "train")):
        if not _TARBALL.is_file():
            raise FileNotFoundError(f"{path}/train is missing and so is {_TARBALL}")
        os.makedirs(path, exist_ok=True)
        print(f"unpacking {_TARBALL} into {path} ...")
        with tarfile.open(_TARBALL, "r:gz") as tar:
            tar.extractall(path, filter="data")
    return path


def _pipeline_rate(ds: tf.data.Dataset, batches: int, batch_size: int) -> tuple[float, float]:
    """(seconds to the first batch, images per second over the next `batches`)."""
    start = time.perf_counter()
    it = iter(ds)
    next(it)
    first = time.perf_counter() - start
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return first, batches * batch_size / (time.perf_counter() - start)


def _step_rate(space: SearchSpace, batch: dict, steps: int) -> tuple[float, str]:
    """(images per second consumed by the sandwich step, which step was timed)."""
    net = Supernet(space, num_classes=10)
    options = train_step.SandwichOptions()
    step = train_step.SandwichStep(
        net, keras.optimizers.SGD(0.05, momentum=0.9), options, batch["label"].shape[0]
    )
    for i in range(2):  # Warm-up: one trace for the whole run.
        step(batch, train_step.sample_children(net, i, options), i)
    times = []
    for i in range(2, 2 + steps):
        children = train_step.sample_children(net, i, options)
        start = time.perf_counter()
        step(batch, children, i)
        times.append(time.perf_counter() - start)
    return batch["label"].shape[0] / float(np.median(times)), "tf_bignas.train.step.SandwichStep"


def _resize_placement(source: str, resolutions: tuple[int, ...], batch_size: int) -> None:
    """Per-batch vs per-image multi-resolution resize, on cached base patches."""
    base = max(resolutions)
    ex = open_source(source).examples("train")
    decoded = ex.dataset.take(4096)
    if ex.kind == "path":
        decoded = decoded.map(lambda p, y: (transforms.decode_rgb(tf.io.read_file(p)), y))
    base_patches = decoded.map(
        lambda x, y: (tf.cast(transforms.resize(x, base), tf.uint8), y)
    ).cache()
    for _ in base_patches:
        pass

    per_batch = (
        base_patches.repeat()
        .batch(batch_size)
        .map(
            lambda x, y: (transforms.resize_patches(x, resolutions), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )
    per_image = (
        base_patches.repeat()
        .map(
            lambda x, y: (transforms.resize_patches(x[None], resolutions), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    for name, ds in (("per batch", per_batch), ("per image", per_image)):
        _, rate = _pipeline_rate(ds, 100, batch_size)
        print(f"  resize {name:9s}: {rate:9.0f} images/s")


def main(argv: list[str]) -> None:
    del argv
    bs = _BATCH.value
    print(f"tf {tf.__version__}, {os.cpu_count()} CPUs, batch {bs}, augment {_AUGMENT.value}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    setups = (
        ("cifar10 folder", f"folder:{_ensure_cifar(_CIFAR_DIR.value)}", "bignas_cifar"),
        ("embedded", "embedded", "bignas_tiny"),
    )
    rows = []
    for name, source, space_name in setups:
        space = get_space(space_name)
        res = space.train_resolutions
        start = time.perf_counter()
        ds = build_train_dataset(source, "train", res, bs, augment=_AUGMENT.value, seed=0)
        built = time.perf_counter() - start
        first, pipe = _pipeline_rate(ds, _PIPELINE_BATCHES.value, bs)
        print(f"{name}: build {built:.1f} s, first batch {first:.1f} s, {pipe:.0f} images/s")
        _resize_placement(source, res, bs)
        step, which = _step_rate(space, next(iter(ds)), _STEPS.value)
        print(f"  sandwich step ({which}) on {space_name} {res}: {step:.0f} images/s")
        rows.append((name, space_name, res, pipe, step))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    print("| source | space (resolutions) | pipeline img/s | step img/s | ratio |")
    print("|---|---|---|---|---|")
    for name, space_name, res, pipe, step in rows:
        res_text = "/".join(str(r) for r in res)
        print(
            f"| {name} | {space_name} ({res_text}) | {pipe:.0f} | {step:.0f} | {pipe / step:.1f}x |"
        )


if __name__ == "__main__":
    app.run(main)
