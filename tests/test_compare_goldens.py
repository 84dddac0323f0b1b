"""`projc compare --expected / --save-expected`: goldens as npz or ONNX test-data folders, the
goldens beside a model, the shipped ONNX backend cases (opset 6, which onnxruntime no longer
runs), float16 tolerances, output selection and compile-time inputs bound from the data."""
from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.cli import main
from projc.cli.compare import compare_model, default_tolerance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")
SKLEARN = os.path.join(ROOT, "models", "sklearn_mlp.onnx")
BACKEND = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def run(capsys, *argv):
    code = main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv) -> str:
    code, _, err = run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("projc compare: error: ")
    return lines[0]


def test_npz_goldens_round_trip_and_catch_a_change(capsys, tmp_path):
    golden = str(tmp_path / "mlp.expected.npz")
    code, out, _ = run(capsys, MLP, "--batch", "4", "--save-expected", golden)
    assert code == 0 and f"wrote {golden}" in out
    with np.load(golden) as f:
        assert sorted(f.files) == ["inputs/x", "logits"] and f["inputs/x"].shape == (4, 64)
        stored = {k: f[k] for k in f.files}
    code, out, _ = run(capsys, MLP, "--expected", golden)
    assert code == 0 and f"against expected outputs {golden}" in out and "PASSED" in out
    stored["logits"] = stored["logits"].copy()
    stored["logits"][2, 7] += 1e-3
    np.savez(golden, **stored)
    code, out, _ = run(capsys, MLP, "--expected", golden)
    assert code == 1 and "FAILED" in out and "first at (2, 7)" in out


def test_npz_of_outputs_only_takes_load_inputs(capsys, tmp_path):
    inputs, golden = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    np.savez(inputs, x=x)
    logits = compare_model(MLP, inputs={"x": x}).ort_outputs["logits"]
    np.savez(golden, logits=logits)
    line = one_line_error(capsys, MLP, "--expected", golden)
    assert f"{golden}: holds no inputs" in line and "--load-inputs" in line
    code, out, _ = run(capsys, MLP, "--expected", golden, "--load-inputs", inputs)
    assert code == 0 and f"inputs from {inputs}" in out
    np.savez(golden, logits=logits, bogus=logits)
    line = one_line_error(capsys, MLP, "--expected", golden, "--load-inputs", inputs)
    assert "bogus" in line and "its outputs: logits" in line


def test_data_set_folder_written_replaced_and_read(capsys, tmp_path):
    target = tmp_path / "goldens"
    code, out, _ = run(capsys, MLP, "--save-expected", str(target))
    data_set = target / "test_data_set_0"
    assert code == 0 and sorted(os.listdir(data_set)) == ["input_0.pb", "output_0.pb"]
    tensor = onnx.load_tensor(str(data_set / "output_0.pb"))
    assert tensor.name == "logits" and list(tensor.dims) == [3, 10]
    assert run(capsys, MLP, "--expected", str(target))[0] == 0  # a folder of data sets
    assert run(capsys, MLP, "--expected", str(data_set))[0] == 0  # one data set
    # written again (another batch): the data set is replaced whole, no stray files left
    assert run(capsys, MLP, "--batch", "5", "--save-expected", str(data_set))[0] == 0
    assert onnx.load_tensor(str(data_set / "input_0.pb")).dims[0] == 5
    assert sorted(os.listdir(target)) == ["test_data_set_0"]
    # a folder holding other files is never replaced
    (data_set / "notes.txt").write_text("mine")
    line = one_line_error(capsys, MLP, "--save-expected", str(data_set))
    assert "notes.txt" in line
    assert sorted(os.listdir(data_set)) == ["input_0.pb", "notes.txt", "output_0.pb"]


def test_goldens_beside_a_model_are_found(capsys, tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    model = str(case / "model.onnx")
    shutil.copy(MLP, model)
    assert run(capsys, model, "--save-expected", str(case))[0] == 0
    code, out, _ = run(capsys, str(case))  # the folder, as a backend case is passed
    assert code == 0 and "against expected outputs" in out and "test_data_set_0" in out
    code, out, _ = run(capsys, str(case), "--ignore-expected")
    assert code == 0 and "against onnxruntime" in out
    # an npz beside a model that shares its folder
    other = tmp_path / "mlp.onnx"
    shutil.copy(MLP, other)
    shutil.copy(MLP, tmp_path / "twin.onnx")
    assert run(capsys, str(other), "--save-expected", str(tmp_path / "mlp.expected.npz"))[0] == 0
    code, out, _ = run(capsys, str(other))
    assert code == 0 and "mlp.expected.npz" in out.splitlines()[0]


@pytest.mark.parametrize("case", ["pytorch-converted/test_AvgPool2d",
                                  "pytorch-converted/test_BatchNorm2d_eval",
                                  "pytorch-operator/test_operator_add_broadcast"])
def test_shipped_backend_cases_of_old_opsets(capsys, case):
    folder = os.path.join(BACKEND, case)
    if not os.path.isdir(folder):
        pytest.skip(f"the onnx wheel does not ship {case}")
    code, out, err = run(capsys, folder)
    assert code == 0, out + err
    assert "against expected outputs" in out and "test_data_set_0" in out
    # onnxruntime has no kernels for these opsets any more: it runs the upgraded model
    code, out, err = run(capsys, folder, "--ignore-expected")
    assert code == 0, out + err
    assert "against onnxruntime on the model upgraded to opset 13" in out
    assert len([line for line in out.splitlines() if line.startswith("note:")]) == 1


def test_save_expected_refusals_write_nothing(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file" in one_line_error(capsys, MLP, "--save-expected", str(blocker))
    line = one_line_error(capsys, MLP, "--save-expected", str(tmp_path / "a.npz"),
                          "--expected", str(tmp_path))
    assert "exclude each other" in line
    assert "no such file" in one_line_error(capsys, MLP, "--expected", str(tmp_path / "none"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no test data" in one_line_error(capsys, MLP, "--expected", str(empty))
    assert sorted(os.listdir(tmp_path)) == ["empty", "file"]


def test_output_selection(capsys):
    code, out, _ = run(capsys, SKLEARN, "--outputs", "probabilities")
    assert code == 0 and "probabilities" in out and "\nlabel " not in out
    assert "no output named nope" in one_line_error(capsys, SKLEARN, "--outputs", "nope")
    report = compare_model(SKLEARN, outputs=["label"])
    assert [r.name for r in report.results] == ["label"] and report.ok


def test_float16_outputs_default_to_1e_3():
    assert default_tolerance(np.float16) == (1e-3, 1e-3)
    assert default_tolerance(np.float32) == (1e-5, 1e-5)
    assert default_tolerance(np.float16, atol=0.0) == (0.0, 1e-3)


def test_float16_model_passes_at_its_tolerance(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
        "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 8])], [w])
    path = str(tmp_path / "half.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = compare_model(path, batch=16)
    assert report.ok, report.format()
    assert report.results[0].atol == 1e-3 and "float16: atol 0.001" in report.format()


def test_shape_input_is_bound_from_the_given_data(tmp_path):
    """A Reshape whose shape is a graph input (as ONNX test cases have): the given data supplies
    it at compile time."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    path = str(tmp_path / "reshape.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    report = compare_model(path, inputs={"x": x, "shape": np.array([3, 4], np.int64)})
    assert report.ok and report.outputs["y"].shape == (3, 4)
