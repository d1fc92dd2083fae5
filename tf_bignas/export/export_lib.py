"""Export children of a trained workdir: Keras, SavedModel, TFLite; verified.

`export_children(workdir, children, out_dir, options)` writes, for each child,
into `out_dir/<child name>/`:

- ``child.keras``: the sliced child with the normalisation folded in;
- ``saved_model/``: the same, with a "serving_default" signature
  (``image`` -> ``{"logits"}``), any batch size;
- ``model_fp32.tflite``, ``model_fp16.tflite``, ``model_int8.tflite``:
  converted from the SavedModel (`tflite.convert_saved_model`), built-in ops
  only; int8 is calibrated on a random sample of the training split at the
  child's resolution (the evaluation transform, the sample BN calibration
  draws);
- ``built_reference_fp32.tflite``: the same arch built directly
  (`build_child_model`; the child's weights set layer by layer), converted
  the same way: its op list must equal the sliced file's (no slicing op
  left), and the host benchmark times both;
- ``verification.json``: every file checked on real images of the evaluation
  split: the fp32 file against the Keras child (max abs logit difference), the
  fp16 and int8 files against fp32 (top-1 agreement), and the top-1/top-5 of
  each;
- ``model_card.json``, ``model_card.md``: written last.

Every file is written to a temp name and renamed (folders too); the card is
removed before anything in the folder changes and written at the end, so a
folder without a card is unfinished. A rerun reuses each file whose digest
and options match its entry in `verification.json` and redoes the rest.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_bignas import data as data_lib
from tf_bignas.common.files import atomic_write_bytes, atomic_write_json
from tf_bignas.data import transforms
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization
from tf_bignas.export import models
from tf_bignas.export import tflite as tflite_lib
from tf_bignas.export.children import ExportChild
from tf_bignas.export.errors import ExportError, VerificationError
from tf_bignas.model import BNStatsStore
from tf_bignas.model import cost as cost_lib
from tf_bignas.model.slicing import build_child_model, extract_child
from tf_bignas.run import card as card_lib
from tf_bignas.run.config import minival_size
from tf_bignas.run.evaluator import ChildEvaluator
from tf_bignas.run.workdir import Workdir
from tf_bignas.space import ArchConfig

EXPORT_FORMAT = 1
KERAS_FILE = "child.keras"
SAVED_MODEL_DIR = "saved_model"
VERIFICATION_FILE = "verification.json"
BUILT_REFERENCE_FILE = "built_reference_fp32.tflite"
RAW_PIXELS = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def tflite_file(quantization: str) -> str:
    """`model_<quantization>.tflite`."""
    return f"model_{quantization}.tflite"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """What verification requires of each file.

    Attributes:
        fp32_max_abs_diff: Largest allowed |logit difference| of the fp32 file
            (and of the reloaded `.keras` and SavedModel) vs the Keras child.
        fp16_min_agreement: Smallest allowed top-1 agreement fp16 vs fp32.
        int8_min_agreement: Smallest allowed top-1 agreement int8 vs fp32.
    """

    fp32_max_abs_diff: float = 1e-4
    fp16_min_agreement: float = 0.99
    int8_min_agreement: float = 0.90


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        quantizations: TFLite files to write (`tflite.QUANTIZATIONS`); fp32 is
            always written, as the reference the others are verified against.
        int8_io: Input/output type of the int8 file: "uint8", "int8" or "float".
        fold_normalization: Put the input normalisation into the models (they
            take raw RGB 0-255); else they take normalised float images.
        input_dtype: Input of the Keras, SavedModel, fp32 and fp16 models:
            "float32" (raw pixel values as floats) or "uint8".
        representative_examples: Training images that calibrate int8.
        verify_split: Split verified on (default: the run's evaluation split).
        verify_examples: Images verified on (None: the whole split).
        verify_batch: Batch size of the verification pipeline.
        check_built: Convert the arch built directly and require the same ops.
        calibrate: Calibrate a child without stored BN statistics (on the
            training split) instead of failing.
        thresholds: What verification requires.
        threads: Interpreter threads for verification.
    """

    quantizations: tuple[str, ...] = tflite_lib.QUANTIZATIONS
    int8_io: str = "uint8"
    fold_normalization: bool = True
    input_dtype: str = "float32"
    representative_examples: int = 200
    verify_split: str | None = None
    verify_examples: int | None = None
    verify_batch: int = 64
    check_built: bool = True
    calibrate: bool = False
    thresholds: Thresholds = Thresholds()
    threads: int = 1

    def resolved(self) -> ExportOptions:
        """Checked options, fp32 included.

        Raises:
            ExportError: On an unknown quantisation, int8 type or input dtype,
                or a non-positive count.
        """
        quantizations = tflite_lib.parse_quantizations(("fp32", *self.quantizations))
        tflite_lib.check_int8_io(self.int8_io)
        if self.input_dtype not in models.INPUT_DTYPES:
            raise ExportError(
                f"unknown input dtype {self.input_dtype!r}; allowed: {list(models.INPUT_DTYPES)}"
            )
        if self.input_dtype == "uint8" and not self.fold_normalization:
            raise ExportError("input dtype uint8 needs the normalisation folded in")
        for name in ("representative_examples", "verify_batch", "threads"):
            if getattr(self, name) < 1:
                raise ExportError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.verify_examples is not None and self.verify_examples < 1:
            raise ExportError(f"verify_examples must be at least 1, got {self.verify_examples}")
        return dataclasses.replace(self, quantizations=quantizations)


