"""The model card of an exported child: what it is, takes, does, and how to remake it.

`build_card` assembles the JSON card (`tf_bignas.run.card` reads, renders and
checks it) from one child's verification: the input contract of every file,
the files with their verified sha256, the accuracy of each format, the class
names (also written as `labels.txt` beside the models, and into every
`.tflite` file as metadata: `tflite.add_metadata`), intended use and
limitations, and provenance (workdir, weights and BN-statistics digests, the
commands that trained and exported it, the git commit).

May import what `tf_bignas.export` may (see its `__init__`).
"""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Any

import keras
import tensorflow as tf

from tf_bignas.data import transforms
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION
from tf_bignas.export import models
from tf_bignas.export.child_data import ChildData
from tf_bignas.export.options import (
    BUILT_REFERENCE_FILE,
    EXPORT_FORMAT,
    LABELS_FILE,
    VERIFICATION_FILE,
)
from tf_bignas.model import cost as cost_lib
from tf_bignas.run import card as card_lib

_ACCURACY_KEYS = (
    "top1",
    "top5",
    "top1_agreement_vs_fp32",
    "max_abs_diff_vs_fp32",
    "max_abs_diff_vs_keras_child",
)


def git_commit() -> tuple[str | None, bool | None]:
    """The commit of the code running (and whether tracked files differ from it)."""
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


def labels_text(class_names: list[str]) -> str:
    """`labels.txt`: one class name per line, in output index order."""
    return "".join(" ".join(str(n).split()) + "\n" for n in class_names)


