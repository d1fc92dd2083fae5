"""Int8 in the loop: the accuracy of a child as the phone runs it, int8 TFLite.

Phones run int8 models, and post-training quantisation does not cost every
child the same accuracy. `Int8Scorer` turns a BN-calibrated child into the
file the export would write for it (`tf_bignas.export`: the stock Keras child
with the input normalisation folded in, full-integer int8 with uint8 input
and output, calibrated on representative images from the training data) and
measures its top-1 / top-5 with ai-edge-litert, one image per invocation as
deployed. A search ranks candidates by it instead of by float accuracy
(the search program's `--rank=int8`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json
from tf_bignas.common.text import md_code
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization
from tf_bignas.export import models as export_models
from tf_bignas.export import tflite as export_tflite
from tf_bignas.model import Supernet
from tf_bignas.model.bn_stats import BNStats, merge_bn_stats
from tf_bignas.model.slicing import extract_child
from tf_bignas.run.evaluator import Accuracy, ChildEvaluator
from tf_bignas.run.lock import locked_for
from tf_bignas.run.selection import SELECTION_FILE, SelectedChild, read_selection, write_selection
from tf_bignas.run.workdir import Workdir
from tf_bignas.space import ArchConfig

RANK_FLOAT = "float"
RANK_INT8 = "int8"
RANKINGS = (RANK_FLOAT, RANK_INT8)


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def raw_pixels(images: np.ndarray, normalized: bool, norm: Normalization) -> np.ndarray:
    """Images as raw RGB 0-255 float32 (what the exported files take).

    Args:
        images: A batch, raw pixels (uint8 or float) or normalised floats.
        normalized: Whether `images` are normalised.
        norm: The normalisation they went through.

    Returns:
        float32 raw pixels.
    """
    if normalized:
        import tensorflow as tf

        return np.asarray(norm.invert(tf.constant(images, tf.float32)), np.float32)
    return np.asarray(images, np.float32)


class Int8Scorer:
    """Int8 TFLite accuracy of children of one supernet.

    Args:
        supernet: The trained supernet.
        representative_images: Images from the calibration batches used to
            calibrate the int8 quantisation (the first ones, the same for every child).
        normalization: The input normalisation the supernet was trained with.
        threads: Interpreter threads for the evaluation.
        normalized_batches: Whether the batches given hold normalised images
            (True) or raw pixels (False, as the search's scorer reads them).
    """

    name = "int8_top1"

    def __init__(
        self,
        supernet: Supernet,
        representative_images: int = 64,
        normalization: Normalization = DEFAULT_NORMALIZATION,
        threads: int = 1,
        normalized_batches: bool = False,
    ) -> None:
        if representative_images < 1:
            raise ValueError(f"representative_images must be >= 1, got {representative_images}")
        self.supernet, self.norm, self.threads = supernet, normalization, threads
        self.representative_images = representative_images
        self.normalized_batches = normalized_batches

    def describe(self) -> dict[str, Any]:
        """What makes two int8 scores comparable."""
        return {
            "rank": RANK_INT8,
            "int8_representative_images": self.representative_images,
            "int8_io": "uint8",
        }

    def _images(
        self, batches: Iterable[Mapping[str, Any]]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in batches:
            images = raw_pixels(_numpy(batch["image"]), self.normalized_batches, self.norm)
            yield images, _numpy(batch["label"]).astype(np.int64)

    def convert(
        self,
        arch: ArchConfig,
        bn_stats: BNStats,
        calibration_batches: Iterable[Mapping[str, Any]],
    ) -> bytes:
        """The child's int8 TFLite file (as the export writes it).

        Args:
            arch: The child.
            bn_stats: Its calibrated BN statistics.
            calibration_batches: Batches {"image", "label"} from the training
                data; the first `representative_images` images calibrate the
                quantisation.

        Returns:
            The flatbuffer.
        """
        representative = []
        for images, _ in self._images(calibration_batches):
            representative += [img[None] for img in images]
            if len(representative) >= self.representative_images:
                break
        representative = representative[: self.representative_images]
        child = extract_child(self.supernet, arch, bn_stats=bn_stats)
        model = export_models.deployable_model(child, self.norm, "float32")
        work = tempfile.mkdtemp(prefix="int8_child_")
        try:
            path = os.path.join(work, "saved_model")
            export_models.write_saved_model(model, path, batch_size=1)
            return export_tflite.convert_saved_model(
                path, "int8", representative_images=lambda: iter(representative), int8_io="uint8"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def accuracy(
        self, content: bytes, batches: Iterable[Mapping[str, Any]], max_batches: int | None = None
    ) -> Accuracy:
        """Top-1 / top-5 of a TFLite file on labelled batches (one image per invocation).

        Args:
            content: The flatbuffer.
            batches: Batches {"image", "label"}.
            max_batches: Stop after this many batches (None: all).

        Returns:
            The Accuracy.
        """
        runner = export_tflite.TFLiteRunner(content, num_threads=self.threads)
        top1 = top5 = n = 0
        for i, (images, labels) in enumerate(self._images(batches)):
            if max_batches is not None and i >= max_batches:
                break
            logits = runner.logits(images)
            order = np.argsort(-logits, axis=-1)
            top1 += int(np.sum(order[:, 0] == labels))
            top5 += int(np.sum(np.any(order[:, :5] == labels[:, None], axis=-1)))
            n += len(labels)
        if n == 0:
            raise ValueError("no images to score the int8 model on")
        return Accuracy(top1=top1 / n, top5=top5 / n, num_examples=n)

    def __call__(
        self,
        arch: ArchConfig,
        bn_stats: BNStats,
        calibration_batches: Iterable[Mapping[str, Any]],
        eval_batches: Iterable[Mapping[str, Any]],
        max_batches: int | None = None,
    ) -> Accuracy:
        """Converts a calibrated child to int8 and scores it.

        Args:
            arch: The child.
            bn_stats: Its calibrated BN statistics.
            calibration_batches: Training-data batches (quantisation calibration).
            eval_batches: The batches to score on.
            max_batches: At most this many eval batches.

        Returns:
            Its int8 Accuracy.
        """
        content = self.convert(arch, bn_stats, calibration_batches)
        return self.accuracy(content, eval_batches, max_batches)


class SearchData(Protocol):
    """What int8 ranking needs from the search's scorer (`tf_bignas.search.scoring.ChildScorer`).

    Attributes:
        split: The selection split's name.
        test_split: The test split's name.
        batch_size: Selection and test batch size.
        test_batches: Test batches to read (None: all).
    """

    split: str
    test_split: str
    batch_size: int
    test_batches: int | None

    def calibration_data(self, res: int) -> Iterable[Mapping[str, Any]]:
        """The calibration batches (raw pixels) at a resolution."""

    def selection_data(self, res: int) -> Iterable[Mapping[str, Any]]:
        """The selection batches (raw pixels) at a resolution."""

    def test(self, arch: ArchConfig) -> Accuracy:
        """Calibrates a chosen child into the run's store, returns its float test accuracy."""


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn by a crash
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def record_cost(record: Mapping[str, Any], kind: str) -> float | None:
    """A search record's cost in a budget kind's unit (None when it was not costed)."""
    if kind == "mflops":
        return record["macs"] / 1e6
    if kind == "params_m":
        return record["params"] / 1e6
    value = record.get("latency_ms")
    return None if value is None else float(value)


@dataclasses.dataclass
class Int8Ranking:
    """What `rank_by_int8` decided.

    Attributes:
        path: The `int8_ranking.json` written.
        budgets: Per budget: the float-ranked and the int8-ranked choice and the candidates.
        changed: Budgets whose int8-ranked choice differs from the float-ranked one.
    """

    path: str
    budgets: list[dict[str, Any]]
    changed: list[str]


class _Int8Cache:
    """int8 scores of children, one JSON line each (a rerun reuses them)."""

    def __init__(self, path: str, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, identity
        self.values = {r["key"]: r for r in _read_jsonl(path) if r.get("identity") == identity}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.values.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        record = {"key": key, "identity": self.identity, **value}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.values[key] = record


class _Int8Ranker:
    """The int8 scores and test accuracies of one ranking (each child converted once)."""

    def __init__(
        self,
        wd: Workdir,
        folder: str,
        data: SearchData,
        representative_images: int,
        threads: int,
        log: Callable[[str], None],
    ) -> None:
        self.wd, self.data, self.log = wd, data, log
        self.scorer = Int8Scorer(wd.supernet, representative_images, threads=threads)
        self.evaluator = ChildEvaluator(wd.supernet)
        identity = {"weights_digest": wd.weights_digest, "split": data.split,
                    **self.scorer.describe()}  # fmt: skip
        self.cache = _Int8Cache(os.path.join(folder, "int8_scores.jsonl"), identity)
        self.contents: dict[str, bytes] = {}  # int8 files converted in this call, by arch key
        self.tests: dict[str, dict[str, float]] = {}

    def selection(self, arch: ArchConfig) -> dict[str, Any]:
        """The child's int8 score on the selection split (cached in `int8_scores.jsonl`)."""
        hit = self.cache.get(arch.key)
        if hit is None:
            t0, res, data = time.perf_counter(), arch.resolution, self.data
            stats = self.evaluator.calibrate(arch, iter(data.calibration_data(res)), store=False)
            content = self.scorer.convert(arch, stats, data.calibration_data(res))
            self.contents[arch.key] = content
            acc = self.scorer.accuracy(content, data.selection_data(res))
            self.cache.put(arch.key, {"arch": arch.to_dict(), "int8_top1": acc.top1,
                                      "int8_top5": acc.top5, "num_examples": acc.num_examples,
                                      "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
            hit = self.cache.get(arch.key)
            self.log(
                f"  int8 {arch.to_paper_notation()}: {100 * acc.top1:.2f}% ({hit['seconds']} s)"
            )
        return hit

    def tested(self, arch: ArchConfig) -> dict[str, float]:
        """The child's float and int8 test accuracy (calibrated into the run's store)."""
        if arch.key not in self.tests:
            data, supernet = self.data, self.wd.supernet
            float_acc = data.test(arch)  # calibrates into the run's store, as for ranking
            content = self.contents.get(arch.key) or self.scorer.convert(
                arch, supernet.bn_stats.get(arch), data.calibration_data(arch.resolution)
            )
            test = self.wd.eval_dataset(
                data.test_split, arch.resolution, data.batch_size, normalize=False
            )
            int8_acc = self.scorer.accuracy(content, test, data.test_batches)
            self.tests[arch.key] = {"test_top1": float_acc.top1, "test_top5": float_acc.top5,
                                    "int8_test_top1": int8_acc.top1,
                                    "int8_test_top5": int8_acc.top5}  # fmt: skip
        return self.tests[arch.key]

    def rank(
        self, entry: SelectedChild, records: Mapping[str, dict[str, Any]], candidates: int
    ) -> tuple[dict[str, Any], SelectedChild]:
        """One budget: its ranking row, and its int8-ranked entry of `selection.json`."""
        kind, limit, float_arch = entry.budget.kind, entry.budget.limit, entry.arch
        fitting = []
        for key, r in records.items():
            c = record_cost(r, kind)
            if c is None:
                raise ValueError(
                    f"the search records have no {kind} cost; search with a latency model"
                )
            if c <= limit or key == float_arch.key:
                fitting.append(r)
        fitting.sort(key=lambda r: -r["metric"])
        chosen = fitting[: candidates or len(fitting)]
        if float_arch.key not in {ArchConfig.from_dict(r["arch"]).key for r in chosen}:
            chosen.append(records[float_arch.key])
        self.log(f"{entry.budget.name}: {len(chosen)} of {len(fitting)} fitting children in int8")
        scored = []
        for r in chosen:
            arch = ArchConfig.from_dict(r["arch"])
            s = self.selection(arch)
            scored.append({"arch": arch.to_dict(), "paper_notation": arch.to_paper_notation(),
                           "method": r["method"], "cost": record_cost(r, kind),
                           "macs": r["macs"], "params": r["params"],
                           "latency_ms": r.get("latency_ms"), "metric": r["metric"],
                           "int8_metric": s["int8_top1"]})  # fmt: skip
        best = max(scored, key=lambda c: (c["int8_metric"], c["metric"], -c["cost"]))
        best_arch = ArchConfig.from_dict(best["arch"])
        float_choice = next(c for c in scored if c["arch"] == float_arch.to_dict())
        float_choice = {**float_choice, **self.tested(float_arch)}
        int8_choice = {**best, **self.tested(best_arch)}
        changed = best_arch.key != float_arch.key
        row = {"budget": entry.budget.name, "float_choice": float_choice,
               "int8_choice": int8_choice, "changed": changed, "candidates": scored}  # fmt: skip
        ranked = dataclasses.replace(
            entry, arch=best_arch, macs=best["macs"], params=best["params"],
            latency_ms=best["latency_ms"], metric=best["metric"],
            test_top1=int8_choice["test_top1"], test_top5=int8_choice["test_top5"],
            method=best["method"], rank=RANK_INT8, int8_metric=best["int8_metric"],
            int8_test_top1=int8_choice["int8_test_top1"],
            float_ranked_choice=float_choice["paper_notation"],
        )  # fmt: skip
        return row, ranked


def rank_by_int8(
    wd: Workdir,
    folder: str,
    data: SearchData,
    candidates: int = 5,
    representative_images: int = 64,
    threads: int = 1,
    log: Callable[[str], None] = print,
) -> Int8Ranking:
    """Re-ranks a finished search's candidates by int8 TFLite accuracy.

    For each budget of `folder/selection.json`, the `candidates` children that
    fit it with the best float selection accuracy (the float-ranked choice
    always among them) are BN-calibrated, converted to int8 TFLite
    (`Int8Scorer`) and scored on the same selection images; the one with the
    best int8 accuracy becomes the budget's choice. The int8-ranked and the
    float-ranked children are both scored on the test split, float and int8.
    Writes `int8_ranking.json` (both choices and every candidate, float and
    int8), rewrites `selection.json` with the int8-ranked choices (marked
    ``"rank": "int8"``, with their int8 metrics; "metric" stays the float
    selection top-1), merges the chosen children's BN statistics into the
    run's store (`merge_bn_stats`), and adds an "Int8 ranking" section to
    `report.md`. Scores are kept in `int8_scores.jsonl`, so a rerun is quick.
    The whole ranking holds the workdir's lock.

    Args:
        wd: The trained run (`open_workdir`).
        folder: The search folder.
        data: The search's scorer (calibration, selection and test data).
        candidates: Children per budget to score in int8 (0: every fitting one).
        representative_images: Images calibrating the quantisation.
        threads: Interpreter threads.
        log: Progress lines.

    Returns:
        The ranking.

    Raises:
        SelectionError: If the folder's `selection.json` is missing or invalid
            (the message names it).
        ValueError: If the selection was made with other weights, or a
            latency budget's records have no latency.
        WorkdirBusyError: If another process holds the workdir's lock.
    """
    with locked_for(wd.path, log=log):
        selection_path = os.path.join(folder, SELECTION_FILE)
        selection = read_selection(selection_path, wd.space)
        if selection.weights_digest != wd.weights_digest:
            raise ValueError(
                f"{selection_path} was made with weights {selection.weights_digest}, not the "
                f"run's {wd.weights_digest}; search again first"
            )
        records: dict[str, dict[str, Any]] = {}
        for r in _read_jsonl(os.path.join(folder, "evaluations.jsonl")):
            if "arch" in r and "metric" in r:
                records.setdefault(ArchConfig.from_dict(r["arch"]).key, r)
        ranker = _Int8Ranker(wd, folder, data, representative_images, threads, log)
        ranked = [ranker.rank(entry, records, candidates) for entry in selection.budgets]
        rows = [row for row, _ in ranked]
        archs = {ArchConfig.from_dict(row[c]["arch"]) for row in rows
                 for c in ("float_choice", "int8_choice")}  # fmt: skip
        merge_bn_stats(wd.bn_stats_path(), {a: wd.supernet.bn_stats.get(a) for a in archs})
        path = os.path.join(folder, "int8_ranking.json")
        atomic_write_json(path, {"format": 1, "weights_digest": wd.weights_digest,
                                 "selection_split": data.split, "test_split": data.test_split,
                                 "candidates_per_budget": candidates,
                                 **ranker.scorer.describe(), "budgets": rows})  # fmt: skip
        write_selection(
            selection_path,
            dataclasses.replace(selection, rank=RANK_INT8, budgets=tuple(e for _, e in ranked)),
        )
        report = os.path.join(folder, "report.md")
        text = ""
        if os.path.isfile(report):
            with open(report, encoding="utf-8") as f:
                text = f.read().split(REPORT_SECTION)[0].rstrip() + "\n\n"
        section = int8_markdown(rows, data.split, data.test_split)
        atomic_write_bytes(report, (text + section).encode())
    return Int8Ranking(path, rows, [row["budget"] for row in rows if row["changed"]])


REPORT_SECTION = "## Int8 ranking"


def summary_lines(ranking: Int8Ranking) -> list[str]:
    """One line per budget: the float- and the int8-ranked child, with their accuracies."""
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = []
    for row in ranking.budgets:
        f, q = row["float_choice"], row["int8_choice"]
        lines.append(
            f"{row['budget']}: float-ranked {f['paper_notation']} (float {pct(f['metric'])}, int8 "
            f"{pct(f['int8_metric'])}); int8-ranked {q['paper_notation']} (float "
            f"{pct(q['metric'])}, int8 {pct(q['int8_metric'])})"
            + ("" if row["changed"] else " [same child]")
        )
    lines.append(f"wrote {ranking.path}; selection.json holds the int8-ranked children")
    return lines


def int8_markdown(rows: list[dict[str, Any]], split: str, test_split: str) -> str:
    """The report section comparing the float-ranked and the int8-ranked choices."""
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        REPORT_SECTION,
        "",
        f"Candidates re-ranked by the accuracy of their int8 TFLite file (full-integer "
        f"post-training quantisation) on {md_code(split)}; float and int8 top-1 (%) on "
        f"{md_code(split)} and on {md_code(test_split)}.",
        "",
        "| budget | ranking | child | float sel. | int8 sel. | float test | int8 test |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, c in (("float", row["float_choice"]), ("int8", row["int8_choice"])):
            lines.append(
                f"| {row['budget']} | {name} | {md_code(c['paper_notation'])} | {pct(c['metric'])} | "
                f"{pct(c['int8_metric'])} | {pct(c['test_top1'])} | {pct(c['int8_test_top1'])} |"
            )
    changed = [r["budget"] for r in rows if r["changed"]]
    lines += [
        "",
        f"The int8 ranking chose another child for: {', '.join(changed) or 'no budget'}. "
        "`selection.json` holds the int8-ranked children (the tables above, and "
        "`pareto.png`, show the float ranking's).",
        "",
    ]
    return "\n".join(lines)
