"""Input pipeline: shared-patch multi-resolution training batches and evaluation batches.

Sources (`sources`): image folders, TFDS datasets and the embedded MNIST
digits. Transforms (`transforms`, `augment`): Inception crop, flip,
AutoAugment / RandAugment, bicubic resize of one patch to every resolution,
centre-crop evaluation. `normalization` is the single definition of the
network's input. `pipeline` assembles them into `tf.data` datasets, and
`device` is the part that runs in the compiled step (normalising uint8
transport, resizing the shared patch on the device).

May import: `tf_bignas.common`, TensorFlow and TensorFlow Datasets.

Example:
    >>> ds = build_train_dataset("embedded", "train", resolutions=(16, 32), batch_size=64)
    >>> batch = next(iter(ds))
    >>> batch["images"][16].shape, batch["label"].shape
    (TensorShape([64, 16, 16, 3]), TensorShape([64]))
"""

from tf_bignas.data.device import TRANSPORTS, network_images, network_input
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION, Normalization
from tf_bignas.data.pipeline import (
    build_calibration_dataset,
    build_eval_dataset,
    build_train_dataset,
    dataset_info,
)
from tf_bignas.data.report import inspect_data
from tf_bignas.data.sources import (
    CorruptImageError,
    DataInfo,
    DataSourceError,
    SkippedFile,
    Source,
    open_source,
)

__all__ = [
    "DEFAULT_NORMALIZATION",
    "CorruptImageError",
    "DataInfo",
    "DataSourceError",
    "Normalization",
    "SkippedFile",
    "Source",
    "TRANSPORTS",
    "build_calibration_dataset",
    "build_eval_dataset",
    "build_train_dataset",
    "dataset_info",
    "inspect_data",
    "network_images",
    "network_input",
    "open_source",
]
