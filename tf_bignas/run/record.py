"""The run record (``run.json``): what a workdir holds, and the check before a resume.

A workdir records what it holds: the format version (`RUN_FORMAT`), the
resolved config, the search space as data, the number of classes, the seed
and the global batch size. A resume compares the new run with the record
*before writing anything* (`check_resume`); a difference in any option
outside `RESUMABLE_OPTIONS` is refused with every differing key and both
values, and the workdir is left as it was. The options in
`RESUMABLE_OPTIONS` (logging, evaluation and checkpoint cadence, threads, the
data location...) may change on resume; so may `max_steps`, which is an
argument, not an option. Workdirs from before ``run.json`` are compared with
their ``config.json`` and ``model.json``. Files are read through
`tf.io.gfile`, so this works the same on remote storage (``gs://``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import tensorflow as tf

from tf_bignas.common.files import atomic_write_json
from tf_bignas.run import workdir as wd
from tf_bignas.run.schema import resumable_options
from tf_bignas.run.validation import flatten, is_remote

RUN_FORMAT = 1
# Options that may differ between the start of a run and a resume: they change
# how the run is logged, evaluated, checkpointed or executed, not what it trains.
# Derived from the schema (each option's `resumable`); "chain.*" is the whole
# chain section (what happens after training: search, export, benchmarks).
RESUMABLE_OPTIONS = resumable_options()


class ResumeMismatchError(wd.WorkdirError):
    """The workdir holds a different run than the one asked for."""


# ---- files, local or remote (tf.io.gfile reads both) -----------------------------


def listdir(path: str) -> list[str]:
    """Entry names of a folder (object stores list sub-folders with a trailing '/')."""
    if not tf.io.gfile.isdir(path):
        return []
    return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]


def read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


def write_json(path: str, value: Any) -> None:
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
            return read_json(path)
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
        others = sorted(n for n in listdir(workdir) if not n.startswith(".") and n != wd.LOCK_FILE)
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
        created = read_json(path).get("created")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(path, {**record, "created": created or now, "updated": now})
    write_json(os.path.join(workdir, wd.CONFIG_FILE), config.to_dict())