@dataclasses.dataclass
class ExportResult:
    """What one child's export did.

    Attributes:
        child: The child.
        folder: Its export folder.
        written: Files written this time.
        reused: Files kept from an earlier export (digest and options match).
        verification: The content of `verification.json`.
        card: The model card.
    """

    child: ExportChild
    folder: str
    written: list[str]
    reused: list[str]
    verification: dict[str, Any]
    card: dict[str, Any]


# ---- checks before anything is written -----------------------------------------------
def check_output_folder(out_dir: str) -> None:
    """Creates `out_dir` if needed and checks that files can be written in it.

    Raises:
        ExportError: If it cannot be created or written.
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=models.TEMP_PREFIX + "probe-", dir=out_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ExportError(
            f"output folder {out_dir!r} is not writable ({e.strerror or e}); choose a folder "
            "you can write with --out"
        ) from e


def uncalibrated_error(workdir: Workdir, child: ExportChild) -> ExportError:
    """The error for a child without calibrated BN statistics."""
    return ExportError(
        f"child {child.name!r} ({child.arch.to_paper_notation()}, from {child.origin}) has no "
        f"calibrated BN statistics in {workdir.bn_stats_path()} "
        f"({len(workdir.supernet.bn_stats)} children are calibrated there): export it with "
        "--calibrate to calibrate it on the training split first, or choose it with the "
        "search (which stores the statistics of every child it chooses)"
    )


def _training_sample(
    workdir: Workdir, resolution: int, num_images: int, batch_size: int
) -> tf.data.Dataset:
    """A fixed random sample of the training split (uint8 pixels, evaluation transform).

    The same sample the training run calibrates BN statistics on (same seed),
    cut to `num_images`.
    """
    c = workdir.config
    d = c.data
    return data_lib.build_calibration_dataset(
        d.source,
        d.train_split,
        resolution,
        num_images,
        batch_size,
        seed=int(c.seed),
        data_dir=d.data_dir or None,
        minival=minival_size(c),
        strict=d.strict,
        normalize=False,
    )


def calibrate_child(workdir: Workdir, arch: ArchConfig, log: Callable[[str], None]) -> None:
    """Calibrates a child's BN statistics on the training split and stores them.

    Uses the run's calibration recipe (`train.calibration_images` random
    training images in batches of `train.calibration_batch_size`, the run's
    seed); merges the statistics into `bn_stats.npz` (read again first,
    written atomically).
    """
    t = workdir.config.train
    log(
        f"calibrating the BN statistics of {arch.to_paper_notation()} on "
        f"{t.calibration_images} training images"
    )
    dataset = _training_sample(
        workdir, arch.resolution, int(t.calibration_images), int(t.calibration_batch_size)
    )
    stats = ChildEvaluator(workdir.supernet).calibrate(arch, iter(dataset))
    path = workdir.bn_stats_path()
    store = BNStatsStore.load(path) if os.path.isfile(path) else BNStatsStore()
    store.put(arch, stats)
    store.save(path)


# ---- helpers -----------------------------------------------------------------------
def _bn_digest(workdir: Workdir, arch: ArchConfig) -> str:
    h = hashlib.sha256()
    stats = workdir.supernet.bn_stats.get(arch)
    for name in sorted(stats):
        h.update(name.encode())
        for a in stats[name]:
            h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


def _git_commit() -> tuple[str | None, bool | None]:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(dirty)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _clean_temp(folder: str) -> None:
    for name in os.listdir(folder):
        if name.startswith(models.TEMP_PREFIX):
            models.remove_path(os.path.join(folder, name))


def _topk(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return np.any(top == labels[:, None], axis=-1)


class _Tally:
    """Top-1/top-5 of one model, and how it compares with a reference."""

    def __init__(self) -> None:
        self.n = 0
        self.top1 = 0
        self.top5 = 0
        self.agree = 0
        self.max_abs_diff = 0.0

    def add(self, logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> None:
        self.n += len(labels)
        self.top1 += int(_topk(logits, labels, 1).sum())
        self.top5 += int(_topk(logits, labels, 5).sum())
        if reference is not None:
            self.agree += int((logits.argmax(-1) == reference.argmax(-1)).sum())
            self.max_abs_diff = max(self.max_abs_diff, float(np.abs(logits - reference).max()))

    def accuracy(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {"top1": self.top1 / n, "top5": self.top5 / n, "num_examples": self.n}


class _ChildExport:
    """One child's export: the steps, sharing the built models and data."""

    def __init__(
        self,
        workdir: Workdir,
        child: ExportChild,
        folder: str,
        options: ExportOptions,
        log: Callable[[str], None],
    ) -> None:
        self.wd = workdir
        self.child = child
        self.arch = child.arch
        self.folder = folder
        self.options = options
        self.log = log
        self.norm = DEFAULT_NORMALIZATION if options.fold_normalization else None
        self.split = options.verify_split or workdir.config.data.eval_split
        self.written: list[str] = []
        self.reused: list[str] = []
        self._child_model: keras.Model | None = None
        self._deployable: keras.Model | None = None
        self._eval: tf.data.Dataset | None = None
        self._float_saved_model: str | None = None
        self._first: tuple[np.ndarray, np.ndarray] | None = None
        self.fingerprint = {
            "export_format": EXPORT_FORMAT,
            "arch": self.arch.to_dict(),
            "weights_digest": workdir.weights_digest,
            "bn_stats_digest": _bn_digest(workdir, self.arch),
            "num_classes": workdir.num_classes,
            "normalization": self.norm.to_dict() if self.norm else None,
            "input_dtype": options.input_dtype,
            "verify": {"split": self.split, "examples": options.verify_examples},
            "thresholds": dataclasses.asdict(options.thresholds),
        }
        self.path = os.path.join(folder, VERIFICATION_FILE)
        previous = _read_json(self.path)
        same = previous.get("fingerprint") == self.fingerprint
        self.previous_files = previous.get("files", {}) if same else {}
        # Latencies of an unfinished export's card, kept while the card is gone.
        self.carried_latency = previous.get("carried_latency") or {}
        self.verification: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "child": child.name,
            "paper_notation": self.arch.to_paper_notation(),
            "fingerprint": self.fingerprint,
            "split": self.split,
            "thresholds": dataclasses.asdict(options.thresholds),
            "files": {},
            "complete": False,
            "passed": False,
        }

    # ---- artifacts and reuse ----------------------------------------------------------
    def artifacts(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """{key: (file name, options that change the file)} of everything to write."""
        o = self.options
        out: dict[str, tuple[str, dict[str, Any]]] = {
            "keras": (KERAS_FILE, {}),
            "saved_model": (SAVED_MODEL_DIR, {}),
        }
        for q in o.quantizations:
            extra: dict[str, Any] = {}
            if q == "int8":
                extra = {"int8_io": o.int8_io, "representative_examples": o.representative_examples}
            out[q] = (tflite_file(q), extra)
        if o.check_built:
            out["built_reference"] = (BUILT_REFERENCE_FILE, {"weights": "child"})
        return out

    def reusable(self, key: str) -> bool:
        name, extra = self.artifacts()[key]
        entry = self.previous_files.get(key)
        path = os.path.join(self.folder, name)
        return (
            bool(entry)
            and entry.get("passed") is True
            and entry.get("options") == extra
            and os.path.exists(path)
            and entry.get("sha256") == models.digest_path(path)
        )

    def record(self, key: str, entry: dict[str, Any], written: bool) -> None:
        name, extra = self.artifacts()[key]
        path = os.path.join(self.folder, name)
        entry = {
            "file": name,
            "bytes": models.path_bytes(path),
            "sha256": models.digest_path(path),
            "options": extra,
            **entry,
        }
        self.verification["files"][key] = entry
        (self.written if written else self.reused).append(name)
        atomic_write_json(self.path, self.verification)

    # ---- models and data -----------------------------------------------------------------
    @property
    def child_model(self) -> keras.Model:
        if self._child_model is None:
            self._child_model = extract_child(self.wd.supernet, self.arch)
        return self._child_model

    @property
    def deployable(self) -> keras.Model:
        if self._deployable is None:
            self._deployable = models.deployable_model(
                self.child_model, self.norm, self.options.input_dtype, name=self.child.name
            )
        return self._deployable

    def eval_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(raw float pixels [B, R, R, 3], labels) of the verification split."""
        if self._eval is None:
            # Cached in memory when small, for the passes of later formats; not
            # when only part of the split is read (a partial pass drops a cache).
            self._eval = self.wd.eval_dataset(
                self.split, self.arch.resolution, self.options.verify_batch,
                normalization=RAW_PIXELS,
                cache="auto" if self.options.verify_examples is None else False,
            )  # fmt: skip
        left = self.options.verify_examples
        for batch in self._eval:
            images, labels = batch["image"].numpy(), batch["label"].numpy()
            if left is not None:
                images, labels = images[:left], labels[:left]
                left -= len(labels)
            yield images, labels
            if left is not None and left <= 0:
                return

    def model_input(self, raw: np.ndarray) -> np.ndarray:
        """Raw pixels -> what the exported models take (raw, or normalised)."""
        return raw if self.norm is not None else DEFAULT_NORMALIZATION.apply_numpy(raw)

    def keras_logits(self, raw: np.ndarray) -> np.ndarray:
        x = DEFAULT_NORMALIZATION.apply_numpy(raw)
        return np.asarray(self.child_model(x, training=False))

    def first_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The first verification batch (checks of the reloaded Keras file and SavedModel)."""
        if self._first is None:
            dataset = self.wd.eval_dataset(
                self.split, self.arch.resolution, self.options.verify_batch,
                normalization=RAW_PIXELS, cache=False,
            )  # fmt: skip
            batch = next(iter(dataset))
            self._first = (batch["image"].numpy(), batch["label"].numpy())
        return self._first

    def representative_images(self) -> Iterator[np.ndarray]:
        """Random training images [1, R, R, 3] on the models' input scale (for int8)."""
        n = self.options.representative_examples
        for batch in _training_sample(self.wd, self.arch.resolution, n, min(n, 64)):
            for image in batch["image"].numpy().astype(np.float32):
                yield self.model_input(image[None])

    def float_saved_model(self, work: str) -> str:
        """A SavedModel with float input to convert from."""
        if self.options.input_dtype == "float32":
            return os.path.join(self.folder, SAVED_MODEL_DIR)
        if self._float_saved_model is None:
            path = os.path.join(work, "float_saved_model")
            model = models.deployable_model(self.child_model, self.norm, "float32")
            models.write_saved_model(model, path)
            self._float_saved_model = path
        return self._float_saved_model

    # ---- steps ----------------------------------------------------------------------------
    def keras_file(self) -> None:
        if self.reusable("keras"):
            self.record("keras", self.previous_files["keras"] | {}, written=False)
            return
        path = os.path.join(self.folder, KERAS_FILE)
        models.write_keras(self.deployable, path)
        raw, _ = self.first_batch()
        x = raw.astype(self.options.input_dtype)
        loaded = keras.models.load_model(path)
        diff = float(np.abs(np.asarray(loaded(x)) - self.keras_logits(raw)).max())
        self.check_diff("child.keras (reloaded)", diff)
        self.record("keras", {"max_abs_diff_vs_keras_child": diff, "passed": True}, True)

    def saved_model(self) -> None:
        if self.reusable("saved_model"):
            self.record("saved_model", self.previous_files["saved_model"] | {}, written=False)
            return
        path = os.path.join(self.folder, SAVED_MODEL_DIR)
        models.write_saved_model(self.deployable, path)
        raw, _ = self.first_batch()
        serve = tf.saved_model.load(path).signatures[models.SIGNATURE_KEY]
        x = tf.constant(raw.astype(self.options.input_dtype))
        out = serve(**{models.INPUT_NAME: x})[models.OUTPUT_NAME].numpy()
        diff = float(np.abs(out - self.keras_logits(raw)).max())
        self.check_diff("saved_model (reloaded)", diff)
        entry = {
            "signature": models.SIGNATURE_KEY,
            "max_abs_diff_vs_keras_child": diff,
            "passed": True,
        }
        self.record("saved_model", entry, True)

    def check_diff(self, what: str, diff: float) -> None:
        limit = self.options.thresholds.fp32_max_abs_diff
        if not diff <= limit:
            raise VerificationError(
                f"{self.child.name}: {what} differs from the Keras child by {diff:.3g} "
                f"(max abs logit difference), more than the allowed {limit:g}"
            )

    def tflite_model(self, quantization: str, work: str) -> None:
        if self.reusable(quantization):
            self.record(quantization, self.previous_files[quantization] | {}, written=False)
            return
        self.log(f"{self.child.name}: converting {quantization}")
        content = tflite_lib.convert_saved_model(
            self.float_saved_model(work)
            if quantization == "int8"
            else os.path.join(self.folder, SAVED_MODEL_DIR),
            quantization,
            representative_images=self.representative_images,
            int8_io=self.options.int8_io,
        )
        runner = tflite_lib.TFLiteRunner(content, num_threads=self.options.threads)
        fp32 = None
        if quantization != "fp32":
            fp32 = tflite_lib.TFLiteRunner(
                path=os.path.join(self.folder, tflite_file("fp32")),
                num_threads=self.options.threads,
            )
        tally, keras_tally = _Tally(), _Tally()
        for raw, labels in self.eval_batches():
            x = self.model_input(raw)
            logits = runner.logits(x)
            if fp32 is None:
                reference = self.keras_logits(raw)
                keras_tally.add(reference, labels, None)
            else:
                reference = fp32.logits(x)
            tally.add(logits, labels, reference)
        t = self.options.thresholds
        entry: dict[str, Any] = {**tally.accuracy(), "split": self.split}
        if fp32 is None:
            entry["max_abs_diff_vs_keras_child"] = tally.max_abs_diff
            entry["keras_child"] = keras_tally.accuracy()
            passed = tally.max_abs_diff <= t.fp32_max_abs_diff
            needs = f"max abs logit difference vs the Keras child <= {t.fp32_max_abs_diff:g}"
            got = f"{tally.max_abs_diff:.3g}"
        else:
            agreement = tally.agree / max(tally.n, 1)
            entry["top1_agreement_vs_fp32"] = agreement
            entry["max_abs_diff_vs_fp32"] = tally.max_abs_diff
            limit = t.fp16_min_agreement if quantization == "fp16" else t.int8_min_agreement
            passed = agreement >= limit
            needs = f"top-1 agreement with fp32 >= {limit:g}"
            got = f"{agreement:.4f}"
        entry["ops"] = tflite_lib.op_list(content)
        entry["contract"] = runner.contract()
        entry["passed"] = bool(passed)
        if not passed:
            self.verification["files"][quantization] = entry
            atomic_write_json(self.path, self.verification)
            raise VerificationError(
                f"{self.child.name}: the {quantization} TFLite model fails verification on "
                f"{tally.n} '{self.split}' images: needs {needs}, got {got}; it was not written "
                f"(details in {self.path})"
            )
        atomic_write_bytes(os.path.join(self.folder, tflite_file(quantization)), content)
        self.log(
            f"{self.child.name}: {tflite_file(quantization)} {len(content)} bytes, top-1 "
            f"{entry['top1']:.4f} on {tally.n} images, verified ({needs}: {got})"
        )
        self.record(quantization, entry, True)

    def built_reference(self, work: str) -> None:
        sliced_ops = self.verification["files"]["fp32"]["ops"]
        if self.reusable("built_reference"):
            entry = self.previous_files["built_reference"]
            if entry.get("ops") == sliced_ops:
                self.record("built_reference", entry | {}, written=False)
                return
        self.log(f"{self.child.name}: converting the arch built directly (op-list check)")
        net = self.wd.supernet
        built = build_child_model(
            self.wd.space, self.arch, self.wd.num_classes,
            stage_shortcuts=net.stage_shortcuts, dropout_rate=0.0, bn_epsilon=net.bn_epsilon,
        )  # fmt: skip
        # The child's own weights: the files then differ only in how the model
        # was made. (Fresh weights fold into other constants - zero biases share
        # one buffer - and make a file of another size and speed.)
        for layer in built.layers:
            if layer.weights:
                layer.set_weights(self.child_model.get_layer(layer.name).get_weights())
        model = models.deployable_model(built, self.norm, self.options.input_dtype)
        path = os.path.join(work, "built_saved_model")
        models.write_saved_model(model, path)
        content = tflite_lib.convert_saved_model(path, "fp32")
        ops = tflite_lib.op_list(content)
        if ops != sliced_ops:
            extra = sorted(set(sliced_ops) - set(ops))
            raise VerificationError(
                f"{self.child.name}: the sliced child's fp32 TFLite file has {len(sliced_ops)} "
                f"ops, the same arch built directly has {len(ops)} (op kinds only in the sliced "
                f"one: {extra}); slicing left ops in the model"
            )
        atomic_write_bytes(os.path.join(self.folder, BUILT_REFERENCE_FILE), content)
        self.record("built_reference", {"ops": ops, "same_ops": True, "passed": True}, True)

    # ---- card ------------------------------------------------------------------------------
    def card(self, old_latency: dict[str, Any]) -> dict[str, Any]:
        wd, arch, files = self.wd, self.arch, self.verification["files"]
        c = cost_lib.cost(wd.space, arch, wd.num_classes, wd.supernet.stage_shortcuts)
        dtype = self.options.input_dtype
        per_file: dict[str, Any] = {}
        for key in ("keras", "saved_model"):
            shape = [-1, arch.resolution, arch.resolution, 3]
            per_file[key] = {
                "input": {"name": models.INPUT_NAME, "dtype": dtype, "shape": shape},
                "output": {
                    "name": models.OUTPUT_NAME,
                    "dtype": "float32",
                    "shape": [-1, wd.num_classes],
                },
            }
        for q in self.options.quantizations:
            per_file[q] = files[q]["contract"]
        if self.norm is not None:
            summary = (
                f"RGB images, NHWC, {arch.resolution}x{arch.resolution}, raw pixel values 0-255 "
                f"(float32 inputs take the values as floats, uint8 inputs as they are; a "
                f"quantised input takes q = pixel / scale + zero_point). The normalisation "
                f"(pixel - mean) / std with mean {list(self.norm.mean)} and std "
                f"{list(self.norm.std)} is inside the model. Outputs are logits (apply softmax "
                f"for probabilities). Preprocess as in evaluation: centre crop "
                f"{transforms.DEFAULT_EVAL_CROP_FRACTION:g} of the shorter side, bicubic resize "
                f"to {arch.resolution}."
            )
        else:
            summary = (
                f"RGB images, NHWC, {arch.resolution}x{arch.resolution}, float32, normalised "
                f"by the caller: (pixel - mean) / std with pixel in 0-255, mean "
                f"{list(DEFAULT_NORMALIZATION.mean)}, std {list(DEFAULT_NORMALIZATION.std)}. "
                "Outputs are logits."
            )
        contract = {
            "summary": summary,
            "color_order": "RGB",
            "layout": "NHWC",
            "resolution": arch.resolution,
            "pixel_range": [0, 255],
            "normalization_folded": self.norm is not None,
            "normalization": DEFAULT_NORMALIZATION.to_dict(),
            "eval_crop_fraction": transforms.DEFAULT_EVAL_CROP_FRACTION,
            "files": per_file,
        }
        accuracy: dict[str, Any] = {"split": self.split}
        fp32 = files["fp32"]
        accuracy["num_examples"] = fp32["num_examples"]
        accuracy["keras"] = fp32["keras_child"]
        for q in self.options.quantizations:
            f = files[q]
            accuracy[q] = {
                k: f[k]
                for k in (
                    "top1",
                    "top5",
                    "top1_agreement_vs_fp32",
                    "max_abs_diff_vs_fp32",
                    "max_abs_diff_vs_keras_child",
                )  # fmt: skip
                if k in f
            }
        file_table = {
            key: {"file": f["file"], "bytes": f["bytes"], "sha256": f["sha256"]}
            for key, f in files.items()
        }
        # Keep measured latencies of the files this export did not change.
        kept_names = set(self.reused)
        latency: dict[str, Any] = {}
        for target, entries in old_latency.items():
            kept = {
                k: v
                for k, v in entries.items()
                if k in files
                and files[k]["file"] in kept_names
                or k == "built_reference_fp32"
                and BUILT_REFERENCE_FILE in kept_names
            }
            if kept:
                latency[target] = kept
        commit, dirty = _git_commit()
        card = {
            "format": EXPORT_FORMAT,
            "name": self.child.name,
            "origin": self.child.origin,
            "space": wd.space.name,
            "arch": arch.to_dict(),
            "paper_notation": arch.to_paper_notation(),
            "resolution": arch.resolution,
            "num_classes": wd.num_classes,
            "class_names": self.class_names(),
            "macs": c.macs,
            "params": c.params,
            "input_contract": contract,
            "files": file_table,
            "accuracy": accuracy,
            "verification": {"file": VERIFICATION_FILE, "passed": True},
            "latency": latency,
            "provenance": {
                "workdir": os.path.abspath(wd.path),
                "weights": wd.weights,
                "weights_digest": wd.weights_digest,
                "bn_stats": wd.bn_stats_path(),
                "bn_stats_digest": self.fingerprint["bn_stats_digest"],
                "git_commit": commit,
                "git_dirty": dirty,
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
        }
        if "built_reference" in files:
            card["sliced_vs_built"] = {
                "same_ops": files["built_reference"]["same_ops"],
                "num_ops": len(files["built_reference"]["ops"]),
                "reference_file": BUILT_REFERENCE_FILE,
            }
        if self.child.selection:
            s = self.child.selection
            card["search"] = {
                k: s.get(k)
                for k in ("budget", "method", "metric", "test_top1", "test_top5", "warning")
            }
        return card

    def class_names(self) -> list[str] | None:
        d = self.wd.config.data
        try:
            info = data_lib.dataset_info(
                d.source, self.split, d.data_dir or None, minival=minival_size(self.wd.config)
            )
        except (ValueError, OSError):
            return None
        return list(info.class_names)

    # ---- the whole export ------------------------------------------------------------------
    def run(self) -> ExportResult:
        old_card = card_lib.read_card(self.folder)
        keys = list(self.artifacts())
        if (
            all(self.reusable(k) for k in keys)
            and old_card is not None
            and old_card.get("files", {}).keys() == set(keys)
            and all(
                old_card["files"][k].get("sha256") == self.previous_files[k]["sha256"] for k in keys
            )
        ):
            self.log(f"{self.child.name}: up to date, nothing to do")
            self.verification = _read_json(self.path)
            self.reused = [self.artifacts()[k][0] for k in keys]
            return ExportResult(self.child, self.folder, [], self.reused, self.verification,
                                old_card)  # fmt: skip
        old_latency = (old_card or {}).get("latency") or self.carried_latency
        self.verification["carried_latency"] = old_latency
        card_lib.remove_card(self.folder)
        # A file to be redone goes first: an interrupted run leaves no stale
        # file that does not match what was asked for.
        # Entries of files still good stay in verification.json meanwhile.
        for key, (name, _) in self.artifacts().items():
            if self.reusable(key):
                self.verification["files"][key] = self.previous_files[key]
            else:
                models.remove_path(os.path.join(self.folder, name))
        atomic_write_json(self.path, self.verification)
        work = tempfile.mkdtemp(prefix=models.TEMP_PREFIX + "work-", dir=self.folder)
        try:
            self.keras_file()
            self.saved_model()
            for q in self.options.quantizations:
                self.tflite_model(q, work)
            if self.options.check_built:
                self.built_reference(work)
        finally:
            models.remove_path(work)
        # Files of quantisations no longer asked for stay, but are not in the card.
        card = self.card(old_latency)
        self.verification["complete"] = True
        self.verification["passed"] = True
        del self.verification["carried_latency"]
        atomic_write_json(self.path, self.verification)
        card_lib.write_card(self.folder, card)
        self.log(
            f"{self.child.name}: exported to {self.folder} (written {self.written or 'nothing'}, "
            f"reused {self.reused or 'nothing'})"
        )
        return ExportResult(
            self.child, self.folder, self.written, self.reused, self.verification, card
        )


def export_child(
    workdir: Workdir,
    child: ExportChild,
    out_dir: str,
    options: ExportOptions = ExportOptions(),
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Exports one child into `out_dir/<child.name>/` (see the module docstring).

    Args:
        workdir: The trained run (`open_workdir`).
        child: The child (`resolve_children`).
        out_dir: The export folder.
        options: How to export.
        log: Progress lines go here.

    Returns:
        What was written and reused, the verification and the card.

    Raises:
        ExportError: On bad options, an unwritable folder or a child without
            calibrated BN statistics (unless `options.calibrate`).
        UnsupportedOpError: If a conversion needs a non-built-in op.
        VerificationError: If a file fails verification (it is not written).
    """
    return export_children(workdir, [child], out_dir, options, log)[0]


def export_children(
    workdir: Workdir,
    children: list[ExportChild],
    out_dir: str,
    options: ExportOptions = ExportOptions(),
    log: Callable[[str], None] = print,
) -> list[ExportResult]:
    """Exports children, after checking every input before writing anything.

    Args:
        workdir: The trained run.
        children: The children.
        out_dir: The export folder (default in programs: `WORKDIR/export`).
        options: How to export.
        log: Progress lines go here.

    Returns:
        One result per child.

    Raises:
        ExportError: As `export_child`; bad input is found before any file is
            written or removed.
    """
    options = options.resolved()
    if not children:
        raise ExportError("no child to export")
    missing = [c for c in children if c.arch not in workdir.supernet.bn_stats]
    if missing and not options.calibrate:
        raise uncalibrated_error(workdir, missing[0])
    check_output_folder(out_dir)
    for c in missing:
        calibrate_child(workdir, c.arch, log)
    results = []
    for c in children:
        folder = os.path.join(out_dir, c.name)
        os.makedirs(folder, exist_ok=True)
        _clean_temp(folder)
        results.append(_ChildExport(workdir, c, folder, options, log).run())
    return results
