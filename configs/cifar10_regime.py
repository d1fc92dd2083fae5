"""The regime of the paper's claims: 5,000 CIFAR-10 training images, many epochs (issue 21).

Launch (unpack the data first, see ../shared/data/README.md); the argument
after the colon is the number of epochs (48 by default; 12 is the
underfitting control), and the schedule scales with it:
    mkdir -p /tmp/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/cifar10
    python -m pipelines.train --config=configs/cifar10_regime.py --workdir=/tmp/bignas_regime
    python -m experiments.ablations --config=configs/cifar10_regime.py:48 \\
        --root=/work/bignas_runs/regime48 --variants=full,hard_labels --seeds=0,1

Why this regime: BigNAS's claims (inplace distillation, the shared patch,
sliced children as good as children trained alone, no finetuning) are about
a teacher that is strong for most of training and big children that would
overfit on their own. The miniature (`cifar10_miniature.py`, 3 epochs over
48,000 images) is neither: its largest child ends at about 51% and never
overfits. Here the training split is 5,000 images (`data.minival=45000`
holds the other 45,000 out, class-stratified and the same for every seed;
the search ranks children on them), seen 48 times, so the largest child
fits its training images far better than the test images; the test split
(10,000 images) is untouched until evaluation. `train.eval_train_images`
scores 5,000 training images at every evaluation beside the test split, so
the curves show the gap.

What stays as in the miniature: the supernet (`bignas_cifar`), the
resolutions (16 and 24 px), the batch (128, the LR scaled linearly from the
paper's 0.256 at 4096), RMSProp, label smoothing, dropout and weight decay on
the largest child. The schedule is the paper's shape with its clock scaled to
the run: the paper does not state its epoch count, so, assuming
EfficientNet's roughly 350-360 epochs, its 5 warm-up epochs and its decay of
0.97 every 2.4 epochs (which reaches the 5% floor after about 236 epochs,
two thirds of such a run) become 5/360 and 2.4/360 of this run's epochs.
The run is 39 steps per epoch (1,872 steps at 48 epochs).
"""

from tf_bignas.run.config import default_config

DEFAULT_EPOCHS = 48.0


def get_config(epochs: str = "") -> object:
    """Returns the regime config.

    Args:
        epochs: The number of epochs, from `--config=configs/cifar10_regime.py:N`;
            empty: 48. Warm-up and decay scale with it.

    Returns:
        The ConfigDict.

    Raises:
        ValueError: If `epochs` is not a positive number.
    """
    try:
        n = float(epochs) if epochs else DEFAULT_EPOCHS
    except ValueError:
        n = -1.0
    if not n > 0:
        raise ValueError(
            f"configs/cifar10_regime.py:{epochs} is not allowed; allowed: a positive number "
            "of epochs after the colon, e.g. configs/cifar10_regime.py:48"
        )
    c = default_config()
    c.model.space = "bignas_cifar"
    c.model.train_resolutions = (16, 24)
    c.model.resolutions = (16, 24)
    c.data.source = "folder:/tmp/cifar10"
    c.data.eval_split = "test"
    c.data.minival = 45000  # 5,000 training images remain
    c.data.augment = "none"
    c.data.crop_scale = (0.35, 1.0)
    c.schedule.warmup_epochs = round(n * 5 / 360, 4)
    c.schedule.staircase = False
    c.schedule.decay_epochs = round(n * 2.4 / 360, 4)
    c.train.batch_size = 128
    c.train.epochs = n
    c.train.log_every = 39
    c.train.checkpoint_every = 117
    c.train.eval_every = int(round(n * 39 / 8))  # eight points on each curve
    c.train.eval_batches = 0  # the whole test split
    c.train.eval_train_images = 5000
    return c
