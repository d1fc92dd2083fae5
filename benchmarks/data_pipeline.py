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

`--transport` (issue 8) compares what leaves the host per training example:
normalised float32 images at every resolution ("float"), uint8 images at
every resolution ("uint8", normalised in the step) and the uint8 shared patch
alone ("patch", resized and normalised in the step, `tf_bignas.data.device`).
For each it prints the bytes per example and the host's images per second on
ONE core (a private tf.data thread pool of one thread), interleaved rounds in
this process, on two settings: ImageNet-like JPEGs (500x375, made once from
the CIFAR-10 images, upscaled, with noise so that they compress like photos)
at the paper's resolutions 192/224/288/320 from a 224 patch, and the CIFAR-10
folder at 24/32. It also times the step-side work of each transport on this
CPU and compares the device resize with the host resize pixel by pixel.

    python -m benchmarks.data_pipeline --transport
"""

from __future__ import annotations

import os
import pathlib
import tarfile
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.common import matmul_gmacs
from tf_bignas.data import (
    DEFAULT_NORMALIZATION,
    build_train_dataset,
    network_images,
    open_source,
    transforms,
)
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
_TRANSPORT = flags.DEFINE_bool(
    "transport", False, "Only the transport comparison (float / uint8 / patch)."
)
_TRANSPORT_BATCHES = flags.DEFINE_integer(
    "transport_batches", 40, "Batches timed per transport and round."
)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds of the transport comparison.")
_INET_DIR = flags.DEFINE_string(
    "imagenet_like_dir", "/tmp/bignas_imagenet_like", "Where the ImageNet-like JPEGs go."
)
_TRANSPORTS = ("float", "uint8", "patch")


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


def _imagenet_like(cifar: str, path: str, per_class: int = 60) -> str:
    """A folder of 500x375 JPEGs (quality 90) made from CIFAR-10 training images."""
    from PIL import Image

    train = os.path.join(path, "train")
    if os.path.isdir(train) and len(os.listdir(train)) == 10:
        return path
    rng = np.random.default_rng(0)
    for cls in sorted(os.listdir(os.path.join(cifar, "train")))[:10]:
        out = os.path.join(train, cls)
        os.makedirs(out, exist_ok=True)
        names = sorted(os.listdir(os.path.join(cifar, "train", cls)))[:per_class]
        for name in names:
            img = Image.open(os.path.join(cifar, "train", cls, name)).convert("RGB")
            big = np.asarray(img.resize((500, 375), Image.BICUBIC), np.float32)
            big += rng.normal(0.0, 12.0, big.shape)  # texture: photo-like JPEG sizes
            Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(
                os.path.join(out, name), quality=90
            )
    return path


def _bytes_per_example(ds: tf.data.Dataset) -> int:
    """Bytes of one example in a batch (every tensor but the label)."""
    total = 0
    for spec in tf.nest.flatten(ds.element_spec):
        if spec.shape.rank and spec.shape.rank > 1:
            total += int(np.prod(spec.shape[1:])) * spec.dtype.size
    return total


def _one_core(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _transport_setting(
    name: str, source: str, res: Sequence[int], base: int, batch_size: int
) -> list[tuple]:
    """Bytes per example, host images/s on one core, and step-side cost per transport."""
    datasets = {
        t: _one_core(
            build_train_dataset(
                source, "train", res, batch_size, augment=_AUGMENT.value, seed=0,
                base_resolution=base, transport=t,
            )
        )
        for t in _TRANSPORTS
    }  # fmt: skip
    iterators = {t: iter(ds) for t, ds in datasets.items()}
    rates: dict[str, list[float]] = {t: [] for t in _TRANSPORTS}
    for t in _TRANSPORTS:  # warm-up
        for _ in range(3):
            next(iterators[t])
    for _ in range(_ROUNDS.value):
        for t in _TRANSPORTS:
            start = time.perf_counter()
            for _ in range(_TRANSPORT_BATCHES.value):
                next(iterators[t])
            rates[t].append(_TRANSPORT_BATCHES.value * batch_size / (time.perf_counter() - start))
    # Step side: what each transport leaves to the step, on this CPU (2 threads).
    fresh = {t: next(iter(build_train_dataset(
        source, "train", res, batch_size, augment=_AUGMENT.value, seed=1,
        base_resolution=base, transport=t,
    ))) for t in _TRANSPORTS}  # fmt: skip
    # Compiled with XLA, as a TPU step is; reduced to a scalar so that copying
    # the images out is not timed.
    prep = tf.function(lambda b: network_images(b, res))
    work = tf.function(
        lambda b: tf.add_n([tf.reduce_sum(x) for x in network_images(b, res).values()]),
        jit_compile=True,
    )
    step_ms = {}
    for t in _TRANSPORTS:
        work(fresh[t]).numpy()
        times = []
        for _ in range(10):
            start = time.perf_counter()
            work(fresh[t]).numpy()
            times.append(time.perf_counter() - start)
        step_ms[t] = 1000 * float(np.median(times)) / batch_size
    host, device = network_images(fresh["uint8"], res), prep(fresh["patch"])
    pixels = DEFAULT_NORMALIZATION.invert  # back to pixel levels
    diffs = {r: np.abs(pixels(host[r]).numpy() - pixels(device[r]).numpy()) for r in res}
    worst = max(float(d.max()) for d in diffs.values())
    differing = float(np.mean([np.mean(d > 0.5) for d in diffs.values()]))
    as_float = network_images(fresh["float"], res)
    same_float = max(float(np.abs(as_float[r].numpy() - host[r].numpy()).max()) for r in res)
    print(
        f"{name}: device resize vs host resize: max {worst:.2f} pixel levels, "
        f"{differing:.2e} of values differ; uint8 vs float transport max |diff| {same_float:.1e}"
    )
    rows = []
    for t in _TRANSPORTS:
        rows.append((name, t, _bytes_per_example(datasets[t]), float(np.median(rates[t])),
                     step_ms[t]))  # fmt: skip
    return rows


def _transport_main(bs: int) -> None:
    cifar = _ensure_cifar(_CIFAR_DIR.value)
    print(f"matmul reference: {matmul_gmacs():.1f} GMAC/s in this process")
    rows = _transport_setting(
        "ImageNet-like 500x375 JPEGs",
        f"folder:{_imagenet_like(cifar, _INET_DIR.value)}",
        (192, 224, 288, 320),
        224,
        32,
    )
    rows += _transport_setting("CIFAR-10 folder", f"folder:{cifar}", (24, 32), 32, bs)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    print("| setting | transport | bytes/example | host img/s (1 core) | vs float | "
          "step-side ms/img (XLA, this CPU) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    base = {name: rate for name, t, _, rate, _ in rows if t == "float"}
    for name, t, nbytes, rate, ms in rows:
        print(f"| {name} | {t} | {nbytes:,} | {rate:.0f} | {rate / base[name]:.2f}x | {ms:.3f} |")


def main(argv: list[str]) -> None:
    del argv
    bs = _BATCH.value
    if _TRANSPORT.value:
        print(f"tf {tf.__version__}, {os.cpu_count()} CPUs, augment {_AUGMENT.value}")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        _transport_main(bs)
        return
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
