"""External data loads relative to the model for projc and for compare's onnxruntime session: from
another working directory, through a symbolic link whose folder lacks the data, and in an old
opset that onnxruntime runs only upgraded. `projc inspect` shows a model with unknown ops."""
from __future__ import annotations

import json
import os

import onnx
import pytest
from onnx import TensorProto, helper

from projc.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")
BATCHNORM_6 = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                           "pytorch-converted", "test_BatchNorm2d_eval", "model.onnx")


def save_external(model, path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(path) + ".data", size_threshold=0)
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_from_another_folder_and_through_a_link(capsys, tmp_path, monkeypatch):
    path = save_external(onnx.load(MLP), str(tmp_path / "weights" / "m.onnx"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "compare", os.path.join("weights", "m.onnx"))
    assert code == 0 and "all outputs match" in out and "note:" not in out, out + err
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "m.onnx"
    os.symlink(path, link)  # the data lies beside the file the link points to
    code, out, err = run(capsys, "compare", str(link))
    assert code == 0 and "all outputs match" in out, out + err


def test_old_opset_with_external_data(capsys, tmp_path):
    if not os.path.exists(BATCHNORM_6):
        pytest.skip("the onnx wheel does not ship test_BatchNorm2d_eval")
    path = save_external(onnx.load(BATCHNORM_6), str(tmp_path / "bn.onnx"))
    code, out, err = run(capsys, "compare", path)
    assert code == 0, out + err
    assert "against onnxruntime on the model upgraded to opset 13" in out


def unknown_op_model(path) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("LpNormalization", ["r"], ["l"], name="the_node"),
             helper.make_node("Sigmoid", ["l"], ["y"], name="after"),
             helper.make_node("Tanh", ["x"], ["z"], name="beside")]
    graph = helper.make_graph(nodes, "g", [x], [y, z])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_inspect_shows_a_model_with_unknown_ops(capsys, tmp_path):
    path = unknown_op_model(tmp_path / "m.onnx")
    code, out, err = run(capsys, "inspect", path)
    assert code == 2 and err.startswith("projc inspect: error: ") and "Traceback" not in err
    assert 'LpNormalization (opset 17) at node "the_node"' in err
    assert "unsupported 1 node(s)" in out and '  LpNormalization (opset 17) at node "the_node"' in out
    assert "output   y: computed after unsupported nodes" in out and "output   z: f32[B,4]" in out
    assert "Relu %x" in out and "Tanh %x" in out and "Sigmoid" not in out  # the IR stops there
    code, out, _ = run(capsys, "inspect", path, "--json")
    summary = json.loads(out)
    assert code == 2 and summary["unsupported"][0]["node"] == "the_node"
    assert summary["partial_outputs"] == ["r"] and summary["outputs_after_unsupported"] == ["y"]
