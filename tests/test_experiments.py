"""experiments/ablations.py: variants as config switches, resumable runs, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiments import ablation_lib as ablations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_variant_is_one_valid_switch_of_the_base_config():
    from conftest import quickstart_config

    from tf_bignas.train.config import validate_config

    assert ablations.run_flags("full", ["train.epochs=1"], 0.2) == ["--config.train.epochs=1"]
    assert ablations.run_flags("he_init_lr30", [], 0.2) == [
        "--config.model.zero_init_last_bn=False",
        "--config.optimizer.base_lr=0.06",
    ]
    for variant in ablations.VARIANTS:
        config = quickstart_config()
        for flag in ablations.run_flags(variant, [], 0.2):
            key, value = flag.removeprefix("--config.").split("=")
            section, name = key.split(".")
            assert name in config[section], flag  # an existing key, not a new one
            config[section][name] = type(config[section][name])(eval(value))  # noqa: S307
        validate_config(config)
    with pytest.raises(ValueError, match="unknown variant 'bogus'; allowed"):
        ablations.run_flags("bogus", [], 0.2)


def test_two_variants_run_resume_and_report(tmp_path):
    report = tmp_path / "ablations.md"
    cmd = [
        sys.executable, "-m", "experiments.ablations", f"--root={tmp_path / 'runs'}",
        f"--config={ROOT}/configs/quickstart.py", "--variants=full,hard_labels", "--seeds=0",
        f"--report={report}", "--override=train.batch_size=16", "--override=train.epochs=0.02",
        "--override=train.calibration_images=32", "--override=train.calibration_batch_size=16",
        "--override=train.eval_batches=2", "--override=train.eval_every=3",
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 finished runs" in done.stdout
    text = report.read_text()
    assert "| full | 0 |" in text and "| hard_labels | 0 |" in text
    assert "smallest n/a (one seed)" in text
    # The summary row: means and their differences from the full method (signed).
    hard = [line for line in text.splitlines() if line.startswith("| hard_labels | ")][-1]
    cells = [c.strip() for c in hard.strip("|").split("|")]
    assert len(cells) == 5 and cells[2][0] in "+-" and cells[4][0] in "+-", hard
    assert (tmp_path / "ablations.png").stat().st_size > 10_000
    record = json.loads((tmp_path / "runs" / "hard_labels_s0.json").read_text())
    assert record["attempts"] == 1 and record["seconds"] > 0
    config = json.loads((tmp_path / "runs" / "hard_labels_s0" / "config.json").read_text())
    assert config["sandwich"]["inplace_distillation"] is False
    # Finished runs are skipped when the command runs again.
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "==" not in again.stdout
    record = json.loads((tmp_path / "runs" / "hard_labels_s0.json").read_text())
    assert record["attempts"] == 1
