"""A trained workdir, opened in one call: the hand-off from training to search,
export and latency.

A training run (`tf_bignas.train.loop.train`) writes into its workdir:

- ``run.json``: the run record (format version, resolved config, space, number
  of classes, seed, global batch), which a resume must match; see
  `tf_bignas.train.integrity`;
- ``run.lock``: while a run writes the workdir, the lock naming it;
- ``config.json``: the resolved config (every option, overrides applied);
- ``model.json``: the supernet's constructor arguments, the space as data
  (resolution overrides included) and the number of classes;
- ``checkpoints/``: resumable training state;
- ``graph_cache/``: the training step's trace (``traces/``) and optimised
  graph, read by a resume (`tf_bignas.train.trace_cache`,
  `tf_bignas.train.graph_cache`; `runtime.graph_cache_dir`); safe to delete;
- at the end, ``supernet.weights.h5`` (final weights; the EMA weights when EMA
  is on), ``bn_stats.npz`` (calibrated BN statistics per child) and
  ``results.json``.

`open_workdir(path)` reads them back as a `Workdir`: the config, the space,
the supernet with its weights and its BN-statistics store, and the results.
Search, export and the benchmarks use nothing else. Workdirs written before
``model.json`` existed still open: the space is rebuilt from ``config.json``
and the number of classes from the data source.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import keras
import ml_collections
import tensorflow as tf

from tf_bignas import data as data_lib
from tf_bignas.common.files import atomic_write_json, sha256_path
from tf_bignas.model import BNStatsStore, Supernet
from tf_bignas.run.config import build_space, default_config, minival_size
from tf_bignas.space import SearchSpace

CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
RESULTS_FILE = "results.json"
WEIGHTS_FILE = "supernet.weights.h5"
BN_STATS_FILE = "bn_stats.npz"
CHECKPOINT_DIR = "checkpoints"
GRAPH_CACHE_DIR = "graph_cache"  # runtime.graph_cache_dir = "workdir"
RUN_FILE = "run.json"  # what the workdir holds (see tf_bignas.run.record)
LOCK_FILE = "run.lock"  # held by the run writing the workdir


class WorkdirError(ValueError):
    """A workdir is missing, incomplete, or does not hold what the caller needs."""


@dataclasses.dataclass
class Workdir:
    """A trained run, ready for search, export and latency.

    Attributes:
        path: The workdir.
        config: The resolved training config.
        space: The run's search space (its resolution overrides applied).
        supernet: The supernet with the run's weights; its `bn_stats` holds the
            calibrated statistics of `bn_stats.npz` (empty if there are none).
        results: `results.json` (empty if training has not finished).
        weights: The file or checkpoint the weights came from.
        weights_digest: Short SHA-256 of the weights file (identifies the
            weights in results files and model cards).
    """

    path: str
    config: ml_collections.ConfigDict
    space: SearchSpace
    supernet: Supernet
    results: dict[str, Any]
    weights: str
    weights_digest: str

    @property
    def num_classes(self) -> int:
        return self.supernet.num_classes

    @property
    def finished(self) -> bool:
        return bool(self.results)

    def bn_stats_path(self) -> str:
        """Where the run's calibrated BN statistics live."""
        return os.path.join(self.path, BN_STATS_FILE)

    def eval_dataset(
        self, split: str, resolution: int, batch_size: int, **kwargs: Any
    ) -> tf.data.Dataset:
        """An evaluation pipeline (centre crop, no augmentation) of the run's data.

        Args:
            split: A split of the run's source ("train", "minival", the eval split...).
            resolution: Image size.
            batch_size: Batch size.
            **kwargs: More `tf_bignas.data.build_eval_dataset` arguments.

        Returns:
            Batches {"image", "label"}.
        """
        d = self.config.data
        return data_lib.build_eval_dataset(
            d.source,
            split,
            resolution,
            batch_size,
            data_dir=d.data_dir or None,
            minival=minival_size(self.config),
            strict=d.strict,
            **kwargs,
        )


def model_spec(net: Supernet) -> dict[str, Any]:
    """What `model.json` holds: the supernet's constructor arguments."""
    return net.get_config()


