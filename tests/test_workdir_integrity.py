"""A training run never corrupts, mixes or silently restarts the run its workdir holds.

Most tests call the library in-process on a copy of one tiny run (2 steps of
the quickstart, batch 16, a checkpoint after each step) and need no training
of their own; a handful run the programs to check the exit code and the
one-line message.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT, quickstart_config

from tf_bignas.run import lock
from tf_bignas.run import record as run_record_lib
from tf_bignas.run import workdir as wd
from tf_bignas.run.config import default_config
from tf_bignas.run.validation import (
    ConfigError,
    flatten,
    option_rules,
    validate_options,
    validate_workdir_path,
)
from tf_bignas.space import InvalidArchError, get_space
from tf_bignas.train import integrity
from tf_bignas.train.loop import NonFiniteLossError, train

# A cheap run: no random children (the largest and smallest child only).
CHEAP = dict(
    train__batch_size=16,
    train__checkpoint_every=1,
    train__log_every=1,
    train__keep_checkpoints=5,
    sandwich__num_random=0,
    runtime__threads=1,
)


def _config(seed: int = 0, **overrides):
    config = quickstart_config(**{**CHEAP, **overrides})
    config.seed = seed
    return config


def _snapshot(path: pathlib.Path) -> dict[str, tuple[int, str]]:
    """Every file under `path`: (mode, sha256 of its bytes)."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = (
                p.stat().st_mode,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory) -> pathlib.Path:
    """A run stopped after 2 steps: checkpoints ckpt-1 and ckpt-2 (read-only: copy it)."""
    workdir = tmp_path_factory.mktemp("integrity") / "run"
    result = train(_config(), str(workdir), max_steps=2, log=lambda line: None)
    assert result.step == 2 and not result.finished
    return workdir


@pytest.fixture
def run_copy(two_steps, tmp_path) -> pathlib.Path:
    target = tmp_path / "run"
    shutil.copytree(two_steps, target)
    return target


# ---- the run record ----------------------------------------------------------------


def test_the_workdir_records_its_run_with_ordinary_file_modes(two_steps):
    record = json.loads((two_steps / "run.json").read_text())
    assert record["format"] == run_record_lib.RUN_FORMAT
    assert record["seed"] == 0 and record["global_batch_size"] == 16
    assert record["num_classes"] == 10
    assert record["space"]["name"] == "bignas_tiny"
    assert record["config"]["train"]["batch_size"] == 16
    assert "train.log_every" in record["resumable_options"]
    assert json.loads((two_steps / "config.json").read_text()) == record["config"]
    assert not (two_steps / "run.lock").exists()  # released at the end
    umask = os.umask(0)
    os.umask(umask)
    for name in ("run.json", "config.json", "model.json"):
        assert (two_steps / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_resume_with_other_values_is_refused_before_anything_is_written(run_copy):
    before = _snapshot(run_copy)
    config = _config(seed=1, train__batch_size=32, train__log_every=7)
    with pytest.raises(run_record_lib.ResumeMismatchError) as e:
        train(config, str(run_copy), max_steps=2, log=lambda line: None)
    message = str(e.value)
    assert "seed: 0 in the workdir, 1 now" in message
    assert "train.batch_size: 16 in the workdir, 32 now" in message
    assert "log_every: 1 in the workdir" not in message  # may change on resume
    assert "Options that may change on resume: train.log_every" in message
    assert _snapshot(run_copy) == before


def test_a_space_redefined_since_the_run_is_a_difference(run_copy):
    record = json.loads((run_copy / "run.json").read_text())
    record["space"]["stages"][0]["depths"] = [1, 2, 3]
    (run_copy / "run.json").write_text(json.dumps(record))
    with pytest.raises(run_record_lib.ResumeMismatchError, match=r"space\.stages\[0\]\.depths"):
        train(_config(), str(run_copy), max_steps=2, log=lambda line: None)


def test_a_folder_that_holds_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(run_record_lib.ResumeMismatchError, match="holds no training run"):
        train(_config(), str(tmp_path), max_steps=1, log=lambda line: None)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_written_files_get_the_modes_of_ordinary_files(tmp_path):
    from tf_bignas.common.files import atomic_write_bytes, atomic_write_json
    from tf_bignas.model import BNStatsStore

    umask = os.umask(0o027)  # a stricter umask than usual: it must be honoured
    try:
        atomic_write_json(str(tmp_path / "results.json"), {"a": 1})
        atomic_write_bytes(str(tmp_path / "results.json"), b"{}")  # replacing keeps it so
        BNStatsStore().save(str(tmp_path / "bn_stats.npz"))
    finally:
        os.umask(umask)
    for name in ("results.json", "bn_stats.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    assert sorted(os.listdir(tmp_path)) == ["bn_stats.npz", "results.json"]  # no temp files


def test_a_remote_workdir_record_is_checked_the_same_way():
    workdir = "ram://integrity_record/run"
    config = _config()
    record = run_record_lib.run_record(config, get_space("bignas_tiny").to_dict(), 10)
    assert not run_record_lib.check_resume(workdir, record)  # nothing there yet
    run_record_lib.write_record(workdir, record, config)
    assert run_record_lib.check_resume(workdir, record)
    other = run_record_lib.run_record(_config(seed=3), get_space("bignas_tiny").to_dict(), 10)
    with pytest.raises(run_record_lib.ResumeMismatchError, match="seed: 0 in the workdir, 3 now"):
        run_record_lib.check_resume(workdir, other)


# ---- the lock ----------------------------------------------------------------------


def test_a_second_run_is_refused_while_the_first_holds_the_lock(run_copy):
    before = _snapshot(run_copy)
    with lock.locked(str(run_copy)):
        with pytest.raises(lock.WorkdirBusyError) as e:
            train(_config(), str(run_copy), max_steps=2, log=lambda line: None)
        assert (run_copy / "run.lock").exists()
    message = str(e.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()!r} since 20" in message
    assert not (run_copy / "run.lock").exists()
    assert _snapshot(run_copy) == before


def test_a_lock_naming_another_host_is_not_taken_over(run_copy):
    lock_file = run_copy / "run.lock"
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "2020-01-01"}))
    with pytest.raises(lock.WorkdirBusyError, match="cannot be checked") as e:
        train(_config(), str(run_copy), max_steps=2, log=lambda line: None)
    assert f"delete {lock_file}" in str(e.value)
    assert json.loads(lock_file.read_text())["host"] == "elsewhere"


