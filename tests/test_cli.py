"""The projc command line: exit codes, messages, no tracebacks, nothing half-written."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from projc.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")
MODELS = sorted(os.path.join(ROOT, "models", f) for f in os.listdir(os.path.join(ROOT, "models"))
                if f.endswith(".onnx"))
TINY_TRAIN = ["--updates", "2", "--batch", "32", "--steps", "3"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_op_model(path, op="Relu", opset=17, rank_known=True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4] if rank_known else None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="the_node")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return str(path)


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "projc train models/mlp_digits.onnx" in out and "compare" in out


def test_inspect_prints_summary_then_ir(capsys):
    code, out, _ = run(capsys, "inspect", MLP)
    assert code == 0
    assert "input    x: f32[B,64]" in out and "Gemm x2, Relu x1" in out
    assert "trainable fc1.weight: f32[32,64]" in out and "graph @mlp_digits {" in out


def test_inspect_json_and_print_after(capsys):
    code, out, _ = run(capsys, "inspect", MLP, "--json")
    assert code == 0 and json.loads(out)["op_counts"] == {"Gemm": 2, "Relu": 1}
    code, out, _ = run(capsys, "inspect", MLP, "--print-after", "lower", "--time-passes")
    assert code == 0 and "IR Dump After lower" in out and "= dot %x" in out and "Total" in out


@pytest.mark.parametrize("path", MODELS, ids=[os.path.basename(p) for p in MODELS])
def test_compare_passes_on_every_bundled_model(capsys, path):
    code, out, _ = run(capsys, "compare", path, "--batch", "5")
    assert code == 0, out
    assert "PASSED" in out and "FAILED" not in out


def test_compare_round_trips_inputs_and_flags_mismatch(capsys, tmp_path):
    inputs, outputs = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    code, _, _ = run(capsys, "compare", MLP, "--save-inputs", inputs, "--save-outputs", outputs)
    assert code == 0 and np.load(inputs)["x"].shape == (3, 64) and np.load(outputs)["logits"].shape == (3, 10)
    model = onnx.load(MLP)
    model.graph.initializer[0].raw_data = (np.frombuffer(model.graph.initializer[0].raw_data, np.float32)
                                           * 1.01).tobytes()
    # the perturbed file still runs in onnxruntime; projc must agree with it, so it passes
    perturbed = str(tmp_path / "p.onnx")
    onnx.save(model, perturbed)
    assert run(capsys, "compare", perturbed, "--load-inputs", inputs)[0] == 0
    code, _, err = run(capsys, "compare", MLP, "--load-inputs", str(tmp_path / "missing.npz"))
    assert code == 2 and "missing.npz" in err


def test_compare_exit_1_on_mismatch(capsys, monkeypatch):
    import projc.cli.compare as compare_module
    real = compare_module.compare_model

    def tight(*args, **kw):
        kw.update(atol=0.0, rtol=0.0)
        return real(*args, **kw)

    # zero tolerance on a model with float32 rounding differences must report a mismatch
    monkeypatch.setattr(compare_module, "compare_model", tight)
    code, out, _ = run(capsys, "compare", os.path.join(ROOT, "models", "mlp_mnist.onnx"), "--batch", "64")
    assert code == 1 and "FAILED" in out and "outputs differ" in out


@pytest.mark.parametrize("make, message", [
    (lambda p: write(p, b""), "empty"),
    (lambda p: write(p, open(MLP, "rb").read()[:500]), "bad.onnx"),
    (lambda p: one_op_model(p, op="LpNormalization"), "LpNormalization (opset 17) at node \"the_node\""),
    (lambda p: one_op_model(p, opset=99), "opset 99"),  # older opsets are upgraded
    (lambda p: one_op_model(p, rank_known=False), "unknown rank"),
    (lambda p: str(p.parent / "nope.onnx"), "nope.onnx"),
])
@pytest.mark.parametrize("command", ["inspect", "compare"])
def test_bad_models_exit_2_with_one_message(capsys, tmp_path, make, message, command):
    path = make(tmp_path / "bad.onnx")
    code, out, err = run(capsys, command, path)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith(f"projc {command}: error: ")


def test_no_traceback_without_debug_but_with_it(tmp_path):
    path = one_op_model(tmp_path / "m.onnx", op="LpNormalization")
    cmd = [sys.executable, "-m", "projc.cli"]
    plain = subprocess.run(cmd + ["inspect", path], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "LpNormalization" in plain.stderr
    debug = subprocess.run(cmd + ["--debug", "inspect", path], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_ops_lists_registry(capsys):
    code, out, _ = run(capsys, "ops")
    assert code == 0 and "Gemm" in out and "Conv" in out


def test_train_writes_model_that_onnxruntime_scores(capsys, tmp_path):
    out_path = tmp_path / "t.onnx"
    code, out, _ = run(capsys, "train", MLP, *TINY_TRAIN, "-o", str(out_path))
    assert code == 0 and out_path.exists()
    assert "epoch   1" in out and "(onnxruntime)" in out
    assert [f for f in os.listdir(tmp_path)] == ["t.onnx"]  # no temp file left behind


def bad_npz(tmp_path, x, y):
    path = tmp_path / "d.npz"
    np.savez(path, X=x, y=y)
    return f"npz:{path}"


@pytest.mark.parametrize("data, message", [
    (lambda t: bad_npz(t, np.full((40, 64), np.nan, np.float32), np.zeros(40, np.int64)), "NaN"),
    (lambda t: bad_npz(t, np.zeros((40, 64), np.float32), np.full(40, 12)), "label"),
    (lambda t: bad_npz(t, np.zeros((40, 50), np.float32), np.zeros(40, np.int64)), "feature"),
    (lambda t: "npz:" + str(t / "none.npz"), "none.npz"),
    (lambda t: "cifar", "cifar"),
])
def test_train_bad_data_exit_2_nothing_written(capsys, tmp_path, data, message):
    out_path = tmp_path / "t.onnx"
    code, _, err = run(capsys, "train", MLP, *TINY_TRAIN, "--data", data(tmp_path), "-o", str(out_path))
    assert code == 2 and message.lower() in err.lower() and "Traceback" not in err
    assert not out_path.exists()


def test_train_output_that_is_a_file_path_fails_before_training(capsys, tmp_path):
    # a missing folder is created at export (tests/test_cli_train.py); a file in the way is not
    blocker = tmp_path / "no"
    blocker.write_bytes(b"a file, not a folder")
    target = blocker / "dir" / "t.onnx"
    code, out, err = run(capsys, "train", MLP, *TINY_TRAIN, "-o", str(target))
    assert code == 2 and "cannot write" in err and "epoch" not in out
    assert blocker.read_bytes() == b"a file, not a folder"


def test_train_refuses_to_overwrite_nothing_on_failure(capsys, tmp_path):
    existing = tmp_path / "t.onnx"
    existing.write_bytes(b"keep me")
    code, _, _ = run(capsys, "train", MLP, *TINY_TRAIN, "--data", "cifar", "-o", str(existing))
    assert code == 2 and existing.read_bytes() == b"keep me"
