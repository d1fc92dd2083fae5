"""The deployable Keras model of a child, and its `.keras` and SavedModel files.

`deployable_model(child, normalization, input_dtype)` puts the input
normalisation in front of a sliced child, so the model takes raw RGB pixels
(0-255, float32 or uint8) at the child's resolution; `write_keras` and
`write_saved_model` write it atomically (a temp name, then a rename; for the
SavedModel folder, a temp folder renamed into place).
"""

from __future__ import annotations

import os
import shutil
import uuid

import keras
import tensorflow as tf

from tf_bignas.data.normalization import Normalization
from tf_bignas.export.errors import ExportError

INPUT_DTYPES = ("float32", "uint8")
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
TEMP_PREFIX = ".tmp-"


def deployable_model(
    child: keras.Model,
    normalization: Normalization | None,
    input_dtype: str = "float32",
    name: str | None = None,
) -> keras.Model:
    """A child with its input normalisation folded in.

    Args:
        child: A child taking normalised float images (`extract_child`).
        normalization: The training normalisation to fold in, or None to keep
            the child's normalised-float input.
        input_dtype: "float32" or "uint8" (raw pixels; needs `normalization`).
        name: Model name (default: the child's).

    Returns:
        A functional model: input "image" [batch, R, R, 3] of `input_dtype`,
        output logits.

    Raises:
        ExportError: On an unknown dtype, or uint8 without normalisation.
    """
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"unknown input dtype {input_dtype!r}; allowed: {list(INPUT_DTYPES)}")
    if normalization is None:
        if input_dtype != "float32":
            raise ExportError(
                "a uint8 input needs the normalisation folded in (the unfolded model takes "
                "normalised float32 images)"
            )
        return child
    inputs = keras.Input(child.inputs[0].shape[1:], dtype=input_dtype, name=INPUT_NAME)
    x = normalization.keras_layer()(inputs)
    return keras.Model(inputs, child(x), name=name or child.name)


def remove_path(path: str) -> None:
    """Removes a file or folder if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def temp_path(folder: str, name: str) -> str:
    """A fresh temporary name in `folder` for something that will become `name`.

    Temporary names start with `TEMP_PREFIX` (as those of
    `tf_bignas.common.files`), so a rerun can clear what a killed export left.
    """
    return os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def replace_dir(src: str, dst: str) -> None:
    """Moves folder `src` to `dst`, replacing what is there.

    The old `dst` is renamed aside first and removed after the new one is in
    place, so `dst` is at every moment either the old complete folder, absent,
    or the new complete folder.
    """
    old = None
    if os.path.lexists(dst):
        old = temp_path(os.path.dirname(os.path.abspath(dst)), "old-" + os.path.basename(dst))
        os.replace(dst, old)
    os.replace(src, dst)
    if old:
        remove_path(old)


def write_keras(model: keras.Model, path: str) -> None:
    """Saves `model` as a `.keras` file at `path`, atomically."""
    tmp = temp_path(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_saved_model(model: keras.Model, path: str, batch_size: int | None = None) -> None:
    """Writes a SavedModel with a "serving_default" signature, atomically.

    The signature takes "image" ([batch, R, R, 3], the model's input dtype)
    and returns {"logits": float32 [batch, num_classes]}.

    Args:
        model: The deployable model.
        path: The SavedModel folder (replaced if it exists).
        batch_size: Fixed batch size, or None for any.
    """
    spec = tf.TensorSpec(
        (batch_size, *model.inputs[0].shape[1:]), model.inputs[0].dtype, name=INPUT_NAME
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda image: {OUTPUT_NAME: model(image, training=False)}, input_signature=[spec]
    )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temp_path(folder, os.path.basename(path))
    try:
        archive.write_out(tmp, verbose=False)
        replace_dir(tmp, path)
    finally:
        remove_path(tmp)


def path_bytes(path: str) -> int:
    """Size of a file, or total size of a folder's files."""
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(path) for n in names
        )
    return os.path.getsize(path)
