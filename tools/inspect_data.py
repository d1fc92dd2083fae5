r"""Checks a data source before a long job: class counts, skipped files, batch shapes.

Usage:
    python -m tools.inspect_data --source=folder:/tmp/cifar10 --split=train \
        --resolutions=24,32 --num_batches=2 --json
    python -m tools.inspect_data --source=tfds:imagenet2012 --data_dir=gs://bucket/tfds \
        --split=validation --resolutions=224
    python -m tools.inspect_data --source=embedded --split=test

With --json it prints one JSON object (see `tf_bignas.data.inspect_data`);
without, a readable summary. Bad input (a missing folder, an unknown split,
`--resolutions=abc`...) ends with one line on stderr and exit code 2
(`tools.cli`; `--verbose` adds the traceback).
"""

from __future__ import annotations

import json

from absl import flags

from tf_bignas.data import inspect_data
from tf_bignas.space import get_space
from tools import cli

_SOURCE = flags.DEFINE_string("source", "embedded", "folder:PATH, tfds:NAME or embedded.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to inspect.")
_RESOLUTIONS = flags.DEFINE_list(
    "resolutions", None, "Resolutions; default: the space's training resolutions, else 32."
)
_SPACE = flags.DEFINE_string("space", None, "Search space to check the resolutions against.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2, "Batches to read.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Batch size.", lower_bound=1)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_MINIVAL = flags.DEFINE_string("minival", None, "Minival size: images (int) or fraction.")
_STRICT = flags.DEFINE_boolean("strict", False, "Fail on an unreadable image file.")
_AUGMENT = flags.DEFINE_enum(
    "augment", "autoaugment", ["autoaugment", "randaugment", "none"], "Augmentation."
)
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object.")


def _minival(text: str | None) -> int | float | None:
    """--minival as images (an integer >= 1) or a fraction (0 < f < 1)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0.0 < value < 1.0 or (value >= 1.0 and value.is_integer())):
        raise ValueError(
            f"--minival={text}: allowed: a number of images (an integer >= 1) or a fraction "
            "of the split (0 < f < 1)"
        )
    return int(value) if value >= 1 else value


def main(argv: list[str]) -> int:
    del argv
    space = get_space(_SPACE.value) if _SPACE.value else None
    if _RESOLUTIONS.value:
        resolutions = cli.positive_ints("--resolutions", _RESOLUTIONS.value)
    else:
        resolutions = list(space.train_resolutions) if space else [32]
    if space is not None:
        for r in resolutions:
            space.validate_resolution(r, training=True)
    report = inspect_data(
        _SOURCE.value,
        _SPLIT.value,
        resolutions,
        num_batches=_NUM_BATCHES.value,
        batch_size=_BATCH_SIZE.value,
        data_dir=_DATA_DIR.value,
        minival=_minival(_MINIVAL.value),
        strict=_STRICT.value,
        augment=_AUGMENT.value,
    )
    if _JSON.value:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['source']} [{report['split']}]: {report['num_examples']} images, "
        f"{report['num_classes']} classes"
    )
    for name, count in report["images_per_class"].items():
        print(f"  {name:>20s} {count}")
    print(f"skipped files: {report['skipped']['count']}")
    for s in report["skipped"]["files"]:
        print(f"  {s['path']}: {s['reason']}")
    for r, shape in report["batch_shapes"].items():
        print(f"resolution {r}: batch {shape}, labels {report['label_shape']}")
    print(f"read {report['batches']} batch(es) in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    cli.run(main)
