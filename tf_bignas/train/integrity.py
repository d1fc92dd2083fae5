"""What keeps a workdir whole: the run record, the lock, checkpoint recovery, the state guard.

A training run must never corrupt, mix or silently restart the run a workdir
holds. Four mechanisms see to it; `tf_bignas.train.loop.train` uses them in
this order (the first two before it writes anything but the lock file):

**The run record** (``run.json``). A workdir records what it holds: the
format version (`RUN_FORMAT`), the resolved config, the search space as data,
the number of classes, the seed and the global batch size. A resume compares
the new run with the record *before writing anything* (`check_resume`); a
difference in any option outside `RESUMABLE_OPTIONS` is refused with every
differing key and both values, and the workdir is left as it was. The options
in `RESUMABLE_OPTIONS` (logging, evaluation and checkpoint cadence, threads,
the data location...) may change on resume; so may `max_steps`, which is an
argument, not an option. Workdirs from before ``run.json`` are compared with
their ``config.json`` and ``model.json``.

**The lock** (``run.lock``, `WorkdirLock`). One run at a time per workdir. The
lock file names its holder (host, pid, start time, command) and is removed
when the run ends, however it ends short of SIGKILL. On a local file system it
is held with ``flock`` (exclusive, non-blocking), which the kernel releases
when the process dies: a lock file left by a killed run on the same host is
recognised as stale (its process is gone) and taken over, saying so. A
lock naming another host is never taken over automatically, since its process
cannot be checked from here: the error says to delete the file once that run is
known to be gone.

On remote storage (``gs://...``) there is no atomic create-if-absent and no
``flock``: the lock is written if none exists and read back, which catches a
second run started after the first one's lock is visible, but two runs started
within the same second or so can both pass. There, the user must ensure that
one job at a time writes to a workdir (one training job per workdir, and no
restart before the previous job has stopped); a stale lock left by a killed
job on another host must be deleted by hand (``gsutil rm gs://.../run.lock``).
The record and checkpoint checks read through `tf.io.gfile`, so they work the
same on remote storage.

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

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from tf_bignas.common.files import atomic_write_json
from tf_bignas.train import workdir as wd
from tf_bignas.train.validation import flatten, is_remote

RUN_FORMAT = 1
# Options that may differ between the start of a run and a resume: they change
# how the run is logged, evaluated, checkpointed or executed, not what it trains.
RESUMABLE_OPTIONS = (
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_every",
    "train.eval_batches",
    "train.eval_train_images",
    "train.calibration_images",
    "train.calibration_batch_size",
    "train.calibration_batches",
    "train.max_abs_weight",
    "runtime.steps_per_loop",
    "data.data_dir",
    "data.eval_split",
    "data.strict",
    "runtime.tpu",
    "runtime.threads",
    "runtime.lean_grappler",
    "runtime.deterministic",
    "runtime.jit_compile",
    "chain.*",  # what happens after training (search, export, benchmarks)
)
DAMAGED_DIR = "damaged"
_CKPT_FILE = re.compile(r"^(ckpt-(\d+))\.(index|data-\d+-of-\d+)$")


class WorkdirBusyError(wd.WorkdirError):
    """Another run holds the workdir's lock."""


class ResumeMismatchError(wd.WorkdirError):
    """The workdir holds a different run than the one asked for."""


# ---- files, local or remote (tf.io.gfile reads both) -----------------------------


def _listdir(path: str) -> list[str]:
    """Entry names of a folder (object stores list sub-folders with a trailing '/')."""
    if not tf.io.gfile.isdir(path):
        return []
    return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]


def _read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


def _write_json(path: str, value: Any) -> None:
    """Atomically: a temporary file and a rename locally; one object write remotely."""
    if is_remote(path):
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    else:
        atomic_write_json(path, value)


# ---- the run record -------------------------------------------------------------


def is_resumable(option: str) -> bool:
    """Whether an option ("section.key") may change when a run resumes."""
    return any(
        option == name or (name.endswith(".*") and option.startswith(name[:-1]))
        for name in RESUMABLE_OPTIONS
    )


def _plain(value: Any) -> Any:
    """JSON-normalised (tuples become lists), so records compare like their files."""
    return json.loads(json.dumps(value))


def run_record(
    config: ml_collections.ConfigDict, space_dict: Mapping[str, Any], num_classes: int
) -> dict[str, Any]:
    """What `run.json` holds for a run.

    Args:
        config: The resolved config.
        space_dict: The run's search space as data (`SearchSpace.to_dict`).
        num_classes: Classes of the training data.

    Returns:
        The record (JSON-able).
    """
    return {
        "format": RUN_FORMAT,
        "config": _plain(config.to_dict()),
        "space": _plain(dict(space_dict)),
        "num_classes": int(num_classes),
        "seed": int(config.seed),
        "global_batch_size": int(config.train.batch_size),
        "resumable_options": list(RESUMABLE_OPTIONS),
    }


