"""Export of children: files, verification on real digits, built-in ops, resume, errors.

One export of the smallest child of the tiny trained supernet (16x16 digits)
is shared by the tests of this module; each test checks the files
independently of what `verification.json` claims.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_bignas.common.files import sha256_path
from tf_bignas.data.normalization import DEFAULT_NORMALIZATION
from tf_bignas.export import children as children_lib
from tf_bignas.export import export_lib, host_benchmark, models
from tf_bignas.export import tflite as tflite_lib
from tf_bignas.export.errors import ExportError, UnsupportedOpError
from tf_bignas.model import cost as cost_lib
from tf_bignas.model.slicing import build_child_model, extract_child
from tf_bignas.run import card as card_lib
from tf_bignas.run.workdir import open_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Verified on all 1,000 test digits. The 48-step supernet's logits lie close
# together (std about 0.2), so float16 and int8 rounding flip more top-1s than
# in a trained child (the quickstart's agree 99-100% and 98%; benchmarks/README.md):
# the agreement thresholds are lowered for it.
THRESHOLDS = export_lib.Thresholds(fp16_min_agreement=0.97, int8_min_agreement=0.8)
OPTIONS = export_lib.ExportOptions(representative_examples=64, thresholds=THRESHOLDS)
QUIET = dict(log=lambda line: None)


@pytest.fixture(scope="module")
def workdir(trained_workdir):
    return open_workdir(trained_workdir)


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    """The smallest child exported in every format (uint8 int8 io)."""
    out = str(tmp_path_factory.mktemp("export"))
    child = children_lib.arch_child(workdir, "smallest")
    result = export_lib.export_child(workdir, child, out, OPTIONS, **QUIET)
    return result


def _eval_images(workdir, resolution: int, n: int = 128):
    """Raw float pixels and labels of the first `n` digits of the 'test' split."""
    ds = workdir.eval_dataset(
        "test", resolution, n, normalization=export_lib.RAW_PIXELS, cache=False
    )
    batch = next(iter(ds))
    return batch["image"].numpy(), batch["label"].numpy()


def _keras_child_logits(workdir, arch, raw: np.ndarray) -> np.ndarray:
    child = extract_child(workdir.supernet, arch)
    return np.asarray(child(DEFAULT_NORMALIZATION.apply_numpy(raw), training=False))


def test_every_format_written_verified_and_described(exported, workdir):
    folder = exported.folder
    names = ["child.keras", "saved_model", "model_fp32.tflite", "model_fp16.tflite",
             "model_int8.tflite", "built_reference_fp32.tflite", "verification.json",
             "model_card.json", "model_card.md"]  # fmt: skip
    for name in names:
        assert os.path.exists(os.path.join(folder, name)), name
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    with open(os.path.join(folder, "verification.json")) as f:
        v = json.load(f)
    assert v["complete"] and v["passed"] and v["split"] == "test"
    files = v["files"]
    assert files["fp32"]["max_abs_diff_vs_keras_child"] <= 1e-4
    assert files["fp16"]["top1_agreement_vs_fp32"] >= THRESHOLDS.fp16_min_agreement
    assert files["int8"]["top1_agreement_vs_fp32"] >= THRESHOLDS.int8_min_agreement
    for q in ("fp32", "fp16", "int8"):
        assert files[q]["num_examples"] == 1000
        assert 0.0 <= files[q]["top1"] <= files[q]["top5"] <= 1.0
    assert files["fp32"]["top1"] == pytest.approx(files["fp32"]["keras_child"]["top1"], abs=0.002)

    card = exported.card
    arch = exported.child.arch
    with open(os.path.join(folder, "model_card.json")) as f:
        assert json.load(f) == card
    assert card["arch"] == arch.to_dict() and card["paper_notation"] == arch.to_paper_notation()
    assert card["resolution"] == 16
    assert card["macs"] == cost_lib.macs(workdir.space, arch, 10, workdir.supernet.stage_shortcuts)
    assert card["params"] == extract_child(workdir.supernet, arch).count_params()
    for key, entry in card["files"].items():
        assert entry["bytes"] == models.path_bytes(os.path.join(folder, entry["file"])), key
    assert card["accuracy"]["int8"]["top1"] == files["int8"]["top1"]
    assert card["provenance"]["weights_digest"] == workdir.weights_digest
    assert card["provenance"]["workdir"] == os.path.abspath(workdir.path)
    contract = card["input_contract"]
    assert contract["normalization_folded"] and contract["pixel_range"] == [0, 255]
    int8_in = contract["files"]["int8"]["input"]
    assert int8_in["dtype"] == "uint8" and int8_in["shape"] == [-1, 16, 16, 3]
    with open(os.path.join(folder, "model_card.md")) as f:
        md = f.read()
    assert arch.to_paper_notation() in md and "model_int8.tflite" in md


def test_fp32_file_matches_the_keras_child_on_real_digits(exported, workdir):
    raw, labels = _eval_images(workdir, 16)
    reference = _keras_child_logits(workdir, exported.child.arch, raw)
    runner = tflite_lib.TFLiteRunner(path=os.path.join(exported.folder, "model_fp32.tflite"))
    assert runner.input["dtype"] == np.float32
    # Raw pixels straight in: the normalisation is inside the file.
    logits = runner.logits(raw)
    assert np.abs(logits - reference).max() <= 1e-4
    # The training run evaluated this child (same BN statistics) on the same
    # first 128 digits of the split: the file classifies them alike.
    with open(os.path.join(workdir.path, "results.json")) as f:
        run_top1 = json.load(f)["children"]["smallest"]["top1"]
    assert (logits.argmax(-1) == labels).mean() == pytest.approx(run_top1, abs=1 / 128)


def test_keras_and_saved_model_take_raw_pixels(exported, workdir):
    raw, _ = _eval_images(workdir, 16, 32)
    reference = _keras_child_logits(workdir, exported.child.arch, raw)
    loaded = keras.models.load_model(os.path.join(exported.folder, "child.keras"))
    assert np.abs(np.asarray(loaded(raw)) - reference).max() <= 1e-4
    serve = tf.saved_model.load(os.path.join(exported.folder, "saved_model")).signatures[
        "serving_default"
    ]
    out = serve(image=tf.constant(raw))["logits"].numpy()
    assert out.shape == (32, 10) and np.abs(out - reference).max() <= 1e-4


def test_int8_file_takes_raw_uint8_pixels(exported, workdir):
    raw, _ = _eval_images(workdir, 16)
    reference = _keras_child_logits(workdir, exported.child.arch, raw)
    interpreter = tflite_lib.TFLiteRunner(
        path=os.path.join(exported.folder, "model_int8.tflite")
    ).interpreter
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.uint8
    # Calibrated on real digits (0 and 255 both occur): the uint8 input is the pixel itself.
    assert inp["quantization"] == (1.0, 0)
    logits = []
    for image in raw.astype(np.uint8):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        q = interpreter.get_tensor(out["index"])[0].astype(np.float32)
        logits.append((q - out["quantization"][1]) * out["quantization"][0])
    logits = np.stack(logits)
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.95
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= THRESHOLDS.int8_min_agreement


def test_uint8_input_models_take_raw_pixels_as_they_are(workdir, tmp_path):
    options = dataclasses.replace(
        OPTIONS, input_dtype="uint8", quantizations=("fp32", "int8"), verify_examples=64,
        check_built=False,
    )  # fmt: skip
    child = children_lib.arch_child(workdir, "smallest")
    result = export_lib.export_child(workdir, child, str(tmp_path), options, **QUIET)
    assert result.verification["files"]["fp32"]["max_abs_diff_vs_keras_child"] <= 1e-4
    raw, _ = _eval_images(workdir, 16, 32)
    pixels = raw.astype(np.uint8)
    reference = _keras_child_logits(workdir, child.arch, raw)
    loaded = keras.models.load_model(os.path.join(result.folder, "child.keras"))
    assert loaded.inputs[0].dtype == "uint8"
    assert np.abs(np.asarray(loaded(pixels)) - reference).max() <= 1e-4
    interpreter = tflite_lib.TFLiteRunner(
        path=os.path.join(result.folder, "model_fp32.tflite")
    ).interpreter
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (0.0, 0)  # not quantised
    for image, ref in zip(pixels, reference):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        assert np.abs(interpreter.get_tensor(out["index"])[0] - ref).max() <= 1e-4
    # int8 is converted from a float-input twin: its input is still the raw pixel.
    runner = tflite_lib.TFLiteRunner(path=os.path.join(result.folder, "model_int8.tflite"))
    assert runner.input["dtype"] == np.uint8 and runner.input["quantization"] == (1.0, 0)


def test_files_hold_builtin_stateless_ops_only(exported):
    for q in ("fp32", "fp16", "int8"):
        with open(os.path.join(exported.folder, f"model_{q}.tflite"), "rb") as f:
            ops = tflite_lib.op_list(f.read())
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN"} <= set(ops), q
        assert not [o for o in ops if o.startswith("CUSTOM") or o in tflite_lib.STATEFUL_OPS]


def test_sliced_child_converts_to_the_ops_of_the_arch_built_directly(exported, workdir, tmp_path):
    arch = exported.child.arch
    net = workdir.supernet
    built = build_child_model(workdir.space, arch, 10, stage_shortcuts=net.stage_shortcuts)
    model = models.deployable_model(built, DEFAULT_NORMALIZATION)
    models.write_saved_model(model, str(tmp_path / "built"))
    built_ops = tflite_lib.op_list(tflite_lib.convert_saved_model(str(tmp_path / "built"), "fp32"))
    with open(os.path.join(exported.folder, "model_fp32.tflite"), "rb") as f:
        sliced_ops = tflite_lib.op_list(f.read())
    assert sliced_ops == built_ops
    assert exported.card["sliced_vs_built"] == {
        "same_ops": True,
        "num_ops": len(built_ops),
        "reference_file": "built_reference_fp32.tflite",
    }


def test_interrupted_export_leaves_no_complete_looking_folder_and_resumes(
    exported, workdir, tmp_path, monkeypatch
):
    out = str(tmp_path / "out")
    shutil.copytree(os.path.dirname(exported.folder), out)
    folder = os.path.join(out, exported.child.name)
    before = {
        n: sha256_path(os.path.join(folder, n))
        for n in ("child.keras", "saved_model", "model_fp32.tflite", "model_fp16.tflite")
    }
    options = dataclasses.replace(OPTIONS, int8_io="int8")  # the int8 file must be redone
    real = tflite_lib.convert_saved_model
    calls = []

    def killed_at_int8(path, quantization, **kwargs):
        calls.append(quantization)
        if quantization == "int8":
            raise KeyboardInterrupt  # as if the process were stopped here
        return real(path, quantization, **kwargs)

    host_benchmark.benchmark_models(out, runs=3, warmup=1, keras=False, **QUIET)
    monkeypatch.setattr(tflite_lib, "convert_saved_model", killed_at_int8)
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_child(workdir, exported.child, out, options, **QUIET)
    assert calls == ["int8"]
    left = sorted(os.listdir(folder))
    assert "model_card.json" not in left and "model_card.md" not in left
    assert "model_int8.tflite" not in left  # the old uint8-io file is gone, no new one yet
    assert not [n for n in left if n.startswith(".tmp-")]
    with open(os.path.join(folder, "verification.json")) as f:
        v = json.load(f)
    assert not v["complete"] and "int8" not in v["files"]

    calls.clear()
    monkeypatch.setattr(
        tflite_lib, "convert_saved_model", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    result = export_lib.export_child(workdir, exported.child, out, options, **QUIET)
    assert calls == ["int8"]
    assert result.written == ["model_int8.tflite"]
    assert sorted(result.reused) == sorted([*before, "built_reference_fp32.tflite"])
    for name, digest in before.items():
        assert sha256_path(os.path.join(folder, name)) == digest
    runner = tflite_lib.TFLiteRunner(path=os.path.join(folder, "model_int8.tflite"))
    assert runner.input["dtype"] == np.int8 and runner.output["dtype"] == np.int8
    assert runner.input["quantization"] == (1.0, -128)
    assert result.card["input_contract"]["files"]["int8"]["input"]["dtype"] == "int8"
    # Latencies measured before stay for the files kept, not for the new int8 file.
    kept = {e["format"] for e in card_lib.find_latency(result.card, target="host")}
    assert kept == {"fp32", "fp16", "built_reference_fp32"}

    calls.clear()
    again = export_lib.export_child(workdir, exported.child, out, options, **QUIET)
    assert calls == [] and again.written == []


def test_bad_input_is_refused_before_anything_is_written(exported, workdir, tmp_path):
    out = os.path.dirname(exported.folder)
    digests = {n: sha256_path(os.path.join(exported.folder, n))
               for n in os.listdir(exported.folder)}  # fmt: skip
    child = exported.child

    with pytest.raises(ExportError, match=r"unknown quantisation.*fp32.*fp16.*int8"):
        export_lib.export_child(workdir, child, out, dataclasses.replace(
            OPTIONS, quantizations=("fp32", "int4")), **QUIET)  # fmt: skip
    with pytest.raises(ExportError, match=r"int8 input/output type 'int16'.*uint8"):
        export_lib.export_child(
            workdir, child, out, dataclasses.replace(OPTIONS, int8_io="int16"), **QUIET
        )

    uncalibrated = workdir.space.sample(123, resolutions=(16,))
    assert uncalibrated not in workdir.supernet.bn_stats
    stray = children_lib.ExportChild("stray", uncalibrated, "--arch test")
    with pytest.raises(ExportError, match=r"'stray'.*no calibrated BN statistics.*--calibrate"):
        export_lib.export_children(workdir, [child, stray], out, OPTIONS, **QUIET)
    assert not os.path.exists(os.path.join(out, "stray"))

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match=r"output folder .* is not writable"):
        export_lib.export_child(workdir, child, str(blocker / "export"), OPTIONS, **QUIET)

    assert {n: sha256_path(os.path.join(exported.folder, n))
            for n in os.listdir(exported.folder)} == digests  # fmt: skip


def test_children_from_selection_and_arch_specs(workdir, tmp_path):
    wd = dataclasses.replace(workdir, path=str(tmp_path))
    with pytest.raises(ExportError, match=r"no search/selection.json.*--arch"):
        children_lib.resolve_children(wd)
    with pytest.raises(ExportError, match=r"not a child of the run's space 'bignas_tiny'"):
        children_lib.resolve_children(wd, archs=["16 1:1:1 8:8:16:24:48 3:3:3"])
    smallest, largest = workdir.space.smallest(), workdir.space.largest()
    scores = {"metric": 0.5, "test_top1": 0.5, "test_top5": 0.9, "method": "coarse_to_fine",
              "latency_ms": None, "warning": None}  # fmt: skip

    def entry(budget, kind, limit, arch):
        c = cost_lib.cost(workdir.space, arch, 10, workdir.supernet.stage_shortcuts)
        return {"budget": budget, "kind": kind, "limit": limit, "arch": arch.to_dict(),
                "macs": c.macs, "params": c.params, **scores}  # fmt: skip

    selection = {
        "format": 1,
        "workdir": wd.path,
        "weights_digest": workdir.weights_digest,
        "space": workdir.space.name,
        "method": "coarse_to_fine",
        "selection_split": "minival",
        "test_split": "test",
        "num_evaluated": 2,
        "budgets": [
            entry("mflops:0.2", "mflops", 0.2, smallest),
            entry("params_m:1", "params_m", 1.0, largest),
        ],
    }
    os.makedirs(tmp_path / "search")
    (tmp_path / "search" / "selection.json").write_text(json.dumps(selection))
    every = children_lib.resolve_children(wd)
    assert [(c.name, c.arch) for c in every] == [("mflops_0.2", smallest), ("params_m_1", largest)]
    some = children_lib.resolve_children(wd, "params_m:1", archs=["smallest"])
    assert [c.name for c in some] == ["params_m_1", "smallest"]
    assert some[0].selection["budget"] == "params_m:1"
    with pytest.raises(ExportError, match=r"\['mflops:300'\] are not in .*mflops:0.2"):
        children_lib.resolve_children(wd, "mflops:300")
    selection["weights_digest"] = "0" * 16
    (tmp_path / "search" / "selection.json").write_text(json.dumps(selection))
    with pytest.raises(ExportError, match=r"made for weights 0+, but"):
        children_lib.resolve_children(wd)


def test_calibrate_stores_the_child_statistics(workdir, tmp_path):
    wd = dataclasses.replace(workdir, path=str(tmp_path))  # bn_stats.npz goes to tmp_path
    arch = wd.space.sample(7, resolutions=(16,))
    assert arch not in wd.supernet.bn_stats
    export_lib.calibrate_child(wd, arch, lambda line: None)
    from tf_bignas.model import BNStatsStore

    stored = BNStatsStore.load(wd.bn_stats_path())
    assert arch in stored and arch in wd.supernet.bn_stats
    means = [m for m, _ in stored.get(arch).values()]
    assert all(np.isfinite(m).all() for m in means) and any(np.abs(m).sum() > 0 for m in means)


def _converted_module(tmp_path, fn) -> str:
    module = tf.Module()
    module.v = tf.Variable(tf.zeros([4]))
    signature = tf.function(lambda x: fn(module, x), input_signature=[tf.TensorSpec([1, 4])])
    module.f = signature
    path = str(tmp_path / "saved_model")
    tf.saved_model.save(module, path, signatures={"serving_default": signature})
    return path


def test_flex_and_resource_variable_ops_are_refused_by_name(tmp_path):
    def determinant(module, x):
        return {"y": tf.linalg.det(tf.reshape(tf.tile(x, [1, 4]), [4, 4])) + x}

    with pytest.raises(UnsupportedOpError, match=r"MatrixDeterminant"):
        tflite_lib.convert_saved_model(_converted_module(tmp_path / "a", determinant), "fp32")

    def counter(module, x):
        module.v.assign_add(x[0])
        return {"y": x + module.v}

    with pytest.raises(UnsupportedOpError, match=r"resource-variable ops .*ASSIGN_VARIABLE"):
        tflite_lib.convert_saved_model(_converted_module(tmp_path / "b", counter), "fp32")


def test_export_tool_errors_are_one_line(trained_workdir, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.export", f"--workdir={trained_workdir}",
         "--quantize=fp32,fp64", "--arch=smallest", f"--out={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "error: unknown quantisation ['fp64']" in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "out")


def test_host_benchmark_fills_cards_and_csv(exported, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(os.path.dirname(exported.folder), out)
    report = host_benchmark.benchmark_models(out, runs=5, warmup=2, **QUIET)
    folder = os.path.join(out, exported.child.name)
    formats = {"fp32", "fp16", "int8", "built_reference_fp32", "keras"}
    [child] = report.children
    assert set(child.timings) == formats
    with open(os.path.join(folder, "model_card.json")) as f:
        card = json.load(f)
    host = {e["format"]: e for e in card_lib.find_latency(card, target="host")}
    assert set(host) == formats and len(card["latency"]) == len(formats)
    device = host_benchmark.host_device()
    for fmt, entry in host.items():
        assert 0 < entry["min_ms"] <= entry["median_ms"] <= entry["p90_ms"], fmt
        assert entry["min_ms"] <= entry["mean_ms"], fmt
        assert entry["runs"] == 5 and entry["threads"] == 1 and entry["device"] == device
        assert entry["delegate"] == ("tensorflow" if fmt == "keras" else "xnnpack")
    assert host["int8"]["sha256"] == card["files"]["int8"]["sha256"]
    assert child.ratio("int8") == pytest.approx(
        host["int8"]["median_ms"] / host["fp32"]["median_ms"]
    )
    with open(os.path.join(folder, "model_card.md")) as f:
        assert f"{host['fp32']['median_ms']:.3f}" in f.read()
    # Two thread counts: two entries per format, neither overwrites the other.
    host_benchmark.benchmark_models(folder, threads=2, runs=2, warmup=1, keras=False, **QUIET)
    card = card_lib.read_card(folder)
    assert {e["threads"] for e in card_lib.find_latency(card, format="int8")} == {1, 2}
    with open(report.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert {r["format"] for r in rows} == formats and {r["child"] for r in rows} == {"smallest"}
    lines = host_benchmark.summary_lines(report)
    assert any("sliced/built fp32 latency ratio" in line for line in lines)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", f"--models={folder}", "--runs=3",
         "--warmup=1", "--nokeras"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "int8" in proc.stdout and "sliced/built fp32 latency ratio" in proc.stdout
    with pytest.raises(FileNotFoundError, match="does not exist"):
        host_benchmark.benchmark_models(str(tmp_path / "nothing"), **QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tflite file"):
        host_benchmark.benchmark_models(str(tmp_path / "empty"), **QUIET)


def test_a_swapped_file_is_refused_by_every_consumer_naming_it(exported, tmp_path):
    """An fp32 file put in the int8 file's place: not timed as int8, one line, exit 2."""
    out = str(tmp_path / "out")
    shutil.copytree(os.path.dirname(exported.folder), out)
    folder = os.path.join(out, exported.child.name)
    int8 = os.path.join(folder, "model_int8.tflite")
    shutil.copyfile(os.path.join(folder, "model_fp32.tflite"), int8)
    before = card_lib.read_card(folder)
    with pytest.raises(card_lib.FileDigestError, match="model_int8.tflite has sha256"):
        host_benchmark.benchmark_models(out, runs=2, warmup=1, keras=False, **QUIET)
    assert card_lib.read_card(folder) == before  # nothing timed, nothing written
    assert not os.path.exists(os.path.join(out, host_benchmark.CSV_NAME))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", f"--models={out}", "--runs=2", "--nokeras"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "error: " in last and int8 in last and "verified" in last
    assert "Traceback" not in proc.stderr
    # Not a TFLite file at all, in a folder without a card: the error names it.
    (tmp_path / "plain").mkdir()
    bogus = tmp_path / "plain" / "model_fp32.tflite"
    bogus.write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match=f"{bogus} is not a TFLite model"):
        host_benchmark.benchmark_models(str(tmp_path / "plain"), runs=2, keras=False, **QUIET)