def test_remote_lock_is_exclusive_and_released():
    path = "ram://integrity_test/run"
    first = lock.WorkdirLock(path)
    first.acquire()
    with pytest.raises(lock.WorkdirBusyError, match=f"pid {os.getpid()}"):
        lock.WorkdirLock(path).acquire()
    first.release()
    assert not tf.io.gfile.exists(f"{path}/run.lock")


# ---- checkpoints ----------------------------------------------------------------------


def test_a_stale_lock_and_a_damaged_newest_checkpoint_are_named_and_recovered(run_copy):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = run_copy / "run.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": "x"}))
    ckpt = run_copy / "checkpoints"
    data = ckpt / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])  # truncated, as by a full disk
    damaged = data.read_bytes()
    lines = []
    # log_every differs from the run's: a resumable option.
    result = train(_config(train__log_every=5), str(run_copy), max_steps=1, log=lines.append)
    text = "\n".join(lines)
    assert f"pid {gone.pid}" in text and "was stale" in text and "taking it over" in text
    assert f"checkpoint {ckpt / 'ckpt-2'} is damaged (IndexError: Read less bytes" in text
    assert f"resuming from {ckpt / 'ckpt-1'}, the newest intact checkpoint" in text
    assert result.step == 1
    assert tf.train.latest_checkpoint(str(ckpt)).endswith("ckpt-1")
    moved = list((ckpt / "damaged").iterdir())
    assert sorted(p.name.split(".")[0] for p in moved) == ["ckpt-2", "ckpt-2"]
    assert any(p.read_bytes() == damaged for p in moved)  # kept, byte for byte
    assert not lock.exists()
    assert json.loads((run_copy / "config.json").read_text())["train"]["log_every"] == 5


def test_when_no_checkpoint_is_intact_nothing_is_changed(run_copy):
    for n in (1, 2):
        index = run_copy / "checkpoints" / f"ckpt-{n}.index"
        index.write_bytes(index.read_bytes()[:50])
    before = _snapshot(run_copy / "checkpoints")
    with pytest.raises(wd.WorkdirError, match="no checkpoint in .* can be restored"):
        train(_config(), str(run_copy), max_steps=2, log=lambda line: None)
    assert _snapshot(run_copy / "checkpoints") == before


def test_checkpoint_files_without_a_state_file_are_refused(run_copy):
    (run_copy / "checkpoints" / "checkpoint").unlink()
    before = _snapshot(run_copy)
    with pytest.raises(wd.WorkdirError) as e:
        train(_config(), str(run_copy), max_steps=2, log=lambda line: None)
    message = str(e.value)
    assert "ckpt-1, ckpt-2" in message and "state file" in message and "is missing" in message
    assert 'model_checkpoint_path: "ckpt-2"' in message
    assert _snapshot(run_copy) == before


