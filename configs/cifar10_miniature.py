"""The reproduction's miniature: CIFAR-10 at 16/24 px, the paper's recipe compressed to 3 epochs.

Launch (unpack the data first, see ../shared/data/README.md); the ablations
and seeds run through experiments/ablations.py, which starts this config once
per variant and seed:
    mkdir -p /tmp/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/cifar10
    python -m pipelines.train --config=configs/cifar10_miniature.py --workdir=/tmp/bignas_mini
    python -m experiments.ablations --root=/tmp/bignas_ablations --seeds=0,1

Why it is a fair miniature of the paper's ImageNet run (issue 14): the same
supernet structure (`bignas_cifar`: MBConv+SE stages with elastic depth,
width, kernel and expansion), the same training rule (sandwich with 2 random
children, inplace distillation, RMSProp, label smoothing on the largest
child, dropout and weight decay on it only, zero-init last BN gamma, stage
shortcuts, one shared crop resized bicubically to every resolution), and the
same schedule *shape*: exponential decay with a constant ending at 5%, with
the decay clock scaled by the run's length (the paper decays 0.97 every 2.4
of 360 epochs and reaches its floor at about 66% of training; here every
0.02 of 3 epochs, smooth, so the floor comes at the same fraction). What
shrinks is the data (CIFAR-10, 48,000 training images, 2,000 held out as the
search's minival), the resolutions (16 and 24, so that the experiments
afford seeds), the epochs and the batch (128, LR scaled linearly from 0.256
at 4096). Measured: 22 to 25 minutes per run on 2 shared CPU cores (seeds 0
and 1 of the full method: 25.0 and 22.2 min; largest child 51.43% / 49.90%,
smallest 45.68% / 45.16% test top-1; experiments/RESULTS.md). Every experiment
uses this config; an ablation changes one switch.
"""

from tf_bignas.run.config import default_config


def get_config():
    """Returns the miniature config."""
    c = default_config()
    c.model.space = "bignas_cifar"
    c.model.train_resolutions = (16, 24)
    c.model.resolutions = (16, 24)
    c.data.source = "folder:/tmp/cifar10"
    c.data.eval_split = "test"
    c.data.minival = 2000
    c.data.augment = "none"
    c.data.crop_scale = (0.35, 1.0)
    c.schedule.warmup_epochs = 0.1
    c.schedule.staircase = False
    c.schedule.decay_epochs = 0.02  # 2.4 x 3 / 360: the paper's clock, scaled
    c.train.batch_size = 128
    c.train.epochs = 3.0
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.eval_every = 375  # four points on each curve (3 epochs = 1,125 steps)
    c.train.eval_batches = 0  # the whole test split, mid-run and at the end
    return c
