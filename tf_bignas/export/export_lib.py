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
- ``labels.txt``: the class names, one per line in output order (also in
  every ``.tflite`` file as metadata, with the input contract);
- ``model_card.json``, ``model_card.md``: written last (`card_builder`).

Every file is written to a temp name and renamed (folders too); the card is
removed before anything in the folder changes and written at the end, so a
folder without a card is unfinished. A rerun reuses each file whose digest
and options match its entry in `verification.json` and redoes the rest. The
export holds the workdir's lock (`tf_bignas.run.lock`) while it writes.

The options and file names live in `options`, the child's models and data in
`child_data`, the card in `card_builder`; this module runs the steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_bignas.common.files import atomic_write_bytes, atomic_write_json, sha256_path
from tf_bignas.export import models
from tf_bignas.export import tflite as tflite_lib
from tf_bignas.export.card_builder import build_card, labels_text
from tf_bignas.export.child_data import ChildData, Tally, training_sample
from tf_bignas.export.children import ExportChild
from tf_bignas.export.errors import ExportError, VerificationError
from tf_bignas.export.options import (
    BUILT_REFERENCE_FILE,
    EXPORT_FORMAT,
    KERAS_FILE,
    LABELS_FILE,
    RAW_PIXELS,
    SAVED_MODEL_DIR,
    VERIFICATION_FILE,
    ExportOptions,
    ExportResult,
    Thresholds,
    tflite_file,
)
from tf_bignas.model.bn_stats import merge_bn_stats
from tf_bignas.model.slicing import build_child_model
from tf_bignas.run import card as card_lib
from tf_bignas.run import lock
from tf_bignas.run.evaluator import ChildEvaluator
from tf_bignas.run.workdir import Workdir
from tf_bignas.space import ArchConfig

__all__ = [  # the names programs and tests import from here
    "BUILT_REFERENCE_FILE",
    "KERAS_FILE",
    "LABELS_FILE",
    "RAW_PIXELS",
    "SAVED_MODEL_DIR",
    "VERIFICATION_FILE",
    "ExportOptions",
    "ExportResult",
    "Thresholds",
    "calibrate_child",
    "check_output_folder",
    "export_child",
    "export_children",
    "tflite_file",
]


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
    dataset = training_sample(
        workdir, arch.resolution, int(t.calibration_images), int(t.calibration_batch_size)
    )
    stats = ChildEvaluator(workdir.supernet).calibrate(arch, iter(dataset))
    merge_bn_stats(workdir.bn_stats_path(), {arch: stats})


# ---- helpers -----------------------------------------------------------------------
def _bn_digest(workdir: Workdir, arch: ArchConfig) -> str:
    h = hashlib.sha256()
    stats = workdir.supernet.bn_stats.get(arch)
    for name in sorted(stats):
        h.update(name.encode())
        for a in stats[name]:
            h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


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


