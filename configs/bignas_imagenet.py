"""The paper's full recipe on ImageNet (TFDS imagenet2012), for a TPU pod.

Launch:
    python -m pipelines.train --config=configs/bignas_imagenet.py --workdir=gs://BUCKET/bignas \
        --strategy=tpu --tpu=TPU_NAME --config.data.data_dir=gs://BUCKET/tensorflow_datasets

BigNAS (Yu et al., ECCV 2020), sections 3.1 and 4.2: the Table 1 space at
training resolutions {192, 224, 288, 320} from one shared crop; sandwich rule
with 2 random children; inplace distillation; AutoAugment; RMSProp (decay 0.9,
momentum 0.9, epsilon 1e-3) at LR 0.256 for a global batch of 4096, warmup,
decay by 0.97 every 2.4 epochs, constant from 5% of the initial LR; weight
decay 1e-5 and dropout 0.2 on the largest child only; zero-init last BN gamma
and stage-transition shortcuts.

Where the paper defers to EfficientNet's recipe, this follows EfficientNet's
TPU code: weights initialised by variance scaling on the fan-out; the LR
decays in steps (staircase, x0.97 once every 2.4 epochs) on a clock that
counts from step 0, warmup included (the 5% floor comes at epoch 237.6); and
an exponential moving average (EMA) of the weights with decay 0.9999 (with
TF1's `num_updates` warm-up of the decay).

EMA: the paper says nothing of one. It is on because every training setting
the paper does state (RMSProp and its constants, LR and batch, warmup, decay,
weight decay, dropout, AutoAugment) is EfficientNet's, and EfficientNet
evaluates its EMA weights. At 4,096 images a step (about 300 steps an epoch
here), 0.9999 averages the last ~10,000 steps, ~33 epochs, which at the end
of the 360 epochs all ran at the constant 5% LR: an average of weights that
no longer drift with the LR. Each child's BN statistics are calibrated after
the average is put into the model, so they match the weights evaluated, and
`results.json` says "weights": "ema" (mid-run evaluations use the average
too). For the raw weights: --config.optimizer.ema=False. BN calibration uses
2,048 random training images per child (see tf_bignas/train/calibration.py).

Input: the host sends each example's shared 224x224 patch as uint8 (147 KB,
against 3.3 MB for normalised float32 images at the four resolutions) and the
TPU resizes it to 192/288/320 and normalises it in the step, with the host
resize's own weights (equal to it up to float rounding at .5 ties). Per host
core that is 3.2-3.6x the images per second of resizing on the host
(AutoAugment and JPEG decoding are what is left): see benchmarks/README.md.

The paper states no epoch count: 360 epochs, as published reproductions of
this recipe use. The supernet runs in mask mode (static shapes for XLA on
TPU; slice mode is rejected with --strategy=tpu). 50,000 training images are
held out as the "minival" split for architecture selection; the validation
split is the test set.
Checkpoints leave out the input iterator (its shuffle buffer of encoded
ImageNet images is about 1 GB): a resumed run reshuffles instead.
"""

from tf_bignas.run.config import default_config


def get_config():
    """Returns the paper's ImageNet config."""
    c = default_config()
    c.model.space = "bignas_mobilenetv2"
    c.model.mode = "mask"
    c.data.source = "tfds:imagenet2012"
    c.data.eval_split = "validation"
    c.data.minival = 50000
    c.data.augment = "autoaugment"
    c.data.base_resolution = 224
    c.data.transport = "patch"  # the host sends the uint8 224 patch; the TPU resizes it
    c.schedule.staircase = True  # EfficientNet TPU code
    c.schedule.decay_from = "step0"  # warmup counts towards the decay
    c.optimizer.ema = True  # EfficientNet's weight average (see the docstring)
    c.optimizer.ema_decay = 0.9999
    c.train.checkpoint_data = False  # the TFDS shuffle buffer would add ~1 GB per checkpoint
    c.train.batch_size = 4096
    c.train.epochs = 360.0
    c.runtime.strategy = "tpu"
    return c
