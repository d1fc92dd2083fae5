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

    from tf_bignas.run.config import validate_config

    assert ablations.run_flags("full", ["train.epochs=1"], 0.2) == ["--config.train.epochs=1"]
    assert ablations.run_flags("he_init_lr30", [], 0.2) == [
        "--config.model.zero_init_last_bn=False",
        "--config.model.stage_shortcuts=False",
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
        f"--report={report}", f"--keep={tmp_path / 'kept'}", "--override=train.batch_size=16", "--override=train.epochs=0.02",
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
    kept = tmp_path / "kept" / "hard_labels_s0"  # the small files, kept beside the report
    assert sorted(p.name for p in kept.iterdir()) == ["curves.json", "record.json", "results.json"]
    config = json.loads((tmp_path / "runs" / "hard_labels_s0" / "config.json").read_text())
    assert config["sandwich"]["inplace_distillation"] is False
    # Finished runs are skipped when the command runs again.
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "==" not in again.stdout
    record = json.loads((tmp_path / "runs" / "hard_labels_s0.json").read_text())
    assert record["attempts"] == 1


SMALL_SEARCH = [
    "--search_flag=--config.coarse.resolutions=(16,)",
    "--search_flag=--config.coarse.depth_settings=(0.0,1.0)",
    "--search_flag=--config.coarse.width_settings=(0.0,)",
    "--search_flag=--config.coarse.kernel_settings=(0.0,)",
    "--search_flag=--config.fine.mutations=1",
    "--search_flag=--config.selection_examples=64",
    "--search_flag=--config.test_batches=1",
]


@pytest.fixture(scope="module")
def searched_copy(trained_workdir, tmp_path_factory) -> str:
    """A copy of the tiny trained run (the search writes into its workdir)."""
    import shutil

    path = str(tmp_path_factory.mktemp("children") / "supernet")
    shutil.copytree(trained_workdir, path)
    return path


def _program(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_table3_trains_the_searched_children_alone_and_reports(searched_copy, tmp_path):
    from experiments import children_lib as cl

    root, report = tmp_path / "runs", tmp_path / "table3.md"
    args = [f"--supernet={searched_copy}", f"--root={root}", "--budgets=mflops:0.3,0.6,1"]
    args += [f"--report={report}", "--evals=2", *SMALL_SEARCH]
    done = _program("experiments.from_scratch", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    children = cl.searched_children(searched_copy)
    assert [c["budget"] for c in children] == ["mflops:0.3", "mflops:0.6", "mflops:1"]
    assert all(c["macs"] / 1e6 <= float(c["budget"][7:]) for c in children)
    rows = [line for line in report.read_text().splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "largest (teacher)",
        "small",
        "medium",
        "large",
    ]
    teacher = json.loads((root / "teacher_s0" / "results.json").read_text())
    assert teacher["total_steps"] == 48 and teacher["targets"] == "labels"  # the run's 0.2 epochs
    assert [p[0] for p in teacher["curve"]] == [0, 24, 48]
    for name in cl.CHILD_NAMES:
        distill = json.loads((root / f"distill_{name}_s0" / "results.json").read_text())
        assert distill["teacher"] == str(root / "teacher_s0" / "model.keras")
        arch = next(
            c["arch"] for c in children if c["budget"] in rows[1 + cl.CHILD_NAMES.index(name)]
        )
        assert distill["arch"] == arch.to_paper_notation()
    # The saved teacher is the model that was scored: same top-1 when loaded back.
    import keras

    from tf_bignas.run.workdir import read_config

    model = keras.models.load_model(str(root / "teacher_s0" / "model.keras"), compile=False)
    test = cl.test_dataset(read_config(searched_copy), int(model.inputs[0].shape[1]))
    assert cl.evaluator(model)(test) == pytest.approx(teacher["test_top1"])
    assert (tmp_path / "table3.png").stat().st_size > 10_000
    # Finished runs are read back, not rerun: the same report (also with --report_only).
    before = report.read_text()
    again = _program("experiments.from_scratch", *args, "--report_only")
    assert again.returncode == 0, again.stderr[-3000:]

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("|")]

    assert table(report.read_text()) == table(before) and len(table(before)) == 2 + 4


def test_table2_finetunes_from_the_sliced_weights(searched_copy, tmp_path):
    from experiments import children_lib as cl

    root, report = tmp_path / "runs", tmp_path / "table2.md"
    args = [f"--supernet={searched_copy}", f"--root={root}", "--budgets=mflops:0.3,0.6,1"]
    args += [f"--report={report}", "--lr_fractions=0.05", "--epochs=0.1", "--evals=1"]
    done = _program("experiments.finetune", *args, *SMALL_SEARCH)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in cl.CHILD_NAMES:
        run = json.loads((root / f"finetune_{name}_lr0.05_s0" / "results.json").read_text())
        sliced = json.loads(
            next(
                root.glob(f"sliced_{run['arch'].replace(' ', '_').replace(':', '-')}.json")
            ).read_text()
        )
        # Finetuning starts from the sliced child itself: weights and calibrated BN statistics.
        assert run["top1_before"] == sliced["test_top1"]
        assert run["total_steps"] == 24 and run["lr_fraction"] == 0.05
    text = report.read_text()
    assert "| LR 0.05 x peak % | change |" in text
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 1 + 3


def test_a_child_trained_alone_learns_and_resumes_where_it_stopped(tmp_path):
    from conftest import quickstart_config

    from experiments import children_lib as cl
    from tf_bignas.run.config import build_space

    config = quickstart_config(train__batch_size=32)
    config.schedule.warmup_epochs = 0.0
    config.optimizer.base_lr = 1.024  # 0.008 at batch 32: a short run that learns
    arch = build_space(config).smallest()
    run = cl.ChildRun("alone", arch, "scratch", epochs=2.4, seed=3)  # 300 steps
    half = cl.train_child(config, run, str(tmp_path / "a"), evals=3, max_steps=130, log=print)
    assert half == {"name": "alone", "finished": False, "step": 130, "total_steps": 300}
    whole = cl.train_child(config, run, str(tmp_path / "a"), evals=3, log=print)
    straight = cl.train_child(config, run, str(tmp_path / "b"), evals=3, log=print)
    # Digits, chance 0.1; the BN moving averages (momentum 0.99) still lag at 300 steps.
    assert whole["top1_before"] < 0.2 and whole["test_top1"] > 0.3
    # Resumed (weights, optimizer, input position and dropout's random state
    # checkpointed) = run straight through, exactly.
    assert [p[0] for p in whole["curve"]] == [0, 100, 200, 300]
    assert whole["curve"] == straight["curve"]
    assert cl.train_child(config, run, str(tmp_path / "a"), max_steps=1) == whole  # read back
    with pytest.raises(ValueError, match="targets='teacher' needs teacher_path"):
        cl.ChildRun("x", arch, "scratch", targets="teacher")
    with pytest.raises(
        ValueError, match=r"init='bogus' is unknown; allowed: \['scratch', 'sliced'\]"
    ):
        cl.ChildRun("x", arch, "bogus")


def test_search_methods_compares_the_three_at_the_same_budgets(searched_copy, tmp_path):
    from experiments import children_lib as cl

    report = tmp_path / "search.md"
    args = [f"--supernets={searched_copy}", "--budgets=mflops:0.3,1", f"--report={report}"]
    done = _program("experiments.search_methods", *args, *SMALL_SEARCH)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    assert (tmp_path / "search_supernet_pareto.png").stat().st_size > 10_000
    assert "[search_supernet_pareto.png](search_supernet_pareto.png)" in text
    rows = {}
    for method in cl.METHODS:
        selection = cl.read_json(f"{searched_copy}/search/selection_{method}.json")
        assert selection["method"] == method
        assert [b["budget"] for b in selection["budgets"]] == ["mflops:0.3", "mflops:1"]
        timing = cl.read_json(cl.search_time_path(searched_copy, method))
        assert timing["seconds"] > 0
        rows[method] = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        # The mean row quotes each budget's chosen child's test top-1 (one supernet: itself).
        cells = [c.strip() for c in rows[method].strip("|").split("|")]
        assert cells[1] == str(selection["num_evaluated"])
        assert [float(c) for c in cells[3:]] == [
            pytest.approx(b["test_top1"] * 100, abs=0.006) for b in selection["budgets"]
        ]
