"""Tests of tf_bignas.run.workdir: the one entry point to a trained run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tf_bignas.model import Supernet
from tf_bignas.run.workdir import MODEL_FILE, WEIGHTS_FILE, WorkdirError, open_workdir


def _logits(wd, arch):
    images = next(iter(wd.eval_dataset("test", arch.resolution, 8)))["image"]
    wd.supernet.load_bn_stats(arch)
    return wd.supernet(images, arch=arch).numpy()


def test_open_gives_config_space_weights_and_calibrated_stats(trained_workdir):
    wd = open_workdir(trained_workdir)
    assert wd.finished and wd.results["step"] == 48
    assert wd.space.name == "bignas_tiny" and wd.num_classes == 10
    assert wd.config.train.batch_size == 16 and wd.config.data.minival == 200
    largest, smallest = wd.space.largest(), wd.space.smallest()
    assert largest in wd.supernet.bn_stats and smallest in wd.supernet.bn_stats
    assert wd.weights.endswith(WEIGHTS_FILE) and len(wd.weights_digest) == 16
    # The weights are the trained ones: a fresh supernet gives other logits.
    fresh = Supernet.from_config(wd.supernet.get_config())
    fresh.bn_stats = wd.supernet.bn_stats
    fresh.load_bn_stats(largest)
    images = next(iter(wd.eval_dataset("test", 32, 8)))["image"]
    assert not np.allclose(fresh(images, arch=largest).numpy(), _logits(wd, largest))


def test_model_json_holds_the_space_with_its_overrides(trained_workdir):
    with open(os.path.join(trained_workdir, MODEL_FILE), encoding="utf-8") as f:
        spec = json.load(f)
    net = Supernet.from_config(spec)
    assert net.space == open_workdir(trained_workdir).space
    assert spec["num_classes"] == 10 and spec["space"]["train_resolutions"] == [16, 32]


def test_a_workdir_from_before_model_json_still_opens(trained_workdir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_workdir, old)
    os.remove(old / MODEL_FILE)
    wd, new = open_workdir(str(old)), open_workdir(trained_workdir)
    assert wd.space == new.space and wd.num_classes == new.num_classes
    arch = new.space.smallest()
    np.testing.assert_allclose(_logits(wd, arch), _logits(new, arch), atol=1e-6)


def test_unfinished_and_missing_workdirs_are_clear_errors(trained_workdir, tmp_path):
    with pytest.raises(WorkdirError, match="does not exist"):
        open_workdir(str(tmp_path / "nope"))
    with pytest.raises(WorkdirError, match="no config.json"):
        open_workdir(str(tmp_path))
    partial = tmp_path / "partial"
    shutil.copytree(trained_workdir, partial)
    os.remove(partial / WEIGHTS_FILE)
    with pytest.raises(WorkdirError, match="no finished training"):
        open_workdir(str(partial))
    wd = open_workdir(str(partial), allow_unfinished=True)
    assert wd.weights.endswith("ckpt-48") and not wd.finished
    arch = wd.space.largest()
    np.testing.assert_allclose(
        _logits(wd, arch), _logits(open_workdir(trained_workdir), arch), atol=1e-5
    )


def test_a_model_only_restore_of_a_checkpoint_gets_every_weight(trained_workdir):
    import tensorflow as tf

    wd = open_workdir(trained_workdir)
    fresh = Supernet.from_config(wd.supernet.get_config())
    latest = tf.train.latest_checkpoint(os.path.join(trained_workdir, "checkpoints"))
    tf.train.Checkpoint(model=fresh).restore(latest).expect_partial()
    trainable = {v.path: v.numpy() for v in wd.supernet.trainable_weights}
    assert len(trainable) == len(fresh.trainable_weights) > 0
    for v in fresh.trainable_weights:  # blocks included, not only the stem and head
        np.testing.assert_array_equal(v.numpy(), trainable[v.path])
