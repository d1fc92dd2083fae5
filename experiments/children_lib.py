"""Children trained on their own (Table 3) and sliced children finetuned (Table 2).

Used by `experiments/from_scratch.py` and `experiments/finetune.py` (the
programs, which hold the flags). Every run here trains one child as a plain
Keras model (`tf_bignas.model.extract_child`: stock layers, no slicing) with
the supernet run's own config, so data, augmentation, batch, optimizer and
schedule are the supernet's:

- `scratch`: fresh weights, initialised as the supernet initialises them
  (He-normal convolutions, zero-init last BN gamma of each residual block),
  trained on the labels with the run's label smoothing, weight decay and
  dropout (a model trained alone is the largest model of its own run), for the
  run's epochs on the run's learning-rate schedule.
- `distill`: the same, but the targets are the softmax (no temperature) of a
  separately trained teacher (the largest child trained from scratch),
  which sees the same random crop at its own resolution: the paper's
  "Distill A", inplace distillation moved out of the supernet.
- `finetune`: the sliced child with its calibrated BN statistics, trained
  further at a constant learning rate on the labels (the paper's Table 2).

A run lives in its own folder: `checkpoints/` (model, optimizer and the input
iterator, every `checkpoint_every` steps, so a killed run resumes at the same
batch), `curve.json` (test top-1 over training) and, when finished,
`results.json` and `model.keras`, all written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tf_bignas.common.files import atomic_write_json
from tf_bignas.data import pipeline as data_lib
from tf_bignas.data.device import network_images
from tf_bignas.export.export_lib import calibrate_child
from tf_bignas.export.models import write_keras
from tf_bignas.model.slicing import UncalibratedChildError, extract_child
from tf_bignas.run.config import build_space, build_supernet, minival_size
from tf_bignas.run.workdir import Workdir, open_workdir
from tf_bignas.space import ArchConfig
from tf_bignas.train.config import build_optimizer, build_schedule
from tf_bignas.train.schedules import scaled_learning_rate
from tf_bignas.train.step import is_decayed

INITS = ("scratch", "sliced")
TARGETS = ("labels", "teacher")
CHILD_NAMES = ("small", "medium", "large")
RESULTS_FILE = "results.json"
CURVE_FILE = "curve.json"
MODEL_FILE = "model.keras"
EVAL_BATCH = 500
METHODS = ("coarse_to_fine", "random", "evolution")
# The search every experiment runs on a miniature supernet (as on the CIFAR-10
# supernet in benchmarks/README.md): 3 depths x 2 kernels coarse skeletons, 8
# mutations per budget, children ranked on the 2,000-image minival.
SEARCH_FLAGS = (
    "--config.coarse.depth_settings=(0,0.5,1)",
    "--config.coarse.kernel_settings=(0,1)",
    "--config.fine.mutations=8",
    "--config.calibration_images=1024",
    "--config.calibration_batch_size=256",
    "--config.selection_examples=2000",
)


@dataclasses.dataclass(frozen=True)
class ChildRun:
    """One child trained as a plain Keras model.

    Attributes:
        name: The run's folder name.
        arch: The child.
        init: "scratch" (fresh weights) or "sliced" (the supernet's, calibrated).
        targets: "labels" or "teacher" (the softmax of `teacher_path`'s model).
        epochs: Training epochs.
        lr_fraction: None: the run's own schedule (warmup, decay, constant
            ending); else a constant LR, this fraction of the schedule's
            initial (peak) LR.
        seed: Seed of the data order, augmentation and weights.
        teacher_path: The teacher's `.keras` file (targets="teacher").
    """

    name: str
    arch: ArchConfig
    init: str
    targets: str = "labels"
    epochs: float = 1.0
    lr_fraction: float | None = None
    seed: int = 0
    teacher_path: str | None = None

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is unknown; allowed: {list(INITS)}")
        if self.targets not in TARGETS:
            raise ValueError(f"targets={self.targets!r} is unknown; allowed: {list(TARGETS)}")
        if (self.targets == "teacher") != bool(self.teacher_path):
            raise ValueError("targets='teacher' needs teacher_path, and only it takes one")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr_fraction is not None and not self.lr_fraction > 0:
            raise ValueError(f"lr_fraction must be > 0 or None, got {self.lr_fraction}")


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file's content, or None if it does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def searched_children(workdir: str, method: str = "coarse_to_fine") -> list[dict[str, Any]]:
    """The children a search chose, one per budget, smallest budget first.

    Args:
        workdir: The supernet's workdir, searched (`pipelines.search`).
        method: Whose choices: `search/selection_METHOD.json`.

    Returns:
        Per budget: {"budget", "arch" (ArchConfig), "macs", "params", "test_top1"}.

    Raises:
        FileNotFoundError: If the search has not run with that method.
        ValueError: If a budget has no child.
    """
    path = os.path.join(workdir, "search", f"selection_{method}.json")
    selection = read_json(path)
    if selection is None:
        raise FileNotFoundError(f"{path} is missing: run pipelines.search --method={method} first")
    out = []
    for entry in sorted(selection["budgets"], key=lambda e: e["limit"]):
        if not entry.get("arch"):
            raise ValueError(f"budget {entry['budget']} of {path} has no child")
        out.append(
            {
                "budget": entry["budget"],
                "arch": ArchConfig.from_dict(entry["arch"]),
                "macs": entry["macs"],
                "params": entry["params"],
                "test_top1": entry.get("test_top1"),
            }
        )
    return out


def evaluator(model: keras.Model) -> Callable[[tf.data.Dataset], float]:
    """A function giving the model's top-1 (inference mode) over a dataset of {"image", "label"}.

    Args:
        model: The model (logits out).

    Returns:
        dataset -> top-1; compiled once (the last, smaller batch traces once more).

    Raises:
        ValueError: (from the function) if the dataset is empty.
    """

    @tf.function(reduce_retracing=True)
    def batch_correct(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        logits = model(images, training=False)
        hits = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32))
        return tf.reduce_sum(tf.cast(hits, tf.int32))

    def top1(dataset: tf.data.Dataset) -> float:
        correct = total = 0
        for batch in dataset:
            correct += int(batch_correct(batch["image"], batch["label"]))
            total += int(batch["label"].shape[0])
        if total == 0:
            raise ValueError("the evaluation split is empty")
        return correct / total

    return top1


def test_dataset(config: ml_collections.ConfigDict, resolution: int) -> tf.data.Dataset:
    """The run's evaluation split at one resolution (centre crop, as every evaluation)."""
    d = config.data
    return data_lib.build_eval_dataset(
        d.source,
        d.eval_split,
        resolution,
        EVAL_BATCH,
        data_dir=d.data_dir or None,
        minival=minival_size(config),
        strict=d.strict,
    )


def sliced_child(wd: Workdir, arch: ArchConfig, log: Callable[[str], None]) -> keras.Model:
    """The child sliced out of the supernet, with its calibrated BN statistics.

    Calibrates (and stores in the workdir's `bn_stats.npz`) a child that the
    search has not calibrated.
    """
    try:
        return extract_child(wd.supernet, arch)
    except UncalibratedChildError:
        calibrate_child(wd, arch, log)
        return extract_child(open_workdir(wd.path).supernet, arch)


def _fresh_child(config: ml_collections.ConfigDict, arch: ArchConfig, num_classes: int, seed: int):
    keras.utils.set_random_seed(seed)
    net = build_supernet(config, build_space(config), num_classes)
    # A fresh supernet's moving statistics are 0/1, as in any fresh model.
    return extract_child(net, arch, allow_uncalibrated=True)


def train_child(
    config: ml_collections.ConfigDict,
    run: ChildRun,
    folder: str,
    *,
    supernet_workdir: str | None = None,
    evals: int = 4,
    checkpoint_every: int = 250,
    max_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains one child as a plain Keras model (resuming from `folder`).

    Args:
        config: The supernet run's config (data, batch, optimizer, schedule,
            regularisation).
        run: What to train.
        folder: The run's folder (created; a finished run is read back, not rerun).
        supernet_workdir: The supernet's workdir (init="sliced").
        evals: Test evaluations spread over training (the last at the end).
        checkpoint_every: Steps between checkpoints.
        max_steps: Stop after this many steps in this call (tests); the run
            stays unfinished and resumes.
        log: Progress lines.

    Returns:
        results.json's content: run, arch, steps, test top-1 before and after,
        curve, seconds (summed over attempts).

    Raises:
        ValueError: If init="sliced" has no supernet workdir.
    """
    done = read_json(os.path.join(folder, RESULTS_FILE))
    if done is not None:
        return done
    if run.init == "sliced" and not supernet_workdir:
        raise ValueError(f"{run.name}: init='sliced' needs the supernet's workdir")
    os.makedirs(folder, exist_ok=True)
    start_time = time.perf_counter()
    d, t, o = config.data, config.train, config.optimizer
    minival = minival_size(config)
    info = data_lib.dataset_info(
        d.source, d.train_split, d.data_dir or None, minival=minival, strict=d.strict
    )
    batch = int(t.batch_size)
    steps_per_epoch = max(1, info.num_examples // batch)
    total = max(1, int(round(run.epochs * steps_per_epoch)))

    if run.init == "sliced":
        model = sliced_child(open_workdir(supernet_workdir), run.arch, log)
    else:
        model = _fresh_child(config, run.arch, info.num_classes, run.seed)
    teacher, resolutions = None, [run.arch.resolution]
    if run.teacher_path:
        teacher = keras.models.load_model(run.teacher_path, compile=False)
        teacher.trainable = False
        resolutions = sorted({run.arch.resolution, int(teacher.inputs[0].shape[1])})
    teacher_res = int(teacher.inputs[0].shape[1]) if teacher is not None else None

    schedule = build_schedule(config, steps_per_epoch, total)
    if run.lr_fraction is None:
        learning_rate: Any = schedule
    else:
        peak = scaled_learning_rate(o.base_lr, batch, o.reference_batch)
        # A schedule object, not a float: the optimizer's variables stay the same.
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            peak * run.lr_fraction, decay_steps=1, decay_rate=1.0
        )
    optimizer = build_optimizer(config, learning_rate, use_ema=False)
    dataset = data_lib.build_train_dataset(
        d.source,
        d.train_split,
        resolutions,
        batch,
        data_dir=d.data_dir or None,
        augment=d.augment,
        base_resolution=d.base_resolution or None,
        crop_scale=tuple(d.crop_scale),
        seed=run.seed,
        minival=minival,
        strict=d.strict,
        transport=d.transport,
        shared_patch=d.get("shared_patch", True),
    )
    iterator = iter(dataset)
    # Dropout's random state too (Keras keeps it outside the model's weights): a
    # resumed run then draws the same masks as one run straight through.
    dropout_states = {
        f"dropout_{i}": layer.seed_generator.state.value
        for i, layer in enumerate(model.layers)
        if isinstance(layer, keras.layers.Dropout)
    }
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, data=iterator, **dropout_states
    )
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(folder, "checkpoints"), max_to_keep=2
    )
    step = 0
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        step = int(optimizer.iterations.numpy())
        log(f"{run.name}: resumed at step {step} of {total}")
    record = read_json(os.path.join(folder, CURVE_FILE)) or {"curve": [], "seconds": 0.0}
    record["curve"] = [p for p in record["curve"] if p[0] <= step]

    eps = float(config.sandwich.label_smoothing)
    weight_decay = float(config.sandwich.weight_decay)
    num_classes = info.num_classes
    variables = model.trainable_variables
    decayed = [is_decayed(v) for v in variables]

    @tf.function
    def train_step(batch_data: dict[str, Any]) -> tf.Tensor:
        images = network_images(batch_data, resolutions)
        labels = tf.cast(batch_data["label"], tf.int32)
        if teacher is not None:
            targets = tf.nn.softmax(teacher(images[teacher_res], training=False))
        else:
            targets = tf.one_hot(labels, num_classes) * (1.0 - eps) + eps / num_classes
        with tf.GradientTape() as tape:
            logits = model(images[run.arch.resolution], training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        grads = tape.gradient(loss, variables)
        grads = [g + weight_decay * v if k else g for g, v, k in zip(grads, variables, decayed)]
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    test, evaluate = test_dataset(config, run.arch.resolution), evaluator(model)
    if step == 0 and not record["curve"]:
        record["curve"].append([0, evaluate(test)])
    eval_at = {int(round(total * (i + 1) / evals)) for i in range(evals)}
    stop = total if max_steps is None else min(total, step + max_steps)
    last_log = time.perf_counter()
    while step < stop:
        loss = train_step(next(iterator))
        step += 1
        if step % 50 == 0 and not np.isfinite(float(loss)):
            raise FloatingPointError(f"{run.name}: loss {float(loss)} at step {step}")
        if step % checkpoint_every == 0 or step in eval_at or step == stop:
            if step in eval_at:
                record["curve"].append([step, evaluate(test)])
                log(f"{run.name}: step {step}/{total} test top-1 {record['curve'][-1][1]:.4f}")
            manager.save(checkpoint_number=step)
            record["seconds"] += time.perf_counter() - start_time
            start_time = time.perf_counter()
            atomic_write_json(os.path.join(folder, CURVE_FILE), record)
        elif time.perf_counter() - last_log > 60:
            log(f"{run.name}: step {step}/{total} loss {float(loss):.4f}")
            last_log = time.perf_counter()
    record["seconds"] += time.perf_counter() - start_time
    atomic_write_json(os.path.join(folder, CURVE_FILE), record)
    if step < total:
        return {"name": run.name, "finished": False, "step": step, "total_steps": total}
    write_keras(model, os.path.join(folder, MODEL_FILE))
    results = {
        "name": run.name,
        "finished": True,
        "init": run.init,
        "targets": run.targets,
        "teacher": run.teacher_path,
        "arch": run.arch.to_paper_notation(),
        "epochs": run.epochs,
        "lr_fraction": run.lr_fraction,
        "seed": run.seed,
        "total_steps": total,
        "top1_before": record["curve"][0][1],
        "test_top1": record["curve"][-1][1],
        "curve": record["curve"],
        "seconds": record["seconds"],
    }
    atomic_write_json(os.path.join(folder, RESULTS_FILE), results)
    return results


def sliced_top1(
    supernet_workdir: str, arch: ArchConfig, folder: str, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """The sliced child's test top-1 (no finetuning), by `evaluator`, cached in `folder`.

    Args:
        supernet_workdir: The supernet's workdir.
        arch: The child.
        folder: Where `sliced_ARCH.json` is kept.
        log: Progress lines.

    Returns:
        {"arch", "test_top1", "seconds"}.
    """
    key = arch.to_paper_notation().replace(" ", "_").replace(":", "-")
    path = os.path.join(folder, f"sliced_{key}.json")
    cached = read_json(path)
    if cached is not None:
        return cached
    start = time.perf_counter()
    wd = open_workdir(supernet_workdir)
    model = sliced_child(wd, arch, log)
    top1 = evaluator(model)(test_dataset(wd.config, arch.resolution))
    out = {
        "arch": arch.to_paper_notation(),
        "test_top1": top1,
        "seconds": time.perf_counter() - start,
    }
    os.makedirs(folder, exist_ok=True)
    atomic_write_json(path, out)
    return out


def search_time_path(supernet_workdir: str, method: str) -> str:
    """Where `ensure_search` keeps a search's wall time (beside the workdir, not in it)."""
    return f"{supernet_workdir.rstrip(os.sep)}.search_{method}.json"


def ensure_search(
    supernet_workdir: str, budgets: str, method: str, extra_flags: list[str], log_path: str
) -> list[dict[str, Any]]:
    """The search's children for `budgets`, running `pipelines.search` first if needed.

    Args:
        supernet_workdir: The supernet's workdir.
        budgets: KIND:V1,V2,... as `pipelines.search --budgets` takes it.
        method: The search method whose choices are read.
        extra_flags: More `pipelines.search` flags (e.g. `--config.fine.mutations=8`).
        log_path: The search's output is appended here.

    Returns:
        `searched_children(supernet_workdir, method)`.

    Raises:
        RuntimeError: If the search fails.
    """
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    path = os.path.join(supernet_workdir, "search", f"selection_{method}.json")
    held = read_json(path)
    wanted = [f"{budgets.split(':')[0]}:{v}" for v in budgets.split(":", 1)[1].split(",")]
    if held is None or sorted(b["budget"] for b in held["budgets"]) != sorted(wanted):
        cmd = [
            sys.executable,
            "-m",
            "pipelines.search",
            f"--workdir={supernet_workdir}",
            f"--budgets={budgets}",
            f"--method={method}",
            *extra_flags,
        ]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        start = time.perf_counter()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write("$ " + " ".join(cmd[1:]) + "\n")
            log.flush()
            done = subprocess.run(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the search failed (exit {done.returncode}); see {log_path}")
        timing = {"method": method, "budgets": budgets, "seconds": time.perf_counter() - start}
        atomic_write_json(search_time_path(supernet_workdir, method), timing)
    return searched_children(supernet_workdir, method)


def plot_family(
    path: str, series: dict[str, list[tuple[float, float]]], title: str, xlabel: str = "MFLOPs"
) -> None:
    """Writes a plot of top-1 against cost, one line per series, atomically.

    Args:
        path: The .png file.
        series: Label -> [(cost, top-1 in %)].
        title: The plot's title.
        xlabel: The x axis.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.2f}"


def _delta(value: float | None, base: float | None) -> str:
    return "" if value is None or base is None else f"{(value - base) * 100:+.2f}"


def table3_markdown(rows: list[dict[str, Any]], supernet: str, command: str, epochs: float) -> str:
    """Table 3's report: sliced children against the same children trained alone.

    Args:
        rows: Per child: name, budget, arch, macs, and the `sliced`, `scratch`
            and `distill` results (a row may lack `distill`).
        supernet: The supernet's workdir.
        command: The command that produced it.
        epochs: Epochs of every training run.

    Returns:
        The Markdown text.
    """
    lines = [
        "# Table 3 analogue: sliced children vs the same children trained alone",
        "",
        f"Produced by `{command}` from the supernet `{supernet}`. Every model trained alone "
        f"ran the supernet's recipe ({epochs:g} epochs, same data, augmentation, batch, "
        "optimizer and schedule) as a plain Keras model; test top-1 on the whole test split. "
        "Sliced: the supernet's weights with calibrated BN statistics, no finetuning.",
        "",
        "| child | budget | arch (paper notation) | MFLOPs | sliced % | alone, labels % "
        "| vs sliced | alone, distilled % | vs sliced | minutes (labels / distilled) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sliced = r["sliced"]["test_top1"]
        scratch = r.get("scratch", {}).get("test_top1")
        distill = r.get("distill", {}).get("test_top1")
        minutes = " / ".join(
            f"{r[k]['seconds'] / 60:.1f}" for k in ("scratch", "distill") if k in r
        )
        macs = "" if r.get("macs") is None else f"{r['macs'] / 1e6:.2f}"
        lines.append(
            f"| {r['name']} | {r['budget']} | `{r['arch'].to_paper_notation()}` | {macs} "
            f"| {_pct(sliced)} | {_pct(scratch)} | {_delta(scratch, sliced)} "
            f"| {_pct(distill)} | {_delta(distill, sliced)} | {minutes} |"
        )
    lines.append("")
    return "\n".join(lines)


def table2_markdown(
    rows: list[dict[str, Any]], fractions: list[float], supernet: str, command: str, epochs: float
) -> str:
    """Table 2's report: sliced children finetuned at constant learning rates.

    Args:
        rows: Per child: name, budget, arch, macs, `sliced` and `finetune`
            ({fraction: results}).
        fractions: The LR fractions (of the run's peak LR), in column order.
        supernet: The supernet's workdir.
        command: The command that produced it.
        epochs: Finetuning epochs.

    Returns:
        The Markdown text.
    """
    head = " | ".join(f"LR {f:g} x peak % | change" for f in fractions)
    lines = [
        "# Table 2 analogue: finetuning the sliced children at constant learning rates",
        "",
        f"Produced by `{command}` from the supernet `{supernet}`. Each child starts from its "
        f"sliced weights and calibrated BN statistics and trains {epochs:g} epoch(s) on the "
        "labels (label smoothing, weight decay, dropout, as a model trained alone) at a "
        "constant LR, a fraction of the supernet run's peak LR (its schedule ended at 0.05 x "
        "peak). Test top-1 on the whole test split; change in points against no finetuning.",
        "",
        f"| child | arch (paper notation) | MFLOPs | no finetuning % | {head} |",
        "|---|---|---:|---:|" + "---:|---:|" * len(fractions),
    ]
    for r in rows:
        sliced = r["sliced"]["test_top1"]
        cells = []
        for f in fractions:
            value = r["finetune"].get(f, {}).get("test_top1")
            cells += [_pct(value), _delta(value, sliced)]
        lines.append(
            f"| {r['name']} | `{r['arch'].to_paper_notation()}` | {r['macs'] / 1e6:.2f} "
            f"| {_pct(sliced)} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    return "\n".join(lines)


def search_markdown(table: dict[str, dict[str, dict[str, dict[str, Any]]]], command: str) -> str:
    """The search methods compared: per supernet, budget and method, the chosen child.

    Args:
        table: supernet -> method -> {"selection": selection_METHOD.json,
            "seconds": the search's wall time or None}.
        command: The command that produced it.

    Returns:
        The Markdown text: per supernet and budget, each method's selection and
        test top-1 and MFLOPs; then the mean test top-1 per budget and method.
    """
    lines = [
        "# Coarse-to-fine selection against random and evolutionary search",
        "",
        f"Produced by `{command}`. Every method evaluates about the same number of "
        "children; each child is ranked on the minival split (held out of training), "
        "and the test split is read for the chosen child only. Cells: minival top-1 / "
        "test top-1 (%) (MFLOPs).",
        "",
        "| supernet | budget | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    means: dict[tuple[str, str], list[float]] = {}
    for supernet, by_method in table.items():
        budgets = sorted(
            {
                b["budget"]: b["limit"]
                for m in by_method.values()
                for b in m["selection"]["budgets"]
            }.items(),
            key=lambda kv: kv[1],
        )
        for budget, _ in budgets:
            cells = []
            for method in METHODS:
                entry = next(
                    (
                        b
                        for b in by_method.get(method, {}).get("selection", {}).get("budgets", [])
                        if b["budget"] == budget
                    ),
                    None,
                )
                if entry is None or entry.get("test_top1") is None:
                    cells.append("")
                    continue
                means.setdefault((budget, method), []).append(entry["test_top1"])
                cells.append(
                    f"{entry['metric'] * 100:.2f} / {entry['test_top1'] * 100:.2f} "
                    f"({entry['macs'] / 1e6:.2f})"
                )
            lines.append(
                f"| `{os.path.basename(supernet)}` | {budget} | " + " | ".join(cells) + " |"
            )
    budgets_sorted = sorted({b for b, _ in means}, key=lambda b: float(b.split(":")[1]))
    head = " | ".join(f"mean test top-1 {b} %" for b in budgets_sorted)
    lines += ["", f"| method | children evaluated | search wall time (s) | {head} |"]
    lines.append("|---|---:|---:|" + "---:|" * len(budgets_sorted))
    for method in METHODS:
        counts = [
            str(by_method[method]["selection"].get("num_evaluated", ""))
            for by_method in table.values()
            if method in by_method
        ]
        walls = [
            f"{by_method[method]['seconds']:.0f}"
            for by_method in table.values()
            if by_method.get(method, {}).get("seconds") is not None
        ]
        cells = []
        for budget in budgets_sorted:
            values = means.get((budget, method), [])
            cells.append(f"{np.mean(values) * 100:.2f}" if values else "")
        lines.append(
            f"| {method} | {', '.join(counts)} | {', '.join(walls)} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    return "\n".join(lines)