def input_contract(data: ChildData, files: dict[str, Any]) -> dict[str, Any]:
    """What every file takes and returns, and how to prepare an image for it.

    Args:
        data: The child being exported.
        files: verification.json's file entries (each TFLite one has its contract).

    Returns:
        The contract (JSON).
    """
    arch, wd, norm = data.arch, data.wd, data.norm
    dtype = data.options.input_dtype
    per_file: dict[str, Any] = {}
    for key in ("keras", "saved_model"):
        per_file[key] = {
            "input": {
                "name": models.INPUT_NAME,
                "dtype": dtype,
                "shape": [-1, arch.resolution, arch.resolution, 3],
            },
            "output": {
                "name": models.OUTPUT_NAME,
                "dtype": "float32",
                "shape": [-1, wd.num_classes],
            },
        }
    for q in data.options.quantizations:
        per_file[q] = files[q]["contract"]
    if norm is not None:
        summary = (
            f"RGB images, NHWC, {arch.resolution}x{arch.resolution}, raw pixel values 0-255 "
            f"(float32 inputs take the values as floats, uint8 inputs as they are; a "
            f"quantised input takes q = pixel / scale + zero_point). The normalisation "
            f"(pixel - mean) / std with mean {list(norm.mean)} and std "
            f"{list(norm.std)} is inside the model. Outputs are logits (apply softmax "
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
    return {
        "summary": summary,
        "color_order": "RGB",
        "layout": "NHWC",
        "resolution": arch.resolution,
        "pixel_range": [0, 255],
        "normalization_folded": norm is not None,
        "normalization": DEFAULT_NORMALIZATION.to_dict(),
        "eval_crop_fraction": transforms.DEFAULT_EVAL_CROP_FRACTION,
        "files": per_file,
    }


def intended_use(data: ChildData, accuracy: dict[str, Any]) -> dict[str, Any]:
    """Intended use and limitations, from what the run and the verification know.

    Args:
        data: The child being exported.
        accuracy: The card's accuracy section.

    Returns:
        {"intended_use": str, "limitations": [str, ...]}.
    """
    c = data.wd.config
    d = c.data
    n = data.wd.num_classes
    top1 = accuracy.get("fp32", {}).get("top1")
    top1_text = "?" if top1 is None else f"{100 * top1:.2f}%"
    use = (
        f"Image classification into the {n} classes of labels.txt, for images like those "
        f"of the training data ({d.source!s}, split {d.train_split!s}), given as "
        f"{data.arch.resolution}x{data.arch.resolution} RGB after the preprocessing of the "
        "input contract."
    )
    limitations = [
        f"Every output is one of these {n} classes: there is no 'none of these' class; apply a "
        "confidence threshold on the softmax before acting on a prediction.",
        f"Top-1 {top1_text} was measured on {accuracy.get('num_examples', 0)} images of the "
        f"'{accuracy.get('split', '?')}' split, from one training run (seed {c.seed}); other "
        "runs of the same command differ by a few points, and images unlike the training data "
        "(other cameras, domains, resolutions, classes) are not covered by it.",
        "int8 and fp16 files are verified by their top-1 agreement with fp32 on the same "
        "images (accuracy section); int8 was calibrated on "
        f"{data.options.representative_examples} training images.",
        "Latencies hold only for the device, threads, delegate and format each entry names.",
        "Not evaluated for robustness to adversarial input, for fairness across groups, or "
        "for uses where a wrong class causes harm.",
    ]
    return {"intended_use": use, "limitations": limitations}


def kept_latency(
    old_card: dict[str, Any], files: dict[str, Any], reused: list[str]
) -> list[dict[str, Any]]:
    """The latency entries of an earlier card whose timed file this export did not change."""
    kept_names = set(reused)
    key_of = {"built_reference_fp32": "built_reference"}  # the host's name for that file
    out = []
    for e in card_lib.latency_entries(old_card):
        f = files.get(key_of.get(e.get("format"), e.get("format")), {})
        if f.get("file") in kept_names and e.get("sha256") in (None, f.get("sha256")):
            out.append(e)
    return out


def build_card(
    data: ChildData,
    files: dict[str, Any],
    reused: list[str],
    old_card: dict[str, Any],
    bn_stats_digest: str,
    command: str | None,
) -> dict[str, Any]:
    """The child's JSON card.

    Args:
        data: The child being exported.
        files: verification.json's file entries (all passed).
        reused: Names of the files this export kept from an earlier one.
        old_card: The earlier card (or its carried latency as {"latency": ...}).
        bn_stats_digest: Digest of the child's BN statistics.
        command: The command that ran this export (None: not known).

    Returns:
        The card.
    """
    wd, arch = data.wd, data.arch
    c = cost_lib.cost(wd.space, arch, wd.num_classes, wd.supernet.stage_shortcuts)
    accuracy: dict[str, Any] = {"split": data.split}
    fp32 = files["fp32"]
    accuracy["num_examples"] = fp32["num_examples"]
    accuracy["keras"] = fp32["keras_child"]
    for q in data.options.quantizations:
        accuracy[q] = {k: files[q][k] for k in _ACCURACY_KEYS if k in files[q]}
    file_table = {
        key: {"file": f["file"], "bytes": f["bytes"], "sha256": f["sha256"]}
        for key, f in files.items()
    }
    commit, dirty = git_commit()
    class_names = data.class_names()
    card = {
        "format": EXPORT_FORMAT,
        "name": data.child.name,
        "origin": data.child.origin,
        "space": wd.space.name,
        "arch": arch.to_dict(),
        "paper_notation": arch.to_paper_notation(),
        "resolution": arch.resolution,
        "num_classes": wd.num_classes,
        "class_names": class_names,
        "labels_file": LABELS_FILE if class_names else None,
        "macs": c.macs,
        "params": c.params,
        "input_contract": input_contract(data, files),
        "files": file_table,
        "accuracy": accuracy,
        **intended_use(data, accuracy),
        "verification": {"file": VERIFICATION_FILE, "passed": True},
        "latency": kept_latency(old_card, files, reused),
        "provenance": {
            "workdir": os.path.abspath(wd.path),
            "weights": wd.weights,
            "weights_digest": wd.weights_digest,
            "bn_stats": wd.bn_stats_path(),
            "bn_stats_digest": bn_stats_digest,
            "train_command": wd.results.get("command"),
            "export_command": command,
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
    if data.child.selection:
        s = data.child.selection
        card["search"] = {
            k: s.get(k) for k in ("budget", "method", "metric", "test_top1", "test_top5", "warning")
        }
    return card