# ---- the state guard ---------------------------------------------------------------------


def test_unbounded_weights_are_never_checkpointed_and_the_last_good_one_resumes(tmp_path):
    # A learning rate of 1e9: the largest weight is ~4e4 after step 1, ~2e5 after step 2.
    config = _config(
        optimizer__base_lr=1e9, optimizer__initial_accumulator=0.0, train__max_abs_weight=1e5
    )
    workdir = tmp_path / "diverging"
    lines = []
    with pytest.raises(NonFiniteLossError) as e:
        train(config, str(workdir), max_steps=5, log=lines.append)
    message = str(e.value)
    last_logged = [line for line in lines if line.startswith("step ")][-1].split()[1]
    assert last_logged == "2/5"
    assert "weights are not bounded" in message and "after step 2;" in message
    assert f"last good checkpoint is {workdir / 'checkpoints' / 'ckpt-1'}" in message
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-1")
    reader = tf.train.load_checkpoint(str(workdir / "checkpoints" / "ckpt-1"))
    names = [
        n
        for n in reader.get_variable_to_shape_map()
        if n.startswith(("model/", "optimizer/")) and "OBJECT_CONFIG" not in n
    ]
    assert len(names) > 50
    for name in names:
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)) and np.max(np.abs(value), initial=0) < 1e15, name
    # "Last good" resumes: restored and checked healthy, no step taken.
    lines.clear()
    assert train(config, str(workdir), max_steps=1, log=lines.append).step == 1
    assert any("resumed from" in line and line.endswith("at step 1") for line in lines)


def test_the_guard_names_what_is_not_finite():
    w = tf.Variable(np.ones((2, 2), np.float32), name="kernel")
    bn = tf.Variable(np.ones(2, np.float32), name="moving_variance")
    velocity = tf.Variable(np.ones(2, np.float32), name="velocity")
    assert integrity.unhealthy_state([w], [bn], [velocity], 10.0) is None
    velocity.assign([1.0, np.inf])
    assert "a gradient was not finite" in integrity.unhealthy_state([w], [bn], [velocity], 10.0)
    bn.assign([np.nan, 1.0])
    assert "moving_variance" in integrity.unhealthy_state([w], [bn], [], 10.0)
    w.assign([[1.0, 20.0], [0.0, 0.0]])
    assert "max |w| = 20" in integrity.unhealthy_state([w], [], [], 10.0)


# ---- up-front validation -----------------------------------------------------------------


def test_every_option_has_a_rule():
    missing = sorted(set(flatten(default_config())) - set(option_rules()))
    assert not missing, f"options without a validation rule: {missing}"
    validate_options(default_config())
    validate_options(_config())


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"train__batch_size": 0},
            "config.train.batch_size = 0 is out of range; allowed: an integer >= 1",
        ),
        ({"train__checkpoint_every": 0}, "config.train.checkpoint_every = 0 is out of range"),
        ({"train__log_every": 0}, "config.train.log_every = 0 is out of range"),
        (
            {"train__epochs": -1.0},
            "config.train.epochs = -1.0 is out of range; allowed: a number > 0",
        ),
        ({"train__keep_checkpoints": 0}, "config.train.keep_checkpoints = 0"),
        ({"train__eval_every": -5}, "config.train.eval_every = -5"),
        ({"optimizer__base_lr": 0.0}, "config.optimizer.base_lr = 0.0"),
        ({"model__dropout_rate": 1.0}, "config.model.dropout_rate = 1.0"),
        (
            {"model__train_resolutions": ("abc",)},
            "config.model.train_resolutions = ('abc',) is of the wrong type",
        ),
        ({"model__space": "nope"}, "config.model.space = 'nope' is out of range; allowed: one of"),
        ({"runtime__threads": -1}, "config.runtime.threads = -1"),
        ({"data__crop_scale": (0.9, 0.2)}, "config.data.crop_scale = (0.9, 0.2) is not allowed"),
        ({"data__minival": 2.5}, "config.data.minival = 2.5 is not allowed"),
        (
            {"data__source": ""},
            "config.data.source = '' is out of range; allowed: a non-empty string",
        ),
    ],
)
def test_bad_options_are_named_with_the_value_and_the_allowed_range(tmp_path, overrides, expected):
    workdir = tmp_path / "new"
    with pytest.raises(ConfigError) as e:
        train(_config(**overrides), str(workdir), log=lambda line: None)
    assert expected in str(e.value)
    assert not workdir.exists()


