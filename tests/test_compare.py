"""projc.cli.compare: the report, its tolerance semantics and how a mismatch is located."""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest

from projc.cli.compare import compare_arrays, compare_model, random_inputs
from projc.errors import DataError
from projc.frontend.importer import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_path(name: str) -> str:
    path = os.path.join(ROOT, "models", f"{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"models/{name}.onnx is not there yet")
    return path


def test_report_on_a_matching_model():
    report = compare_model(model_path("sklearn_mlp"), batch=5, seed=3)
    assert report.ok
    assert set(report.inputs) == {"x"} and report.inputs["x"].shape == (5, 64)
    assert [r.name for r in report.results] == ["label", "probabilities"]
    label = report.results[0]
    assert label.dtype == "int64" and label.max_abs == 0.0  # integers compare exactly
    text = report.format()
    assert "all outputs match" in text and "probabilities" in text and "batch 5" in text


def test_random_inputs_are_reproducible():
    graph = load_model(model_path("mlp_digits"))
    a, b = random_inputs(graph, 4, seed=7), random_inputs(graph, 4, seed=7)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (4, 64) and a["x"].dtype == np.float32
    assert not np.array_equal(a["x"], random_inputs(graph, 4, seed=8)["x"])


def test_given_inputs_are_used():
    x = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
    report = compare_model(model_path("mlp_digits"), inputs={"x": x})
    assert report.ok
    np.testing.assert_array_equal(report.inputs["x"], x)
    assert report.outputs["logits"].shape == (2, 10)
    with pytest.raises(DataError, match="inputs missing: x"):
        compare_model(model_path("mlp_digits"), inputs={"y": x})


def test_perturbed_weight_fails_with_its_index():
    path = model_path("mlp_digits")
    graph = load_model(path)
    bias = next(v for v in graph.params if v.hint == "fc2.bias")
    bias.data = bias.data.copy()
    bias.data[3] += 0.5  # only logit 3 moves, by 0.5, in every row
    report = compare_model(path, graph=graph, batch=4)
    assert not report.ok
    (logits,) = report.results
    assert not logits.passed and logits.n_failed == 4
    assert logits.max_abs == pytest.approx(0.5, abs=1e-5)
    assert logits.max_abs_index[1] == 3 and logits.max_rel_index[1] == 3
    assert "FAIL" in report.format() and "1 of 1 outputs differ: logits" in report.format()


def test_an_element_fails_only_beyond_both_tolerances():
    ref = np.array([1.0, 1000.0, 1.0, 0.0], np.float32)
    ours = ref + np.array([1.5e-5, 5e-3, 0.0, 0.0], np.float32)
    # |diff| exceeds atol in elements 0 and 1, but each stays within atol + rtol * |ref|
    assert compare_arrays("y", ours, ref, atol=1e-5, rtol=1e-5).passed
    ours[2] += 1e-4  # beyond 1e-5 + 1e-5 * 1
    result = compare_arrays("y", ours, ref, atol=1e-5, rtol=1e-5)
    assert not result.passed and result.n_failed == 1 and "(2,)" in result.note
    assert result.max_abs_index == (1,) and result.max_rel_index == (2,)
    assert compare_arrays("y", ours, ref, atol=0.0, rtol=1e-6).n_failed == 3  # 0, 1 and 2
    assert compare_arrays("y", ours, ref, atol=1e-3, rtol=0.0).n_failed == 1  # 1 only


def test_integers_compare_exactly_and_nan_matches_nan():
    a = np.array([1, 2, 3], np.int64)
    assert not compare_arrays("i", a + np.array([0, 0, 1]), a, atol=10, rtol=10).passed
    nan = np.array([np.nan, 1.0], np.float32)
    assert compare_arrays("f", nan, nan.copy(), atol=0, rtol=0).passed
    assert not compare_arrays("f", np.array([np.nan, 1.0], np.float32),
                              np.array([0.0, 1.0], np.float32), atol=1, rtol=1).passed


def test_shape_and_dtype_mismatches_fail():
    a = np.zeros((2, 3), np.float32)
    result = compare_arrays("y", a, np.zeros((3, 2), np.float32), atol=1, rtol=1)
    assert not result.passed and "shape [2, 3] vs reference [3, 2]" in result.note
    result = compare_arrays("y", a, np.zeros((2, 3), np.float64), atol=1, rtol=1)
    assert not result.passed and "dtype" in result.note


def test_zipmap_output_compares_as_a_probability_table(tmp_path):
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5).fit(x, rng.integers(0, 3, 40))
    onx = skl2onnx.convert_sklearn(clf, initial_types=[("x", FloatTensorType([None, 5]))],
                                   target_opset={"": 17, "ai.onnx.ml": 3})  # zipmap on
    path = str(tmp_path / "zipmap.onnx")
    onnx.save(onx, path)
    report = compare_model(path, batch=6)
    assert report.ok, report.format()
    assert report.outputs["output_probability"].shape == (6, 3)