class _ChildExport(ChildData):
    """One child's export: the steps, sharing the built models and data (`ChildData`).

    Args:
        workdir: The trained run.
        child: The child.
        folder: Its export folder.
        options: How to export (resolved).
        log: Progress lines go here.
        command: The command running the export (for the card).
    """

    def __init__(
        self,
        workdir: Workdir,
        child: ExportChild,
        folder: str,
        options: ExportOptions,
        log: Callable[[str], None],
        command: str | None = None,
    ) -> None:
        super().__init__(workdir, child, folder, options)
        self.log = log
        self.command = command
        self.written: list[str] = []
        self.reused: list[str] = []
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
            "class_names": self.class_names(),
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
            and entry.get("sha256") == sha256_path(path)
        )

    def record(self, key: str, entry: dict[str, Any], written: bool) -> None:
        name, extra = self.artifacts()[key]
        path = os.path.join(self.folder, name)
        entry = {
            "file": name,
            "bytes": models.path_bytes(path),
            "sha256": sha256_path(path),
            "options": extra,
            **entry,
        }
        self.verification["files"][key] = entry
        (self.written if written else self.reused).append(name)
        atomic_write_json(self.path, self.verification)

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
        content = tflite_lib.add_metadata(content, self.metadata())
        runner = tflite_lib.TFLiteRunner(content, num_threads=self.options.threads)
        fp32 = None
        if quantization != "fp32":
            fp32 = tflite_lib.TFLiteRunner(
                path=os.path.join(self.folder, tflite_file("fp32")),
                num_threads=self.options.threads,
            )
        tally, keras_tally = Tally(), Tally()
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

    def metadata(self) -> dict[str, bytes]:
        """What every TFLite file carries about itself: labels and the input contract."""
        names = self.class_names()
        contract = {
            "resolution": self.arch.resolution,
            "layout": "NHWC",
            "color_order": "RGB",
            "pixel_range": [0, 255],
            "normalization_folded": self.norm is not None,
            "normalization": (self.norm or RAW_PIXELS).to_dict() if self.norm is not None else None,
            "num_classes": self.wd.num_classes,
            "labels_file": LABELS_FILE if names else None,
            "child": self.child.name,
            "arch": self.arch.to_paper_notation(),
        }
        out = {tflite_lib.METADATA_CONTRACT: json.dumps(contract, sort_keys=True).encode()}
        if names:
            out[tflite_lib.METADATA_LABELS] = labels_text(names).encode()
        return out

    def labels_file(self) -> None:
        """`labels.txt` beside the models (when the class names are known)."""
        names = self.class_names()
        path = os.path.join(self.folder, LABELS_FILE)
        if names:
            atomic_write_bytes(path, labels_text(names).encode())
        elif os.path.exists(path):
            os.remove(path)

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

    # ---- the whole export ------------------------------------------------------------------
    def run(self) -> ExportResult:
        """Exports the child: reuses what is verified and unchanged, redoes the rest."""
        old_card = card_lib.read_card(self.folder)
        self.labels_file()
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
        old_latency = card_lib.latency_entries(old_card or {}) or self.carried_latency
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
        card = build_card(
            self, self.verification["files"], self.reused, {"latency": old_latency},
            self.fingerprint["bn_stats_digest"], self.command,
        )  # fmt: skip
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
    options: ExportOptions | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> ExportResult:
    """Exports one child into `out_dir/<child.name>/` (see the module docstring).

    Args:
        workdir: The trained run (`open_workdir`).
        child: The child (`resolve_children`).
        out_dir: The export folder.
        options: How to export (default: `ExportOptions()`).
        log: Progress lines go here.
        command: The command running the export, recorded in the card.

    Returns:
        What was written and reused, the verification and the card.

    Raises:
        ExportError: On bad options, an unwritable folder or a child without
            calibrated BN statistics (unless `options.calibrate`).
        UnsupportedOpError: If a conversion needs a non-built-in op.
        VerificationError: If a file fails verification (it is not written).
        WorkdirBusyError: If another process holds the workdir's lock.
    """
    return export_children(workdir, [child], out_dir, options, log, command)[0]


def export_children(
    workdir: Workdir,
    children: list[ExportChild],
    out_dir: str,
    options: ExportOptions | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> list[ExportResult]:
    """Exports children, after checking every input before writing anything.

    Holds the lock of the workdir (and of the one enclosing `out_dir`, if
    another) while it writes.

    Args:
        workdir: The trained run.
        children: The children.
        out_dir: The export folder (default in programs: `WORKDIR/export`).
        options: How to export (default: `ExportOptions()`).
        log: Progress lines go here.
        command: The command running the export, recorded in each card.

    Returns:
        One result per child.

    Raises:
        ExportError: As `export_child`; bad input is found before any file is
            written or removed.
        WorkdirBusyError: If another process holds the workdir's lock.
    """
    options = (options or ExportOptions()).resolved()
    if not children:
        raise ExportError("no child to export")
    missing = [c for c in children if c.arch not in workdir.supernet.bn_stats]
    if missing and not options.calibrate:
        raise uncalibrated_error(workdir, missing[0])
    check_output_folder(out_dir)
    with lock.locked_for(workdir.path, log), lock.locked_for(out_dir, log):
        for c in missing:
            calibrate_child(workdir, c.arch, log)
        results = []
        for c in children:
            folder = os.path.join(out_dir, c.name)
            os.makedirs(folder, exist_ok=True)
            _clean_temp(folder)
            results.append(_ChildExport(workdir, c, folder, options, log, command).run())
    return results
