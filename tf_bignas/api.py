"""The Python API: a trained workdir to a child on a phone, in a few calls.

    import tf_bignas as tb

    wd = tb.open_workdir("workdirs/quickstart")  # the trained run
    child = tb.child_for_budget(wd, "mflops:1.5")  # the search's choice
    folder = tb.export_child(wd, child, "workdirs/quickstart/export").folder
    model = tb.load_tflite(folder + "/model_int8.tflite")  # checked against its card
    images, labels = tb.eval_images(wd, child.arch.resolution, 4)
    print(model.logits(images).argmax(-1), labels)

Every name is also reachable from its stage's package; this module only
gathers the ones a user of a trained run needs (README.md, "Python API").
It imports from every stage, so no stage imports it.
"""

from __future__ import annotations

import os

import numpy as np

from tf_bignas.export.children import ExportChild, resolve_children
from tf_bignas.export.export_lib import ExportOptions, ExportResult, export_child
from tf_bignas.export.options import RAW_PIXELS
from tf_bignas.export.tflite import TFLiteRunner
from tf_bignas.run import card as card_lib
from tf_bignas.run.workdir import Workdir, open_workdir

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


def child_for_budget(workdir: Workdir, budget: str) -> ExportChild:
    """The child the search chose for one budget (from the workdir's selection).

    Args:
        workdir: The trained and searched run (`open_workdir`).
        budget: One budget as the search names it, e.g. "mflops:1.5".

    Returns:
        The child (its arch, name and search record).

    Raises:
        ExportError: If the workdir has no selection, or none for this budget
            (the message lists the budgets it has).
    """
    return resolve_children(workdir, budget)[0]


def load_tflite(path: str, num_threads: int = 1) -> TFLiteRunner:
    """Loads an exported `.tflite` file, after checking it against its model card.

    A file in a folder with `model_card.json` must have the sha256 the export
    verified; a file without a card (from elsewhere) is loaded as it is.

    Args:
        path: The `.tflite` file.
        num_threads: Interpreter threads.

    Returns:
        A runner: `.logits(images)` takes raw RGB pixels (0-255) of the
        model's resolution, [N, R, R, 3].

    Raises:
        FileDigestError: If the file differs from the one its card verified.
        InvalidModelError: If the file is not a TFLite model.
    """
    folder = os.path.dirname(os.path.abspath(path))
    card = card_lib.read_card(folder)
    if card is not None:
        name = os.path.basename(path)
        keys = [k for k, f in card.get("files", {}).items() if f.get("file") == name]
        if not keys:
            raise card_lib.FileDigestError(
                f"{path} is not among the files {card_lib.CARD_JSON} verified "
                f"({sorted(f.get('file') for f in card.get('files', {}).values())})"
            )
        path = card_lib.verified_file(folder, keys[0], card)
    return TFLiteRunner(path=path, num_threads=num_threads)


def eval_images(workdir: Workdir, resolution: int, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` images of the run's evaluation split, as exported models take them.

    Args:
        workdir: The run.
        resolution: The child's resolution.
        n: How many.

    Returns:
        (raw RGB pixels 0-255 as float32 [n, R, R, 3], labels [n]): centre
        crop and bicubic resize as in evaluation, no normalisation (the
        exported files hold it).
    """
    split = workdir.config.data.eval_split
    dataset = workdir.eval_dataset(split, resolution, n, normalization=RAW_PIXELS, cache=False)
    batch = next(iter(dataset))
    return batch["image"].numpy()[:n], batch["label"].numpy()[:n]
