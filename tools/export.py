"""Export chosen children of a trained workdir to Keras, SavedModel and TFLite, verified.

    python -m tools.export --workdir=DIR                      # every budget of the search
    python -m tools.export --workdir=DIR --budgets=mflops:250,400
    python -m tools.export --workdir=DIR --arch=smallest --arch=largest --calibrate
    python -m tools.export --workdir=DIR --quantize=fp32,int8 --int8_io=int8 --out=DIR

Children come from `WORKDIR/search/selection.json` (--budgets, default all of
them) and/or --arch (largest, smallest, a JSON arch file, JSON text or paper
notation, of the run's space). Each goes to `OUT/<child>/` (default OUT:
`WORKDIR/export`): `child.keras`, `saved_model/`, `model_{fp32,fp16,int8}.tflite`,
`verification.json`, `model_card.{json,md}`. Running it again finishes an
interrupted export and skips what is done. Time the files with
`python -m tools.benchmark --models=OUT`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet

from absl import flags, logging  # noqa: E402

from tf_bignas.common.text import command_line  # noqa: E402
from tf_bignas.export import ExportOptions, export_children, resolve_children  # noqa: E402
from tf_bignas.export.export_lib import Thresholds  # noqa: E402
from tf_bignas.run.workdir import open_workdir  # noqa: E402
from tools.cli import run  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir (of pipelines/train.py).")
_BUDGETS = flags.DEFINE_string(
    "budgets",
    None,
    "Budgets of search/selection.json, KIND:V1,V2,... or 'all' (the default "
    "when no --arch is given).",
)
_ARCH = flags.DEFINE_multi_string(
    "arch", [], "largest|smallest|FILE.json|JSON|paper notation (repeatable)."
)
_QUANTIZE = flags.DEFINE_string("quantize", "fp32,fp16,int8", "TFLite files: fp32,fp16,int8.")
_INT8_IO = flags.DEFINE_string("int8_io", "uint8", "int8 file's input/output: uint8|int8|float.")
_INPUT_DTYPE = flags.DEFINE_string(
    "input_dtype", "float32", "Input of the Keras/SavedModel/fp32/fp16 models: float32|uint8."
)
_FOLD = flags.DEFINE_bool(
    "fold_normalization", True, "Models take raw RGB 0-255 (else normalised floats)."
)
_OUT = flags.DEFINE_string("out", None, "Export folder (default WORKDIR/export).")
_CALIBRATE = flags.DEFINE_bool(
    "calibrate", False, "Calibrate children without stored BN statistics on the training split."
)
_VERIFY_EXAMPLES = flags.DEFINE_integer(
    "verify_examples", 0, "Evaluation images to verify on (0: the whole split)."
)
_REPRESENTATIVE = flags.DEFINE_integer(
    "representative_examples", 200, "Training images that calibrate int8."
)
_INT8_AGREEMENT = flags.DEFINE_float(
    "int8_min_agreement", 0.90, "Smallest top-1 agreement of int8 with fp32."
)
_CHECK_BUILT = flags.DEFINE_bool(
    "check_built", True, "Require the same TFLite ops as the arch built directly."
)
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    options = ExportOptions(
        quantizations=tuple(_QUANTIZE.value.split(",")),
        int8_io=_INT8_IO.value,
        fold_normalization=_FOLD.value,
        input_dtype=_INPUT_DTYPE.value,
        representative_examples=_REPRESENTATIVE.value,
        verify_examples=_VERIFY_EXAMPLES.value or None,
        check_built=_CHECK_BUILT.value,
        calibrate=_CALIBRATE.value,
        thresholds=Thresholds(int8_min_agreement=_INT8_AGREEMENT.value),
    ).resolved()
    workdir = open_workdir(_WORKDIR.value)
    children = resolve_children(workdir, _BUDGETS.value, _ARCH.value)
    out = _OUT.value or os.path.join(workdir.path, "export")
    results = export_children(
        workdir, children, out, options, log=lambda s: print(s, flush=True),
        command=command_line(sys.argv),
    )  # fmt: skip
    for r in results:
        acc = r.card["accuracy"]
        cells = ", ".join(
            f"{q} {r.card['files'][q]['bytes']} B top-1 {acc[q]['top1']:.4f}"
            for q in options.quantizations
        )
        print(f"{r.child.name}: {r.folder}: {cells}")


if __name__ == "__main__":
    run(main)