def test_card_names_classes_use_limits_and_how_to_reproduce(exported):
    folder, card = exported.folder, exported.card
    names = [str(i) for i in range(10)]  # the digits' class folders
    assert card["class_names"] == names and card["labels_file"] == "labels.txt"
    with open(os.path.join(folder, "labels.txt")) as f:
        assert f.read().splitlines() == names
    for q in ("fp32", "fp16", "int8"):
        with open(os.path.join(folder, f"model_{q}.tflite"), "rb") as f:
            meta = tflite_lib.read_metadata(f.read())
        assert meta[tflite_lib.METADATA_LABELS].decode().splitlines() == names, q
        contract = json.loads(meta[tflite_lib.METADATA_CONTRACT])
        assert contract["resolution"] == 16 and contract["normalization_folded"], q
        assert contract["normalization"]["mean"] == list(DEFAULT_NORMALIZATION.mean), q
    assert "10 classes of labels.txt" in card["intended_use"]
    assert any("no 'none of these' class" in x for x in card["limitations"])
    prov = card["provenance"]
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    assert "train_command" in prov and "export_command" in prov
    with open(os.path.join(folder, "model_card.md")) as f:
        md = f.read()
    for heading in ("## Intended use", "## Limitations", "## Classes", "## Provenance"):
        assert heading in md, heading
    assert "9\\. 9" not in md and "9. 9" in md


def test_card_markdown_escapes_text_from_files_and_folders(exported):
    card = json.loads(json.dumps(exported.card))
    evil = "a`b<img src=x onerror=alert(1)>|c"
    card["provenance"]["workdir"] = evil
    card["class_names"][0] = "<script>x</script>"
    card["latency"] = [
        {"target": "android", "device": "Pixel\x1b[31m <b>", "threads": 4, "delegate": "gpu",
         "format": "int8", "mean_ms": 1.0, "median_ms": None, "p90_ms": None, "memory_mb": 3.5}
    ]  # fmt: skip
    md = card_lib.card_markdown(card)
    outside_code = re.sub(r"(`+)(?:(?!\1).)*\1", "", md)  # drop code spans
    assert (
        "<img" not in outside_code and "<script>" not in outside_code and "<b>" not in outside_code
    )
    assert "\x1b" not in md
    assert "``a`b<img src=x onerror=alert(1)>\u2502c``" in md  # shown as text, in code
    assert "| android | Pixel\\[31m \\<b\\> | 4 | gpu | int8 | 1.000 | - | - | 3.5 |" in md
