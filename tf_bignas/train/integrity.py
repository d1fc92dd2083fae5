"""What keeps a training run's checkpoints whole: recovery and the state guard.

The run record (`tf_bignas.run.record`) and the workdir lock
(`tf_bignas.run.lock`) are the workdir's own; this module holds what only
training needs.

**Checkpoint recovery** (`check_checkpoint_files`, `restore_newest_intact`).
Checkpoint files without the state file (``checkpoints/checkpoint``) are
refused: starting again would overwrite them. When the newest checkpoint
cannot be read (truncated, missing shard, bad CRC) or holds non-finite or
unbounded values, it is named and the run falls back to the newest intact
one; the unreadable files are moved to ``checkpoints/damaged/`` (never
deleted, never overwritten when the run reaches their step again) and the
state file is rewritten to list the intact ones.

**The state guard** (`unhealthy_state`). A checkpoint is written only from a
step whose weights are finite and bounded (``train.max_abs_weight``) and
whose optimizer state is finite. The optimizer's accumulators hold running
averages of the gradients and of their squares, so once any gradient since
the start was NaN or infinite they stay non-finite: a finite optimizer state
means every gradient so far was finite. With the losses of every step since
the last check examined before each checkpoint (`loop.train`), "the last good
checkpoint" is one a run can resume from.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tf_bignas.run import workdir as wd
from tf_bignas.run.record import listdir as _listdir

DAMAGED_DIR = "damaged"
_CKPT_FILE = re.compile(r"^(ckpt-(\d+))\.(index|data-\d+-of-\d+)$")


# ---- checkpoints ------------------------------------------------------------------


def checkpoint_files(ckpt_dir: str) -> dict[str, list[str]]:
    """Checkpoint files in a folder, by prefix ("ckpt-N" -> [file names])."""
    out: dict[str, list[str]] = {}
    for name in _listdir(ckpt_dir):
        m = _CKPT_FILE.match(name)
        if m:
            out.setdefault(m.group(1), []).append(name)
    return out


def _number(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[-1])


def _state(ckpt_dir: str) -> Any:
    try:
        return tf.train.get_checkpoint_state(ckpt_dir)
    except (ValueError, tf.errors.OpError):
        return None


def has_checkpoint(ckpt_dir: str) -> bool:
    """Whether the checkpoint folder's state file lists a checkpoint (a run to resume).

    Args:
        ckpt_dir: The workdir's checkpoint folder (it may not exist).

    Returns:
        True if `restore_newest_intact` has a checkpoint to try.
    """
    state = _state(ckpt_dir)
    return state is not None and bool(state.model_checkpoint_path)


def check_checkpoint_files(ckpt_dir: str) -> None:
    """Refuses checkpoint files that the run could not resume from; reads only.

    Args:
        ckpt_dir: The workdir's checkpoint folder.

    Raises:
        WorkdirError: If checkpoint files exist but the state file that lists
            them is missing or unreadable (starting again would overwrite them).
    """
    files = checkpoint_files(ckpt_dir)
    if not files:
        return
    state_path = os.path.join(ckpt_dir, "checkpoint")
    state = _state(ckpt_dir)
    if state is not None and state.model_checkpoint_path:
        return
    newest = max(files, key=_number)
    problem = "is missing" if not tf.io.gfile.exists(state_path) else "cannot be read"
    raise wd.WorkdirError(
        f"{ckpt_dir} holds checkpoint files ({', '.join(sorted(files, key=_number))}) but its "
        f"state file {state_path} {problem}; refusing to start again from step 0, which "
        f"would overwrite them. To resume from the newest, write {state_path} with the line "
        f'model_checkpoint_path: "{newest}" ; or use a new --workdir'
    )


def _move_aside(ckpt_dir: str, prefix: str) -> str:
    """Moves a checkpoint's files to checkpoints/damaged/ (never deletes); returns where."""
    target = os.path.join(ckpt_dir, DAMAGED_DIR)
    tf.io.gfile.makedirs(target)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for name in checkpoint_files(ckpt_dir).get(prefix, []):
        dest = os.path.join(target, f"{name}.{stamp}")
        while tf.io.gfile.exists(dest):
            dest += "_"
        tf.io.gfile.rename(os.path.join(ckpt_dir, name), dest)
    return target


