"""Stage 6, export: each chosen child as the files a phone app or a server loads.

`export_lib.export_children(workdir, children, out_dir, options)` writes, per
child, the stock Keras model (`child.keras`), a SavedModel with a serving
signature, and TFLite files in float32, float16 and full-integer int8, with
the input normalisation folded in by default (the files take raw RGB 0-255);
every file is verified on real images of the evaluation split
(`verification.json`) and described by a model card (`model_card.json`,
`model_card.md`). `tflite` is the one conversion function with named
quantisation types and the built-in-ops check; `children` turns a search
selection or arch specs into the children to export; `host_benchmark` times
the exported files on this machine and writes the figures into the cards.

Everything is written atomically; a rerun skips what is already exported and
verified, and finishes the rest.

May import: `tf_bignas.common`, `tf_bignas.space`, `tf_bignas.model`,
`tf_bignas.data`, `tf_bignas.run` (not `tf_bignas.train` or `tf_bignas.search`:
the workdir, its selection and its cards are read through `tf_bignas.run`).
"""

from tf_bignas.export.children import ExportChild, resolve_children
from tf_bignas.export.errors import ExportError, UnsupportedOpError, VerificationError
from tf_bignas.export.export_lib import ExportOptions, ExportResult, export_child, export_children
from tf_bignas.export.tflite import INT8_IO, QUANTIZATIONS, convert_saved_model, op_list

__all__ = [
    "INT8_IO",
    "QUANTIZATIONS",
    "ExportChild",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "UnsupportedOpError",
    "VerificationError",
    "convert_saved_model",
    "export_child",
    "export_children",
    "op_list",
    "resolve_children",
]
