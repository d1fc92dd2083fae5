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
and stage-transition shortcuts. The paper states no epoch count: 360 epochs,
as published reproductions of this recipe use. The supernet runs in mask mode
(static shapes for XLA on TPU). 50,000 training images are held out as the
"minival" split for architecture selection; the validation split is the test set.
Checkpoints leave out the input iterator (its shuffle buffer of encoded
ImageNet images is about 1 GB): a resumed run reshuffles instead.
"""

from tf_bignas.train.config import default_config


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
    c.train.checkpoint_data = False  # the TFDS shuffle buffer would add ~1 GB per checkpoint
    c.train.batch_size = 4096
    c.train.epochs = 360.0
    c.runtime.strategy = "tpu"
    return c
