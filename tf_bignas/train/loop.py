"""The supernet training run: data, model, sandwich steps, checkpoints, evaluation.

`train(config, workdir)` is what `pipelines/train.py` runs. It is resumable:
checkpoints (`tf.train.CheckpointManager`, whose index file is replaced
atomically) hold the model, the optimizer (and so the step), the sampler's
seed, and the input iterator where the dataset allows it. Starting the same
command again after a crash or a kill continues from the last checkpoint, and
with deterministic ops the result equals an uninterrupted run: children are
drawn from (seed, step), dropout is stateless on (seed, step), and the data
order and augmentation are restored with the iterator.

A fresh run's first step runs op by op (`runtime.eager_first_step`,
`SandwichStep.run_eagerly`): its losses come as soon as the supernet is
built, and the compiled step is traced after it. A resumed run starts with the
compiled step. Whether a run is fresh is a fact of its workdir (no
checkpoint), not of any cache, so a config and seed train the same weights
whatever the caches hold.

On a CPU-only host with one device the children of a step run at the same
time, one lane per core (`runtime.child_lanes`, `SandwichStep`'s `lanes`),
and unless `runtime.threads` says otherwise each op gets cores / lanes
threads: the same weights as one child after another at those threads.

Before it writes anything, a run checks every option, the workdir path and
the data (`tf_bignas.run.validation`), takes the workdir's lock, and
compares itself with the run the workdir holds (`tf_bignas.train.integrity`):
a different run is refused, never mixed in. A checkpoint is written only from
a healthy state (finite losses, finite optimizer state, finite and bounded
weights), and a damaged newest checkpoint falls back to the newest intact one.

At the end the smallest and largest children are BN-calibrated and evaluated
on the held-out split; results go to `workdir/results.json`, the calibrated
statistics to `workdir/bn_stats.npz`, and the final supernet weights (the EMA
weights when EMA is on) to `workdir/supernet.weights.h5`. With EMA on, every
evaluation, mid-run ones included, calibrates and evaluates the EMA weights
(the weights the run delivers); `results.json` says which ("weights": "ema"
or "raw") and on how many training images the children were calibrated.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Callable

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tf_bignas import data as data_lib
from tf_bignas.common.files import atomic_write_json
from tf_bignas.common.text import command_line
from tf_bignas.run import lock
from tf_bignas.run import record as run_record_lib
from tf_bignas.run import workdir as wd
from tf_bignas.run.config import build_space, build_supernet, minival_size, validate_config
from tf_bignas.run.evaluator import Accuracy, ChildEvaluator
from tf_bignas.run.optimizers import ema_weights
from tf_bignas.run.validation import (
    validate_dataset,
    validate_max_steps,
    validate_options,
    validate_workdir_path,
)
from tf_bignas.space import SearchSpace
from tf_bignas.train import integrity
from tf_bignas.train.config import build_optimizer, build_schedule
from tf_bignas.train.distribute import (
    PEER_ERRORS,
    WorkerFailureError,
    WorkerRole,
    build_strategy,
    worker_role,
)
from tf_bignas.train.step import (
    LoopOutput,
    SandwichOptions,
    SandwichStep,
    child_lanes,
    lane_threads,
    skip_idle_graph_passes,
)

CHILD_NAMES = ("largest", "smallest")  # the first two children of every step
TRAIN_SAMPLE = "train_sample"  # the key of the training images scored at evaluations


class NonFiniteLossError(RuntimeError):
    """A loss, gradient or weight became NaN, infinite or unbounded; the run
    stopped without saving (the last good checkpoint is kept)."""


@dataclasses.dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        step: The global step reached.
        finished: Whether the configured number of steps was reached.
        accuracies: Child name -> Accuracy (empty unless finished).
        seconds: Wall time of this process's training loop.
    """

    step: int
    finished: bool
    accuracies: dict[str, Accuracy]
    seconds: float


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    max_steps: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Trains (or resumes) a supernet.

    Everything is checked before anything is written: the options, `max_steps`,
    the workdir path, the data (at least two classes, the eval split), and the
    run the workdir holds. Then the workdir's lock is taken for the whole run.

    Args:
        config: The resolved config (see `tf_bignas.train.config`).
        workdir: Output folder: run.json, config.json, checkpoints/,
            tensorboard/, results.json, bn_stats.npz.
        max_steps: Stop cleanly once the global step reaches this (checkpoint
            written); None runs the configured epochs.
        strategy: Overrides `config.runtime.strategy` if given.
        log: Where progress lines go.

    Returns:
        The TrainResult.

    Raises:
        NonFiniteLossError: If a loss, gradient or weight becomes non-finite or
            unbounded (the last good checkpoint is kept).
        ValueError: On invalid options, paths or data (named in the message),
            before anything is written; `run_record_lib.ResumeMismatchError` if the
            workdir holds another run, `lock.WorkdirBusyError` if another
            run holds its lock, `WorkdirError` for checkpoints it cannot resume.
    """
    validate_options(config)
    validate_config(config)
    validate_max_steps(max_steps)
    validate_workdir_path(workdir)
    if isinstance(strategy, tf.distribute.TPUStrategy) and config.model.mode != "mask":
        raise ValueError(
            f"a TPU strategy needs static shapes, but model.mode={config.model.mode!r}; "
            "use --config.model.mode=mask"
        )
    space = build_space(config)
    d = config.data
    kwargs = dict(data_dir=d.data_dir or None, minival=minival_size(config))
    info = data_lib.dataset_info(d.source, d.train_split, **kwargs)
    validate_dataset(d.source, d.train_split, info.num_classes, info.num_examples)
    if d.eval_split != d.train_split:
        data_lib.dataset_info(d.source, d.eval_split, **kwargs)  # exists, readable
    record = run_record_lib.run_record(config, space.to_dict(), info.num_classes)
    ckpt_dir = os.path.join(workdir, wd.CHECKPOINT_DIR)
    run_record_lib.check_resume(workdir, record)  # refuse early, before taking the lock
    integrity.check_checkpoint_files(ckpt_dir)
    role = worker_role(strategy)
    if not role.is_chief:
        return _train_worker(config, workdir, space, info, max_steps, strategy, log, role)
    with lock.locked(workdir, log):
        run_record_lib.check_resume(workdir, record)  # again, now that no one else writes
        integrity.check_checkpoint_files(ckpt_dir)
        run_record_lib.write_record(workdir, record, config)
        return _Run(config, workdir, space, info, max_steps, strategy, log, role, "").train()


def _train_worker(
    config: ml_collections.ConfigDict,
    workdir: str,
    space: SearchSpace,
    info: data_lib.DataInfo,
    max_steps: int | None,
    strategy: tf.distribute.Strategy,
    log: Callable[[str], None],
    role: WorkerRole,
) -> TrainResult:
    """A non-chief worker of a multi-worker run: the chief owns the workdir.

    It reads the chief's checkpoints and writes its own (every worker takes
    part in a save) into a temporary folder, deleted at the end.
    """
    with tempfile.TemporaryDirectory(prefix=f"bignas_{role.task_type}{role.task_id}_") as own:
        return _Run(config, workdir, space, info, max_steps, strategy, log, role, own).train()


def _graph_cache_dir(
    runtime: ml_collections.ConfigDict, workdir: str, role: WorkerRole, scratch: str
) -> str | None:
    """The directory that `runtime.graph_cache_dir` names.

    TPU runs use none: their graphs are rewritten for the TPU system they
    were compiled for, which the cache's key does not cover.

    Args:
        runtime: The config's `runtime` section; `graph_cache_dir` is '' (no
            cache), 'workdir', or a path.
        workdir: The run's workdir.
        role: This process's role (a non-chief worker writes nothing into the workdir).
        scratch: A non-chief worker's own folder.

    Returns:
        None for no cache; `<workdir>/graph_cache` (a non-chief worker's:
        `<scratch>/graph_cache`) for 'workdir'; else the path, `~` expanded.
    """
    setting = runtime.graph_cache_dir
    if not setting or runtime.strategy == "tpu":
        return None
    if setting == "workdir":
        return os.path.join(workdir if role.is_chief else scratch, wd.GRAPH_CACHE_DIR)
    return os.path.expanduser(setting)


def _set_threads(intra: int, inter: int, why: str, log: Callable[[str], None]) -> None:
    """Sets TensorFlow's thread pools, or says why they keep their size.

    They can be sized only before TensorFlow first runs an op in the process
    (a second run in one process, e.g. tests or the chain, finds them fixed).

    Args:
        intra: Threads per op.
        inter: Threads that run ops.
        why: The setting that asks for them, for the log.
        log: Where the line goes.
    """
    threading = tf.config.threading
    current = (
        threading.get_intra_op_parallelism_threads(),
        threading.get_inter_op_parallelism_threads(),
    )
    if current == (intra, inter):
        return
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        log(
            f"{why}: {intra} thread(s) per op and {inter} op threads not applied: "
            "TensorFlow already runs in this process"
        )
        return
    log(f"threads: {intra} per op, {inter} op threads ({why})")


def _lanes(runtime: ml_collections.ConfigDict, num_children: int) -> int:
    """The lanes of children a run asks for.

    Args:
        runtime: The config's `runtime` section.
        num_children: Children per step.

    Returns:
        `runtime.child_lanes`, or `train.step.child_lanes`'s choice for 0.
    """
    if runtime.child_lanes:
        return runtime.child_lanes
    return child_lanes(runtime.strategy, runtime.jit_compile, num_children)


class _Run:
    """One training run, once `train` has checked everything and holds the lock.

    Its state is built once; its parts are methods: the loop, saving,
    evaluation, the outputs. A non-chief worker (`role`) writes nothing into
    the workdir: its own checkpoints and logs go to `scratch`.

    Args:
        config: The resolved config.
        workdir: The workdir.
        space: The run's search space.
        info: The training split's facts (classes, examples).
        max_steps: Stop at this step (None: the configured epochs).
        strategy: The distribution strategy (None: from the config).
        log: Where progress lines go.
        role: This process's role in a multi-worker run.
        scratch: A non-chief worker's own folder.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        space: SearchSpace,
        info: data_lib.DataInfo,
        max_steps: int | None,
        strategy: tf.distribute.Strategy | None,
        log: Callable[[str], None],
        role: WorkerRole,
        scratch: str,
    ) -> None:
        self.config, self.workdir, self.space, self.info = config, workdir, space, info
        self.log, self.role = log, role
        rt = config.runtime
        # Threads first: TensorFlow sizes its pools when it first runs an op.
        num_children = config.sandwich.num_random + 2
        lanes = min(_lanes(rt, num_children), num_children)
        if rt.threads:
            _set_threads(rt.threads, rt.threads, f"runtime.threads={rt.threads}", log)
        elif lanes > 1:
            intra, inter = lane_threads(lanes)
            _set_threads(intra, inter, f"{lanes} lanes of children on {inter} cores", log)
        log(
            f"children of a step: {num_children}, "
            + (f"in {lanes} lanes at the same time" if lanes > 1 else "one after another")
        )
        if rt.deterministic:
            tf.config.experimental.enable_op_determinism()
        if rt.lean_grappler:
            skip_idle_graph_passes()
        keras.utils.set_random_seed(config.seed)
        self.strategy = strategy or build_strategy(rt.strategy, rt.tpu)
        self.batch = config.train.batch_size
        steps_per_epoch = max(1, info.num_examples // self.batch)
        self.total_steps = max(1, int(round(config.train.epochs * steps_per_epoch)))
        self.stop_at = min(self.total_steps, max_steps) if max_steps else self.total_steps
        with self.strategy.scope():
            self.net = build_supernet(config, space, info.num_classes)
            self.schedule = build_schedule(config, steps_per_epoch, self.total_steps)
            self.optimizer = build_optimizer(config, self.schedule)
            self.step_fn = SandwichStep(
                self.net, self.optimizer, _sandwich_options(config, self.total_steps),
                self.batch, self.strategy, jit_compile=rt.jit_compile,
                graph_cache_dir=_graph_cache_dir(rt, workdir, role, scratch),
                lean_grappler=rt.lean_grappler, lanes=lanes,
            )  # fmt: skip
            self.sampler_seed = tf.Variable(config.seed, dtype=tf.int64, trainable=False)
        if role.is_chief:
            wd.write_model_spec(workdir, self.net)
        self.iterator = iter(self.strategy.distribute_datasets_from_function(self.train_input))
        # A fresh run's first step runs op by op, and the step is traced after
        # it (`loop`); whether the run is fresh is a fact of the workdir, not
        # of any cache, so a config and seed always train the same weights.
        self.eager_first = (
            rt.eager_first_step
            and self.step_fn.can_run_eagerly
            and not integrity.has_checkpoint(os.path.join(workdir, wd.CHECKPOINT_DIR))
        )
        if self.eager_first:
            log("training step: the first step runs op by op, the step is traced after it")
        else:
            # Before the restore, which builds graphs of its own: the same trace,
            # names included, in a fresh run and in its resume (the graph cache's key).
            log(f"training step: {self.step_fn.trace(self.iterator)}")
        self.out_dir = workdir if role.is_chief else scratch
        self.manager = self._restore()
        self.writer = tf.summary.create_file_writer(os.path.join(self.out_dir, "tensorboard"))
        self.evaluator = ChildEvaluator(self.net, self.strategy)
        self.eval_sets: dict[tuple[str, int], object] = {}
        # Calibration: a fixed random sample of the training split, in batches of
        # its own size (a multiple of the replicas). Images travel as uint8 and are
        # normalised on the device (ChildEvaluator).
        replicas = self.strategy.num_replicas_in_sync
        self.calib_batch = -(-config.train.calibration_batch_size // replicas) * replicas
        # Outputs of the compiled loop since the last look at them: the host
        # reads the losses only at log, checkpoint and evaluation steps, so the
        # device runs ahead between them.
        self.unchecked: list = []

    def train(self) -> TrainResult:
        """Runs the steps, then evaluates and (the chief) writes a finished run."""
        return self.finish(self.loop())

    # ---- state: data, checkpoints ---------------------------------------------------
    def train_input(self, ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        """The training batches of one input pipeline (every resolution, shared patch)."""
        d = self.config.data
        return data_lib.build_train_dataset(
            d.source,
            d.train_split,
            self.space.train_resolutions,
            self.batch,
            data_dir=d.data_dir or None,
            augment=d.augment,
            base_resolution=d.base_resolution or None,
            crop_scale=tuple(d.crop_scale),
            seed=self.config.seed,
            input_context=ctx,
            minival=minival_size(self.config),
            strict=d.strict,
            transport=d.transport,  # the step finishes it (tf_bignas.data.device)
            shared_patch=d.get("shared_patch", True),
            # Ablation: one crop per child of the step (largest, smallest, random).
            child_crops=self.config.sandwich.num_random + 2 if d.get("crop_per_child") else 0,
        )

    def _restore(self) -> tf.train.CheckpointManager:
        """Restores the newest intact checkpoint (if any); the manager that saves the next."""
        config, role, log = self.config, self.role, self.log
        state = {"model": self.net, "optimizer": self.optimizer, "sampler_seed": self.sampler_seed}
        if config.train.checkpoint_data and role.num_workers == 1:
            state["data"] = self.iterator  # exact resume of the data order and augmentation
        elif config.train.checkpoint_data and role.is_chief:
            # Each worker reads its own shard, but every worker restores the chief's
            # checkpoint: a resumed multi-worker run starts its data streams afresh.
            log("multi-worker run: the input position is not checkpointed (train.checkpoint_data)")
        self.checkpoint = tf.train.Checkpoint(**state)
        self.ckpt_dir = os.path.join(self.workdir, wd.CHECKPOINT_DIR)
        # The newest checkpoint that reads back whole and healthy (a damaged one is
        # named, moved to checkpoints/damaged/, and the previous one used).
        if role.is_chief:
            restored = integrity.restore_newest_intact(
                self.checkpoint, self.ckpt_dir, self.state_problem, log
            )
        else:  # the chief's newest checkpoint, read-only
            restored = tf.train.latest_checkpoint(self.ckpt_dir)
            if restored:
                self.checkpoint.restore(restored).assert_existing_objects_matched()
        manager = tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(self.out_dir, wd.CHECKPOINT_DIR),
            max_to_keep=config.train.keep_checkpoints,
        )
        if restored:
            if int(self.sampler_seed.numpy()) != config.seed:
                raise ValueError(
                    f"workdir {self.workdir!r} holds a run with seed "
                    f"{int(self.sampler_seed.numpy())}, but config.seed is {config.seed}: use a "
                    "new workdir or the same seed"
                )
            log(f"resumed from {restored} at step {int(self.optimizer.iterations.numpy())}")
        return manager

    def state_problem(self) -> str | None:
        """What is unhealthy in the weights or optimizer state (None: nothing)."""
        return integrity.unhealthy_state(
            self.net.trainable_variables,
            self.net.non_trainable_variables,
            self.optimizer.variables,
            self.config.train.max_abs_weight,
        )

    def save(self, step: int) -> None:
        """Checkpoints the state after `step` steps, if it is healthy."""
        problem = self.state_problem()
        if problem:
            raise NonFiniteLossError(
                f"{problem} after step {step}; stopped without saving. The last good "
                f"checkpoint is {self.manager.latest_checkpoint or 'none (no checkpoint yet)'}"
            )
        self.manager.save(checkpoint_number=step)

    # ---- evaluation -----------------------------------------------------------------
    def eval_data(self, split: str, res: int) -> object:
        """The distributed dataset of one evaluation set ("calibration", a split, the train sample)."""
        if (split, res) in self.eval_sets:
            return self.eval_sets[(split, res)]
        config, d, batch = self.config, self.config.data, self.batch

        def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            common = dict(
                data_dir=d.data_dir or None,
                input_context=ctx,
                minival=minival_size(config),
                strict=d.strict,
                normalize=False,
            )
            if split == "calibration":
                return data_lib.build_calibration_dataset(
                    d.source, d.train_split, res, config.train.calibration_images,
                    self.calib_batch, seed=config.seed, **common,
                )  # fmt: skip
            if split == TRAIN_SAMPLE:  # the training sample scored beside the eval split
                return data_lib.build_eval_dataset(
                    d.source, d.train_split, res, batch, sample=config.train.eval_train_images,
                    sample_seed=config.seed, **common,
                )  # fmt: skip
            return data_lib.build_eval_dataset(d.source, split, res, batch, **common)

        self.eval_sets[(split, res)] = self.strategy.distribute_datasets_from_function(fn)
        return self.eval_sets[(split, res)]

    def evaluate_children(self) -> tuple[dict[str, Accuracy], dict[str, Accuracy]]:
        """Eval-split and training-sample accuracy of the largest and smallest child."""
        out, on_train = {}, {}
        t, space = self.config.train, self.space
        # With EMA, children are calibrated and evaluated with the EMA weights.
        with ema_weights(self.optimizer, self.net.trainable_variables):
            for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
                res = arch.resolution
                self.evaluator.calibrate(arch, iter(self.eval_data("calibration", res)))
                out[name] = self.evaluator.evaluate(
                    arch, iter(self.eval_data(self.config.data.eval_split, res)),
                    t.eval_batches or None,
                )  # fmt: skip
                if t.eval_train_images:
                    on_train[name] = self.evaluator.evaluate(
                        arch, iter(self.eval_data(TRAIN_SAMPLE, res))
                    )
        return out, on_train

    def log_eval(self, step: int, accs: dict[str, Accuracy], on_train: dict[str, Accuracy]) -> None:
        """Evaluation figures to TensorBoard and the log."""
        with self.writer.as_default(step=step):
            for name, acc in accs.items():
                tf.summary.scalar(f"eval/top1_{name}", acc.top1)
                tf.summary.scalar(f"eval/top5_{name}", acc.top5)
            for name, acc in on_train.items():
                tf.summary.scalar(f"eval/train_top1_{name}", acc.top1)
        self.log(
            f"step {step} eval "
            + " ".join(f"{n} top1 {a.top1:.4f}" for n, a in accs.items())
            + "".join(f" {n} train top1 {a.top1:.4f}" for n, a in on_train.items())
        )

    # ---- the loop ---------------------------------------------------------------------
    def check_finite(self, step: int) -> None:
        """Raises on the first non-finite loss since the last check."""
        for out in self.unchecked:
            bad_step = int(out.bad_step.numpy())
            if bad_step < 0:
                continue
            losses = out.bad_losses.numpy()
            bad = int(np.argmin(np.isfinite(losses)))
            kind = CHILD_NAMES[bad] if bad < 2 else f"random #{bad - 1}"
            child = self.step_fn.sample_children(bad_step)[bad]
            raise NonFiniteLossError(
                f"non-finite loss {losses[bad]} at step {bad_step + 1} in the {kind} child "
                f"({child.to_paper_notation()}), found at the check after step {step}; stopped "
                "without saving. The last good checkpoint is "
                f"{self.manager.latest_checkpoint or 'none (no checkpoint yet)'}"
            )
        self.unchecked.clear()

    def next_event(self, step: int) -> int:
        """The next step at which the host logs, checkpoints, evaluates or stops."""
        t = self.config.train
        every = (t.log_every, t.checkpoint_every, t.eval_every)
        return min([self.stop_at] + [(step // e + 1) * e for e in every if e])

    def log_progress(self, step: int, losses: np.ndarray, since: tuple[int, float]) -> None:
        """One progress line (losses, LR, speed, ETA) and its TensorBoard scalars."""
        now = time.perf_counter()
        ips = (step - since[0]) * self.batch / max(now - since[1], 1e-9)
        rate = (step - self.start_step) / max(now - self.start, 1e-9)
        lr = float(self.schedule(step))
        rnd = float(np.mean(losses[2:])) if len(losses) > 2 else float("nan")
        self.log(
            f"step {step}/{self.stop_at} loss largest {losses[0]:.4f} smallest {losses[1]:.4f} "
            f"random {rnd:.4f} lr {lr:.4g} {ips:.0f} img/s ETA "
            f"{_eta((self.stop_at - step) / rate)}"
        )
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss/largest", losses[0])
            tf.summary.scalar("loss/smallest", losses[1])
            if len(losses) > 2:
                tf.summary.scalar("loss/random", rnd)
            tf.summary.scalar("lr", lr)
            tf.summary.scalar("images_per_second", ips)

    def loop(self) -> int:
        """Runs the steps up to `stop_at` (logging, checkpoints, evaluations); the last step."""
        t, rt = self.config.train, self.config.runtime
        step = int(self.optimizer.iterations.numpy())
        self.start_step, self.start = step, time.perf_counter()
        since = (step, self.start)
        try:
            while step < self.stop_at:
                if step == 0 and self.eager_first:
                    last, num_steps = self.first_step_eagerly(), 1
                else:
                    # Up to steps_per_loop steps in one compiled call, never past an event.
                    num_steps = min(rt.steps_per_loop, self.next_event(step) - step)
                    last = self.step_fn.run(self.iterator, step, num_steps)
                self.unchecked.append(last)
                step += num_steps
                if step == self.next_event(step - 1):
                    self.check_finite(step)
                if step % t.log_every == 0 or step == self.stop_at:
                    self.log_progress(step, last.losses.numpy(), since)
                    since = (step, time.perf_counter())
                if step % t.checkpoint_every == 0 and step < self.stop_at:
                    self.save(step)
                if t.eval_every and step % t.eval_every == 0 and step < self.total_steps:
                    self.log_eval(step, *self.evaluate_children())
            self.check_finite(step)
            latest = self.manager.latest_checkpoint
            if latest is None or not latest.endswith(f"-{step}"):
                self.save(step)
        except PEER_ERRORS as e:
            if self.role.num_workers == 1:
                raise
            raise self._worker_failure(e, step) from e
        return step

    def first_step_eagerly(self) -> LoopOutput:
        """Runs step 0 op by op, logs its losses, then traces the compiled step."""
        started = time.perf_counter()
        out = self.step_fn.run_eagerly(self.iterator, 0)
        losses = out.losses.numpy()
        self.log(
            f"first step, op by op, in {time.perf_counter() - started:.1f} s: loss "
            f"largest {losses[0]:.4f} smallest {losses[1]:.4f}; tracing the compiled step"
        )
        self.log(f"training step: {self.step_fn.trace(self.iterator)}")
        return out

    def _worker_failure(self, e: BaseException, step: int) -> WorkerFailureError:
        role = self.role
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        hints = ("unhealthy", "refused", "failed to connect", "socket closed", "peer", "abort")
        first = next((x for x in lines if any(h in x.lower() for h in hints)), None)
        first = (first or (lines or [type(e).__name__])[0])[:300]
        return WorkerFailureError(
            f"{role.name} of {role.num_workers}: another worker died or became unreachable "
            f"during the steps after step {step} ({type(e).__name__}: {first}). This worker "
            "stopped without saving. Start every worker again with the same command: the "
            "run resumes from the chief's last checkpoint, "
            f"{tf.train.latest_checkpoint(self.ckpt_dir) or 'none (no checkpoint yet)'}"
        )

    # ---- the end ----------------------------------------------------------------------
    def finish(self, step: int) -> TrainResult:
        """Evaluates a finished run; the chief writes its weights, statistics and results."""
        seconds = time.perf_counter() - self.start
        finished = step >= self.total_steps
        accuracies: dict[str, Accuracy] = {}
        on_train: dict[str, Accuracy] = {}
        if finished:
            if self.config.optimizer.ema:  # From here on the model holds the EMA weights.
                self.optimizer.finalize_variable_values(self.net.trainable_variables)
            accuracies, on_train = self.evaluate_children()
        if finished and self.role.is_chief:  # every worker evaluates; the chief writes
            self._write_outputs(step, accuracies, on_train)
        self.writer.flush()
        return TrainResult(step, finished, accuracies, seconds)

    def _write_outputs(
        self, step: int, accuracies: dict[str, Accuracy], on_train: dict[str, Accuracy]
    ) -> None:
        config, d, o, workdir = self.config, self.config.data, self.config.optimizer, self.workdir
        self.net.bn_stats.save(os.path.join(workdir, wd.BN_STATS_FILE))
        weights = os.path.join(workdir, wd.WEIGHTS_FILE)
        self.net.save_weights(weights + ".tmp.weights.h5")
        os.replace(weights + ".tmp.weights.h5", weights)
        archs = {"largest": self.space.largest(), "smallest": self.space.smallest()}
        results = {
            "step": step,
            "command": command_line(sys.argv),
            "eval_split": d.eval_split,
            # Which weights the children were calibrated and evaluated with
            # (those saved in supernet.weights.h5), and on what.
            "weights": "ema" if o.ema else "raw",
            "ema_decay": o.ema_decay if o.ema else None,
            "calibration": {
                "split": d.train_split,
                "images": min(config.train.calibration_images, self.info.num_examples),
                "batch_size": self.calib_batch,
                "seed": config.seed,
            },
            "children": {
                name: {
                    "arch": archs[name].to_dict(),
                    **dataclasses.asdict(acc),
                    **(
                        {
                            "train_top1": on_train[name].top1,
                            "train_examples": on_train[name].num_examples,
                        }
                        if name in on_train
                        else {}
                    ),
                }
                for name, acc in accuracies.items()
            },
        }
        atomic_write_json(os.path.join(workdir, wd.RESULTS_FILE), results)
        with self.writer.as_default(step=step):
            for name, acc in accuracies.items():
                tf.summary.scalar(f"eval/top1_{name}", acc.top1)
            for name, acc in on_train.items():
                tf.summary.scalar(f"eval/train_top1_{name}", acc.top1)
        for name, acc in accuracies.items():
            self.log(
                f"{name} child: top1 {acc.top1:.4f} top5 {acc.top5:.4f} on "
                f"{acc.num_examples} {d.eval_split!r} images ({'EMA' if o.ema else 'raw'} "
                f"weights, BN calibrated on {results['calibration']['images']} training images)"
            )


def _sandwich_options(config: ml_collections.ConfigDict, total_steps: int) -> SandwichOptions:
    """The sandwich step's options from a config (the distillation ramp in steps)."""
    s = config.sandwich
    return SandwichOptions(
        num_random=s.num_random,
        inplace_distillation=s.inplace_distillation,
        distill_weight=s.distill_weight,
        distill_ramp_steps=int(round(s.distill_ramp * total_steps)),
        label_smoothing=s.label_smoothing,
        weight_decay=s.weight_decay,
        regularize_all_children=s.regularize_all_children,
        seed=config.seed,
    )
