"""tf_bignas: BigNAS in TensorFlow/Keras 3.

The stages are sub-packages (space, model, data, run, train, search, export,
latency, chain); the names a user of a trained run needs are here, loaded on
first use (so `import tf_bignas` stays cheap):

    import tf_bignas as tb

    wd = tb.open_workdir("workdirs/quickstart")
    child = tb.child_for_budget(wd, "mflops:1.5")
    folder = tb.export_child(wd, child, "workdirs/quickstart/export").folder
    model = tb.load_tflite(folder + "/model_int8.tflite")
    images, labels = tb.eval_images(wd, child.arch.resolution, 4)
    print(model.logits(images).argmax(-1), labels)

See `tf_bignas.api`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExportOptions",
    "ExportResult",
    "TFLiteRunner",
    "Workdir",
    "child_for_budget",
    "export_child",
    "load_tflite",
    "open_workdir",
    "eval_images",
]


def __getattr__(name: str) -> Any:
    """The API's names, imported from `tf_bignas.api` on first use (PEP 562)."""
    if name in __all__:
        return getattr(importlib.import_module("tf_bignas.api"), name)
    raise AttributeError(f"module 'tf_bignas' has no attribute {name!r}; it exports {__all__}")


def __dir__() -> list[str]:
    return sorted(__all__)
