"""What an export writes and requires: file names, options, thresholds, the result.

May import what `tf_bignas.export` may (see its `__init__`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tf_bignas.data.normalization import Normalization
from tf_bignas.export import models
from tf_bignas.export import tflite as tflite_lib
from tf_bignas.export.children import ExportChild
from tf_bignas.export.errors import ExportError

EXPORT_FORMAT = 2  # 2: labels.txt, TFLite metadata, latency entries as a list
KERAS_FILE = "child.keras"
SAVED_MODEL_DIR = "saved_model"
VERIFICATION_FILE = "verification.json"
BUILT_REFERENCE_FILE = "built_reference_fp32.tflite"
LABELS_FILE = "labels.txt"
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