def write_model_spec(workdir: str, net: Supernet) -> None:
    """Writes `model.json` atomically (the training run calls this)."""
    atomic_write_json(os.path.join(workdir, MODEL_FILE), model_spec(net))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """Reads `config.json` over the defaults (so keys added since still resolve).

    Raises:
        WorkdirError: If the file is missing, unreadable, or has unknown keys.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise WorkdirError(
            f"{workdir!r} is not a training workdir: it has no {CONFIG_FILE}; train one with "
            f"python -m pipelines.train --config=configs/NAME.py --workdir={workdir}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(f"cannot read {path}: {e}") from e
    return config_from_dict(values, path)


def config_from_dict(values: dict[str, Any], origin: str) -> ml_collections.ConfigDict:
    """A stored config (as JSON) over today's defaults, older options mapped on.

    Args:
        values: The stored config tree (not modified).
        origin: Where it came from (for the error message).

    Returns:
        The config.

    Raises:
        WorkdirError: If it has options this version does not know.
    """
    if not isinstance(values, dict):
        raise WorkdirError(f"{origin} does not hold a config (a JSON object)")
    values = json.loads(json.dumps(values))
    config = default_config()
    _upgrade(values)
    try:
        config.update_from_flattened_dict(_flatten(values))
    except (KeyError, AttributeError, TypeError) as e:
        raise WorkdirError(f"{origin} does not match this version's options: {e}") from e
    return config


def _upgrade(values: dict[str, Any]) -> None:
    """Maps the options of runs from older versions onto today's, in place.

    Before calibration had its own image count, it read `train.calibration_batches`
    batches of the training batch size; before the schedule had `staircase` and
    `decay_from`, it decayed smoothly from the end of warmup.
    """
    t = values.get("train")
    if isinstance(t, dict) and "calibration_batches" in t:
        batches = int(t.pop("calibration_batches"))
        t.setdefault("calibration_images", batches * int(t.get("batch_size", 1)))
    s = values.get("schedule")
    if isinstance(s, dict) and "staircase" not in s:
        s.setdefault("staircase", False)
        s.setdefault("decay_from", "warmup_end")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def _restore_checkpoint(net: Supernet, path: str, config: ml_collections.ConfigDict) -> None:
    """Restores a training checkpoint's weights into `net`: the EMA ones if the run keeps them.

    A finished run saves the EMA weights when `optimizer.ema` is on; a checkpoint
    holds the raw weights and, in the optimizer, their averages. Those are what
    an unfinished run would deliver, so they are the ones restored.
    """
    if not config.optimizer.get("ema", False):
        tf.train.Checkpoint(model=net).restore(path).expect_partial()
        return
    from tf_bignas.run.optimizers import RMSpropTF  # noqa: PLC0415 - only for EMA runs

    # As in training: a schedule (so no learning-rate variable shifts the slots).
    constant = keras.optimizers.schedules.ExponentialDecay(0.0, decay_steps=1, decay_rate=1.0)
    optimizer = RMSpropTF(
        learning_rate=constant, use_ema=True, ema_momentum=config.optimizer.ema_decay
    )
    optimizer.build(net.trainable_variables)
    status = tf.train.Checkpoint(model=net, optimizer=optimizer).restore(path)
    status.expect_partial()
    optimizer.finalize_variable_values(net.trainable_variables)


def open_workdir(path: str, *, allow_unfinished: bool = False) -> Workdir:
    """Opens a trained workdir.

    Args:
        path: The workdir.
        allow_unfinished: Take the weights of the newest checkpoint when the run
            has not finished (no `supernet.weights.h5`): the EMA weights when the
            run keeps them, as a finished run would save; else that is an error.

    Returns:
        The Workdir.

    Raises:
        WorkdirError: If the workdir is missing, holds no finished training (and
            `allow_unfinished` is False), or its files do not match each other.
    """
    if not path or not os.path.isdir(path):
        raise WorkdirError(f"workdir {path!r} does not exist or is not a folder")
    config = read_config(path)
    spec_path = os.path.join(path, MODEL_FILE)
    if os.path.isfile(spec_path):
        with open(spec_path, encoding="utf-8") as f:
            net = Supernet.from_config(json.load(f))
    else:  # A workdir from before model.json: rebuild what the run built.
        from tf_bignas.run.config import build_supernet

        d = config.data
        info = data_lib.dataset_info(
            d.source, d.train_split, data_dir=d.data_dir or None, minival=minival_size(config)
        )
        net = build_supernet(config, build_space(config), info.num_classes)
    weights = os.path.join(path, WEIGHTS_FILE)
    results_path = os.path.join(path, RESULTS_FILE)
    results: dict[str, Any] = {}
    if os.path.isfile(weights):
        net.load_weights(weights)
        digest = sha256_path(weights)
        if os.path.isfile(results_path):
            with open(results_path, encoding="utf-8") as f:
                results = json.load(f)
    else:
        latest = tf.train.latest_checkpoint(os.path.join(path, CHECKPOINT_DIR))
        if not allow_unfinished or latest is None:
            raise WorkdirError(
                f"workdir {path!r} holds no finished training (no {WEIGHTS_FILE}); finish it "
                f"with the same pipelines.train command (it resumes), then try again"
            )
        _restore_checkpoint(net, latest, config)
        weights, digest = latest, sha256_path(latest + ".index")
    stats_path = os.path.join(path, BN_STATS_FILE)
    if os.path.isfile(stats_path):
        net.bn_stats = BNStatsStore.load(stats_path)
    return Workdir(path, config, net.space, net, results, weights, digest)