def _diff(held: Any, now: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    """Appends (path, held, now) for every leaf where two JSON values differ."""
    if isinstance(held, dict) and isinstance(now, dict):
        for key in sorted(set(held) | set(now), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in held or key not in now:
                out.append((sub, held.get(key, "(absent)"), now.get(key, "(absent)")))
            else:
                _diff(held[key], now[key], sub, out)
    elif isinstance(held, list) and isinstance(now, list) and len(held) == len(now):
        for i, (a, b) in enumerate(zip(held, now)):
            _diff(a, b, f"{path}[{i}]", out)
    elif held != now:
        out.append((path, held, now))


def _held_record(workdir: str) -> dict[str, Any] | None:
    """The workdir's record: run.json, else one rebuilt from an older run's files.

    Returns:
        The record, or None if the workdir holds no run.

    Raises:
        WorkdirError: If a record file cannot be read.
    """

    def load(name: str) -> Any:
        path = os.path.join(workdir, name)
        try:
            return _read_json(path)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise wd.WorkdirError(
                f"cannot read {path} ({e}); the workdir's record of its run is damaged: "
                "restore the file or use a new workdir"
            ) from e

    if tf.io.gfile.exists(os.path.join(workdir, wd.RUN_FILE)):
        record = load(wd.RUN_FILE)
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise wd.WorkdirError(
                f"{os.path.join(workdir, wd.RUN_FILE)} is not a run record (no 'config' object)"
            )
        return record
    if not tf.io.gfile.exists(os.path.join(workdir, wd.CONFIG_FILE)):
        return None
    record = {"format": 0, "config": load(wd.CONFIG_FILE)}  # before run.json
    if tf.io.gfile.exists(os.path.join(workdir, wd.MODEL_FILE)):
        spec = load(wd.MODEL_FILE)
        if isinstance(spec, dict) and "space" in spec:
            record["space"] = spec["space"]
            record["num_classes"] = spec.get("num_classes")
    return record


def check_resume(workdir: str, record: Mapping[str, Any]) -> bool:
    """Compares a new run with what the workdir holds; reads only.

    Args:
        workdir: The workdir (may not exist yet).
        record: The new run's `run_record`.

    Returns:
        True if the workdir holds this run (a resume), False if it holds none.

    Raises:
        ResumeMismatchError: If the workdir holds another run, listing every
            differing key with both values; or if it is a non-empty folder that
            holds no run, or a record from a newer version.
        WorkdirError: If its record cannot be read.
    """
    if not tf.io.gfile.isdir(workdir):
        return False
    held = _held_record(workdir)
    if held is None:
        others = sorted(n for n in _listdir(workdir) if not n.startswith(".") and n != wd.LOCK_FILE)
        if others:
            raise ResumeMismatchError(
                f"workdir {workdir!r} is not empty ({', '.join(others[:5])}"
                f"{', ...' if len(others) > 5 else ''}) but holds no training run (no "
                f"{wd.RUN_FILE} or {wd.CONFIG_FILE}); refusing to write into it: give a new or "
                "empty folder"
            )
        return False
    fmt = held.get("format")
    if not isinstance(fmt, int) or fmt > RUN_FORMAT:
        raise ResumeMismatchError(
            f"{os.path.join(workdir, wd.RUN_FILE)} has format {fmt!r}, written by a newer "
            f"version of tf_bignas (this one reads formats up to {RUN_FORMAT}); use that version"
        )
    held_config = _plain(flatten(wd.config_from_dict(held["config"], workdir).to_dict()))
    now_config = _plain(flatten(record["config"]))
    diffs: list[tuple[str, Any, Any]] = []
    for key in sorted(set(held_config) | set(now_config)):
        if is_resumable(key):
            continue
        a, b = held_config.get(key, "(absent)"), now_config.get(key, "(absent)")
        if a != b:
            diffs.append((key, a, b))
    if "space" in held:
        _diff(held["space"], record["space"], "space", diffs)
    if held.get("num_classes") is not None and held["num_classes"] != record["num_classes"]:
        diffs.append(
            ("num_classes (of the training data)", held["num_classes"], record["num_classes"])
        )
    if diffs:
        listed = "; ".join(f"{k}: {a!r} in the workdir, {b!r} now" for k, a, b in diffs)
        raise ResumeMismatchError(
            f"workdir {workdir!r} holds a different run; refusing to resume it (nothing was "
            f"written). Differences: {listed}. Use a new --workdir, or the workdir's values "
            f"(its {wd.RUN_FILE if held['format'] else wd.CONFIG_FILE}). Options that may "
            f"change on resume: {', '.join(RESUMABLE_OPTIONS)}, and --max_steps"
        )
    return True


def write_record(
    workdir: str, record: Mapping[str, Any], config: ml_collections.ConfigDict
) -> None:
    """Writes `run.json` and `config.json` (atomically), keeping the first start time.

    Args:
        workdir: The workdir.
        record: The run's `run_record`.
        config: The resolved config (for `config.json`).
    """
    path = os.path.join(workdir, wd.RUN_FILE)
    created = None
    with contextlib.suppress(OSError, ValueError, AttributeError, tf.errors.OpError):
        created = _read_json(path).get("created")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write_json(path, {**record, "created": created or now, "updated": now})
    _write_json(os.path.join(workdir, wd.CONFIG_FILE), config.to_dict())


# ---- the lock ---------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _describe(holder: Mapping[str, Any]) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('started')}"
        + (f" ({holder['command']})" if holder.get("command") else "")
    )


class WorkdirLock:
    """One run at a time per workdir: `run.lock`, naming its holder.

    Use as a context manager; see the module docstring for local and remote
    behaviour.

    Args:
        workdir: The workdir (created if missing when the lock is taken).
        log: Where a note about a stale lock goes.
    """

    def __init__(self, workdir: str, log: Callable[[str], None] = print) -> None:
        self.workdir = workdir
        self.path = os.path.join(workdir, wd.LOCK_FILE)
        self.log = log
        self._fd: int | None = None
        self._held = False
        self._created_dir = False
        self._token = uuid.uuid4().hex

    def _holder(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "token": self._token,
        }

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            WorkdirBusyError: If another live run holds it (or a run on another
                host whose state cannot be checked from here).
        """
        if is_remote(self.workdir):
            self._acquire_remote()
        else:
            self._acquire_local()
        self._held = True

    def _busy(self, holder: Mapping[str, Any], why: str) -> WorkdirBusyError:
        return WorkdirBusyError(
            f"workdir {self.workdir!r} is in use by another run: {_describe(holder)}{why}. "
            f"Wait for it to end, or stop it; if it is gone, delete {self.path}"
        )

    def _read(self) -> dict[str, Any]:
        try:
            with tf.io.gfile.GFile(self.path, "r") as f:
                value = json.loads(f.read() or "{}")
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError, tf.errors.OpError):
            return {}

    def _acquire_local(self) -> None:
        if not os.path.isdir(self.workdir):
            try:
                os.makedirs(self.workdir)
            except OSError as e:
                raise wd.WorkdirError(
                    f"cannot create workdir {self.workdir!r}: {e.strerror or e}"
                ) from e
            self._created_dir = True
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise wd.WorkdirError(
                    f"workdir {self.workdir!r} is not writable: cannot create {self.path} "
                    f"({e.strerror or e})"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise self._busy(self._read(), " (it holds the lock file)") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # The previous holder removed the file as we opened it: retry.
                os.close(fd)
                continue
            with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
                text = f.read()
            previous: dict[str, Any] = {}
            with contextlib.suppress(ValueError):
                previous = json.loads(text) if text.strip() else {}
            if previous:
                host = socket.gethostname()
                if previous.get("host") not in (None, host):
                    os.close(fd)
                    raise self._busy(
                        previous,
                        f"; that host's process cannot be checked from {host!r}",
                    )
                state = (
                    "is gone"
                    if not _pid_alive(int(previous.get("pid", -1)))
                    else "no longer holds it (the pid now belongs to another process)"
                )
                self.log(
                    f"workdir lock {self.path} was stale ({_describe(previous)}; that process "
                    f"{state}): taking it over"
                )
            data = json.dumps(self._holder(), indent=2).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd = fd
            return
        raise WorkdirBusyError(f"could not take the lock {self.path}: it keeps changing")

    def _acquire_remote(self) -> None:
        # No atomic create-if-absent on object stores: write if absent, read back.
        tf.io.gfile.makedirs(self.workdir)
        if tf.io.gfile.exists(self.path):
            previous = self._read()
            same_host = previous.get("host") == socket.gethostname()
            if not same_host or _pid_alive(int(previous.get("pid", -1))):
                raise self._busy(
                    previous,
                    "" if same_host else "; on remote storage a lock cannot be checked",
                )
            self.log(
                f"workdir lock {self.path} was stale ({_describe(previous)}; that process is "
                "gone): taking it over"
            )
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(json.dumps(self._holder(), indent=2))
        if self._read().get("token") != self._token:
            raise self._busy(self._read(), " (it wrote the lock at the same time)")

    def release(self) -> None:
        """Removes the lock file (if still ours) and, if the lock created the
        workdir and nothing else was written, the empty workdir too."""
        if not self._held:
            return
        self._held = False
        if is_remote(self.workdir):
            if self._read().get("token") == self._token:
                with contextlib.suppress(tf.errors.OpError):
                    tf.io.gfile.remove(self.path)
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding flock: no one can take it in between
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self.workdir)  # only if empty


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


@contextlib.contextmanager
def locked(workdir: str, log: Callable[[str], None] = print) -> Iterator[WorkdirLock]:
    """`with locked(workdir): ...` holds the workdir's lock for the block."""
    lock = WorkdirLock(workdir, log)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