# -- exit 2 (bad usage or a model projc and onnxruntime refuse), never 1 (a mismatch) --------

def _conv_model(strides, *, w_dims=(2, 1, 3, 3), claimed_dims=None):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(w_dims, np.float32), "w")
    if claimed_dims is not None:  # dims that the data does not fill
        w.ClearField("dims")
        w.dims.extend(claimed_dims)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(strides))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 1, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 2, "H", "W"])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _huge_input_model():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", 1_000_000_000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["N", 1_000_000_000])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _exit_2_with_one_line(capsys, *argv) -> str:
    from projc.cli import main

    code = main(["compare", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_compare_refuses_bad_models_with_exit_2(capsys, tmp_path):
    zero_stride = str(tmp_path / "zero_stride.onnx")
    onnx.save(_conv_model([0, 1]), zero_stride)
    line = _exit_2_with_one_line(capsys, zero_stride)
    assert "Conv" in line and "strides=[0, 1]" in line and ">= 1" in line

    short_data = str(tmp_path / "short_data.onnx")
    onnx.save(_conv_model([1, 1], w_dims=(4, 3, 3, 3), claimed_dims=(3, 3, 3, 3)), short_data)
    line = _exit_2_with_one_line(capsys, short_data)
    assert 'initializer "w" (dims [3, 3, 3, 3])' in line

    huge = str(tmp_path / "huge.onnx")
    onnx.save(_huge_input_model(), huge)
    line = _exit_2_with_one_line(capsys, huge)
    assert "11.18 GiB" in line and "--max-input-mb" in line and '"x"' in line


def test_compare_refuses_bad_options_with_exit_2(capsys, tmp_path):
    mlp = model_path("mlp_digits")
    assert "--batch 0" in _exit_2_with_one_line(capsys, mlp, "--batch", "0")
    assert "--batch -1" in _exit_2_with_one_line(capsys, mlp, "--batch", "-1")
    assert "--atol nan" in _exit_2_with_one_line(capsys, mlp, "--atol", "nan")
    assert "--rtol -1" in _exit_2_with_one_line(capsys, mlp, "--rtol", "-1")
    assert "--max-input-mb" in _exit_2_with_one_line(capsys, mlp, "--max-input-mb", "0")
    wrong_shape, strings = str(tmp_path / "shape.npz"), str(tmp_path / "strings.npz")
    np.savez(wrong_shape, x=np.zeros((2, 63), np.float32))
    np.savez(strings, x=np.array([["a"] * 64]))
    line = _exit_2_with_one_line(capsys, mlp, "--load-inputs", wrong_shape)
    assert 'input "x" has shape [2, 63]' in line and "f32[B,64]" in line
    line = _exit_2_with_one_line(capsys, mlp, "--load-inputs", strings)
    assert 'input "x" holds <U1 values' in line
