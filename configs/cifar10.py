"""CIFAR-10 from the shared JPEG folders, on a CIFAR-sized space: about an hour on 2 CPU cores.

Launch (unpack the data first, see ../shared/data/README.md):
    mkdir -p /tmp/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/cifar10
    python -m pipelines.train --config=configs/cifar10.py --workdir=/tmp/bignas_cifar10

Space `bignas_cifar` (stride-1 stem, 4 stages) at training resolutions 24 and
32; held-out split "test" (10,000 images). The paper's recipe (sandwich rule,
inplace distillation, RMSProp, exponential decay with a constant ending, zero
init, stage shortcuts) at a CPU-sized batch of 128 (the LR scaled linearly
from 0.256 at 4096) for 8 epochs: about 5 minutes an epoch on 2 CPU cores
(167 images/s). Measured: 44 minutes in all, smallest child 55.6% and largest
child 60.5% top-1 on the 10,000 test images (BN calibrated). Point
`--config.data.source=folder:PATH` elsewhere if the data is not in /tmp/cifar10.
"""

from tf_bignas.train.config import default_config


def get_config():
    """Returns the CIFAR-10 config."""
    c = default_config()
    c.model.space = "bignas_cifar"
    c.data.source = "folder:/tmp/cifar10"
    c.data.eval_split = "test"
    c.data.minival = 2000  # held out of training: the search's selection split
    c.data.augment = "none"
    c.data.crop_scale = (0.35, 1.0)
    c.schedule.warmup_epochs = 0.5
    c.train.batch_size = 128
    c.train.epochs = 4.0
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.eval_every = 1000
    c.runtime.threads = 2
    return c