def restore_newest_intact(
    checkpoint: tf.train.Checkpoint,
    ckpt_dir: str,
    verify: Callable[[], str | None],
    log: Callable[[str], None] = print,
) -> str | None:
    """Restores the newest checkpoint that reads back whole and healthy.

    Args:
        checkpoint: The run's `tf.train.Checkpoint`.
        ckpt_dir: The checkpoint folder (with its state file).
        verify: Called after a restore; returns a problem (e.g. non-finite
            weights) or None.
        log: Where the fallback is reported.

    Returns:
        The checkpoint restored, or None if there is none.

    Raises:
        WorkdirError: If every listed checkpoint is damaged (nothing is moved
            or deleted then).
    """
    state = _state(ckpt_dir)
    if state is None or not state.model_checkpoint_path:
        return None
    listed = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path not in listed:
        listed.append(state.model_checkpoint_path)
    candidates = sorted(set(listed), key=lambda p: _number(os.path.basename(p)), reverse=True)
    damaged: list[tuple[str, str]] = []
    for path in candidates:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
            problem = verify()
        except (tf.errors.OpError, ValueError, IndexError, AssertionError, KeyError) as e:
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if problem is None:
            break
        damaged.append((path, problem))
        log(f"checkpoint {path} is damaged ({problem}); trying the previous one")
    else:
        details = "; ".join(f"{p}: {why}" for p, why in damaged)
        raise wd.WorkdirError(
            f"no checkpoint in {ckpt_dir} can be restored ({details}); nothing was changed. "
            "Restore the files from a backup, or use a new --workdir"
        )
    if damaged:
        for bad, _ in damaged:
            where = _move_aside(ckpt_dir, os.path.basename(bad))
        intact = [p for p in listed if p not in {b for b, _ in damaged}]
        tf.compat.v1.train.update_checkpoint_state(
            ckpt_dir, path, all_model_checkpoint_paths=intact
        )
        log(
            f"resuming from {path}, the newest intact checkpoint; the damaged "
            f"{', '.join(os.path.basename(b) for b, _ in damaged)} moved to {where}"
        )
    return path


# ---- the state guard --------------------------------------------------------------


def unhealthy_state(
    weights: Sequence[Any],
    model_state: Sequence[Any],
    optimizer_state: Sequence[Any],
    max_abs_weight: float,
) -> str | None:
    """Why the training state must not be checkpointed, or None if it is healthy.

    Args:
        weights: The trainable variables: must be finite and within
            `max_abs_weight`.
        model_state: The model's other variables (BN statistics): must be finite.
        optimizer_state: The optimizer's variables (gradient accumulators,
            momentum, EMA weights): must be finite.
        max_abs_weight: The bound on the absolute value of any weight.

    Returns:
        None, or e.g. "weights are not bounded: max |w| = 4.6e+30 in
        'classifier/kernel' (train.max_abs_weight = 1e+06)".
    """
    worst_name, worst = "", 0.0
    for v in weights:
        value = np.asarray(v)
        if value.dtype.kind != "f" or not value.size:
            continue
        if not np.all(np.isfinite(value)):
            return f"weights are not finite: {_name(v)!r} holds NaN or infinity"
        peak = float(np.max(np.abs(value)))
        if peak > worst:
            worst_name, worst = _name(v), peak
    if worst > max_abs_weight:
        return (
            f"weights are not bounded: max |w| = {worst:.3g} in {worst_name!r} "
            f"(train.max_abs_weight = {max_abs_weight:g})"
        )
    for variables, what in (
        (model_state, ""),
        (optimizer_state, " (in the optimizer state: a gradient was not finite)"),
    ):
        for v in variables:
            value = np.asarray(v)
            if value.dtype.kind == "f" and value.size and not np.all(np.isfinite(value)):
                return f"the training state is not finite: {_name(v)!r} holds NaN or infinity{what}"
    return None


def _name(variable: Any) -> str:
    return str(getattr(variable, "path", None) or getattr(variable, "name", "?"))
