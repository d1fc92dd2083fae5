"""Scoring a child of a trained run: BN calibration, then top-1 on the selection split.

`ChildScorer` owns one `ChildEvaluator` for the whole search, so children are
new tensor values of the same compiled functions: a new child never retraces
(a few traces per resolution in all: calibration, evaluation, a last partial
batch). Calibration uses the run's calibration sample (a fixed random sample
of the training split, `tf_bignas.data.build_calibration_dataset`, the same
images for every child); its images and the selection images travel as uint8
pixels (normalised on the device) and are read once per resolution and kept
in memory when they fit `cache_mb`.

Selection split ("the test split is never used to choose"):

- "minival": the images the training run held out of its training split (a
  fixed random sample of `selection_examples` of them if it has more);
- "train": a fixed random sample of `selection_examples` images of the
  training split, drawn with another seed than the calibration sample (the
  paper ranks on training data);
- "auto": "minival" when the run held one out, else "train".

The test split (the run's `data.eval_split`) is only read by `test`, for
children already chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
import tensorflow as tf

from tf_bignas import data as data_lib
from tf_bignas.model import BNStatsStore
from tf_bignas.run.config import minival_size
from tf_bignas.run.evaluator import Accuracy, ChildEvaluator
from tf_bignas.run.workdir import Workdir
from tf_bignas.space import ArchConfig

MINIVAL = "minival"
TRAIN = "train"


def selection_split(wd: Workdir, requested: str) -> str:
    """ "minival" or "train": where children are ranked.

    Args:
        wd: The trained run.
        requested: "auto", "minival" or "train".

    Returns:
        The split kind.

    Raises:
        ValueError: If "minival" is asked for but the run held none out.
    """
    has_minival = bool(minival_size(wd.config))
    if requested == "auto":
        return MINIVAL if has_minival else TRAIN
    if requested == MINIVAL and not has_minival:
        raise ValueError(
            f"selection_split='minival', but the run in {wd.path!r} held no minival out of its "
            f"training split (config.data.minival = 0); use --config.selection_split=train (a "
            f"fixed subset of the training split) or retrain with --config.data.minival=N"
        )
    if requested not in (MINIVAL, TRAIN):
        raise ValueError(f"selection_split {requested!r} is unknown; known: auto, minival, train")
    return requested


Batches = list[Mapping[str, tf.Tensor]]


class ChildScorer:
    """Calibrates and scores children of one trained run.

    Args:
        wd: The trained run (`tf_bignas.run.workdir.open_workdir`).
        config: The resolved search config (batch size and calibration
            sample filled in from the run's training config).
        evaluator: A `ChildEvaluator` of `wd.supernet` to reuse (its compiled
            functions, so a second search in one process traces nothing new);
            a new one if None.

    Raises:
        ValueError: If the selection split is unavailable or empty.
    """

    def __init__(
        self,
        wd: Workdir,
        config: ml_collections.ConfigDict,
        evaluator: ChildEvaluator | None = None,
    ) -> None:
        self.wd, self.net = wd, wd.supernet
        if evaluator is not None and evaluator.net is not self.net:
            raise ValueError("the ChildEvaluator given belongs to another supernet")
        self.evaluator = evaluator or ChildEvaluator(self.net)
        self.batch_size = int(config.batch_size)
        self.calibration_images = int(config.calibration_images)
        self.calibration_batch_size = int(config.calibration_batch_size)
        self.seed = int(wd.config.seed)
        self.test_batches = int(config.test_batches) or None
        self.kind = selection_split(wd, config.selection_split)
        d = wd.config.data
        self.train_split, self.test_split = d.train_split, d.eval_split
        self.split = MINIVAL if self.kind == MINIVAL else d.train_split
        self._data_args = {
            "data_dir": d.data_dir or None,
            "minival": minival_size(wd.config),
            "strict": d.strict,
        }
        available = data_lib.dataset_info(d.source, self.split, **self._data_args).num_examples
        wanted = int(config.selection_examples) or available
        self.num_selection = min(wanted, available)
        # A sample only when it is smaller than the split (else the whole split, in order).
        self._selection_sample = self.num_selection if self.num_selection < available else None
        if self.num_selection <= 0:
            raise ValueError(f"the selection split {self.split!r} has no images")
        self._cache_left = int(config.cache_mb) * 1024**2
        self._cached: dict[tuple[str, int], Batches | tf.data.Dataset] = {}

    def describe(self) -> dict[str, Any]:
        """What makes two scores comparable: split, images, batches, calibration sample."""
        return {
            "selection_split": self.split,
            "selection_images": self.num_selection,
            "batch_size": self.batch_size,
            "calibration_images": self.calibration_images,
            "calibration_batch_size": self.calibration_batch_size,
            "calibration_seed": self.seed,
        }

    # ---- data ------------------------------------------------------------------
    def _keep(self, name: str, res: int, images: int, build: Any) -> Iterable[Any]:
        """The batches of (name, res): in memory when they fit what is left of cache_mb."""
        key = (name, res)
        if key not in self._cached:
            size = images * res * res * 3  # uint8 pixels
            if size <= self._cache_left:
                self._cache_left -= size
                self._cached[key] = [dict(b) for b in build(False)]
            else:
                self._cached[key] = build("auto")
        return self._cached[key]

    def calibration_data(self, res: int) -> Iterable[Any]:
        """The calibration batches at a resolution (the run's calibration sample)."""
        d = self.wd.config.data

        def build(cache: Any) -> tf.data.Dataset:
            return data_lib.build_calibration_dataset(
                d.source,
                self.train_split,
                res,
                self.calibration_images,
                self.calibration_batch_size,
                seed=self.seed,
                cache=cache,
                normalize=False,
                **self._data_args,
            )

        return self._keep("calibration", res, self.calibration_images, build)

    def selection_data(self, res: int) -> Iterable[Any]:
        """The selection batches at a resolution."""
        d = self.wd.config.data

        def build(cache: Any) -> tf.data.Dataset:
            return data_lib.build_eval_dataset(
                d.source,
                self.split,
                res,
                self.batch_size,
                cache=cache,
                normalize=False,
                sample=self._selection_sample,
                sample_seed=self.seed + 1,
                **self._data_args,
            )

        return self._keep("selection", res, self.num_selection, build)

    # ---- scoring ----------------------------------------------------------------
    @property
    def tracing_count(self) -> int:
        """Traces of the compiled calibration and evaluation functions so far."""
        return self.evaluator.tracing_count

    def score(self, arch: ArchConfig) -> Accuracy:
        """Calibrates a child and returns its accuracy on the selection split.

        Its statistics go to a scratch store, not the run's (the search keeps
        only the chosen children's, see `test`).

        Args:
            arch: The child.

        Returns:
            Its Accuracy on the selection split.
        """
        res = arch.resolution
        stats = self.evaluator.calibrate(arch, iter(self.calibration_data(res)), store=False)
        kept = self.net.bn_stats
        self.net.bn_stats = BNStatsStore()
        try:
            self.net.bn_stats.put(arch, stats)  # evaluate loads them into the BN layers (once)
            return self.evaluator.evaluate(arch, iter(self.selection_data(res)))
        finally:
            self.net.bn_stats = kept

    def test(self, arch: ArchConfig) -> Accuracy:
        """Calibrates a chosen child into the run's store and scores it on the test split.

        Calibration reads the same batches as `score`, so the stored
        statistics are the ones the child was ranked with.

        Args:
            arch: The child.

        Returns:
            Its Accuracy on the test split.
        """
        res = arch.resolution
        self.evaluator.calibrate(arch, iter(self.calibration_data(res)))
        cache = "auto" if self.test_batches is None else False  # no partial cache reads
        ds = self.wd.eval_dataset(
            self.test_split, res, self.batch_size, normalize=False, cache=cache
        )
        return self.evaluator.evaluate(arch, iter(ds), self.test_batches)