def test_max_steps_must_be_positive(tmp_path):
    with pytest.raises(
        ConfigError, match="max_steps = -1 is out of range; allowed: an integer >= 1"
    ):
        train(_config(), str(tmp_path / "new"), max_steps=-1)
    assert not (tmp_path / "new").exists()


def test_workdir_paths_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="workdir '' is empty"):
        validate_workdir_path("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        validate_workdir_path(str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="is a file"):
        validate_workdir_path(str(tmp_path / "file" / "run"))
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.access(readonly, os.W_OK):  # root ignores modes: use a read-only mount
        readonly = pathlib.Path("/proc/sys")
        if os.access(readonly, os.W_OK):
            pytest.skip("no read-only folder to test with")
    with pytest.raises(ConfigError, match="is not writable"):
        validate_workdir_path(str(readonly))
    with pytest.raises(ConfigError, match="cannot create workdir .* is not writable"):
        validate_workdir_path(str(readonly / "run"))


def test_a_dataset_with_one_class_is_refused(tmp_path, isolated_index_cache):
    from PIL import Image

    folder = tmp_path / "data" / "train" / "only_class"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    workdir = tmp_path / "new"
    with pytest.raises(
        ConfigError, match="has 1 class\\(es\\); training a classifier needs at least 2"
    ):
        train(_config(data__source=f"folder:{tmp_path / 'data'}"), str(workdir), log=print)
    assert not workdir.exists()


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("depths", [1.5, 2, 2], "depths[0] = 1.5 is not an integer"),
        ("resolution", 224.7, "resolution = 224.7 is not an integer"),
        ("resolution", "32", "resolution = '32' is not an integer"),
        ("widths", [True, 16, 24, 32, 64], "widths[0] = True is not an integer"),
        ("expand_ratios", [["6", 6], [6, 6], [6, 6]], "expand_ratios[0][0] = '6' is not a number"),
    ],
)
def test_arch_values_are_never_truncated(field, value, expected):
    space = get_space("bignas_tiny")
    arch = {**space.largest().to_dict(), field: value}
    with pytest.raises(InvalidArchError) as e:
        space.load_arch(json.dumps(arch))
    assert expected in str(e.value)
    with pytest.raises(InvalidArchError, match="not a colon-separated list"):
        space.load_arch("32 2:1.5:2 16:16:24:32:64 5:5:5")


# ---- the programs ---------------------------------------------------------------------------


def _programs() -> list[pathlib.Path]:
    return [
        p
        for folder in ("pipelines", "tools")
        for p in sorted((REPO_ROOT / folder).glob("*.py"))
        if 'if __name__ == "__main__":' in p.read_text()
    ]


def test_every_program_ends_expected_errors_through_cli_run():
    programs = _programs()
    assert {p.name for p in programs} >= {"train.py", "arch_info.py", "inspect_data.py"}
    for path in programs:
        tree = ast.parse(path.read_text())
        runs = {"cli.run"} | {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "tools.cli"
            for alias in node.names
            if alias.name == "run"
        }
        calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert calls & runs and "app.run" not in calls, f"{path} does not end through cli.run"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def test_train_program_bad_option_is_one_line_and_exit_2_traceback_only_with_verbose(tmp_path):
    workdir = tmp_path / "new"
    args = [
        "--config=configs/quickstart.py",
        f"--workdir={workdir}",
        "--config.train.checkpoint_every=0",
    ]
    out = _run("pipelines.train", *args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert _error_lines(out.stderr) == [
        "train.py: error: config.train.checkpoint_every = 0 is out of range; allowed: an "
        "integer >= 1 (steps)"
    ]
    assert "Traceback" not in out.stderr
    assert not workdir.exists()
    verbose = _run("pipelines.train", *args, "--verbose")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_train_program_refuses_a_busy_workdir(tmp_path):
    workdir = tmp_path / "busy"
    with lock.locked(str(workdir)):
        out = _run(
            "pipelines.train",
            "--config=configs/quickstart.py",
            f"--workdir={workdir}",
            "--max_steps=3",
        )
        assert os.listdir(workdir) == ["run.lock"]  # nothing written by the refused run
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = _error_lines(out.stderr)
    assert f"is in use by another run: pid {os.getpid()} on host" in line
    assert "Traceback" not in out.stderr
    assert not workdir.exists()  # the lock created the folder, and removed it with itself


def test_inspect_data_names_a_bad_resolution():
    out = _run("tools.inspect_data", "--source=embedded", "--resolutions=abc")
    assert out.returncode == 2
    assert _error_lines(out.stderr) == [
        "inspect_data.py: error: --resolutions=abc: 'abc' is not a positive integer; allowed: "
        "comma-separated positive integers, e.g. --resolutions=24,32"
    ]
