"""`projc compare --batch` goes to the model's batch dim wherever it is (a sequence-first export
has [T, B, ...]), `--dim NAME=N` sizes the other symbolic dims, and a static batch that differs
from --batch is one note, never silent."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.cli import main
from projc.cli.compare import compare_model


def save(path, dims, *, op="Relu", out_dims=None):
    nodes, inits = [helper.make_node(op, ["x"], ["y"])], []
    if op == "ReduceSum":  # over axis 0 (the sequence)
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)]
        inits = [numpy_helper.from_array(np.array([0], np.int64), "axes")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims or dims)],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def notes(report):
    return [line for line in report.format().splitlines() if line.startswith("note:")]


def test_batch_on_axis_1_of_a_sequence_first_export(tmp_path):
    path = save(tmp_path / "seq_first.onnx", ["seq", "batch", 4], op="ReduceSum",
                out_dims=["batch", 4])
    report = compare_model(path, batch=7)
    assert report.ok and report.inputs["x"].shape == (3, 7, 4) and report.outputs["y"].shape == (7, 4)
    assert 'batch 7 on axis 1 of "x"' in report.format() and notes(report) == []
    report = compare_model(path, batch=7, dims={"seq": 5})
    assert report.inputs["x"].shape == (5, 7, 4)


@pytest.mark.parametrize("name", ["N", "batch_size", "Batch"])
def test_batch_names_at_axis_0(tmp_path, name):
    report = compare_model(save(tmp_path / "m.onnx", [name, "T", 4]), batch=6)
    assert report.inputs["x"].shape == (6, 3, 4) and notes(report) == []


def test_unnamed_batch_goes_to_axis_0_with_a_note(tmp_path):
    report = compare_model(save(tmp_path / "m.onnx", ["T", "S", 4]), batch=5, dims={"S": 2})
    assert report.inputs["x"].shape == (5, 2, 4)
    (note,) = notes(report)
    assert "--batch 5 went to the symbolic axis 0 (ONNX dim \"T\")" in note


def test_static_batch_that_differs_is_one_note(capsys, tmp_path):
    path = save(tmp_path / "static.onnx", [1, 4])
    code = main(["compare", path, "--batch", "7"])
    out = capsys.readouterr().out
    assert code == 0 and "static shapes" in out
    (note,) = [line for line in out.splitlines() if line.startswith("note:")]
    assert "every input has a static shape (x: [1, 4]), so --batch 7 does not apply" in note
    assert notes(compare_model(path, batch=1)) == [] and notes(compare_model(path)) == []


def test_unknown_dim_name_is_refused(capsys, tmp_path):
    path = save(tmp_path / "m.onnx", ["seq", "batch", 4])
    assert main(["compare", path, "--dim", "nope=2"]) == 2
    err = capsys.readouterr().err
    assert "has no symbolic dim 'nope' (its symbolic dims: seq, batch)" in err


def test_batch_with_given_inputs_is_a_note(tmp_path):
    path = save(tmp_path / "m.onnx", ["N", 4])
    report = compare_model(path, batch=7, inputs={"x": np.ones((2, 4), np.float32)})
    assert report.batch == 2 and report.inputs["x"].shape == (2, 4)
    (note,) = notes(report)
    assert "--batch 7 does not apply: the inputs from the given arrays give the sizes (batch 2)" in note
