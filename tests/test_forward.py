"""JAX forward against onnxruntime: the bundled models and single-op models of every variant."""
from __future__ import annotations

import glob
import os

import jax
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.backends.jax.forward import graph_param_values, make_forward, run_forward
from projc.cli.compare import compare_model
from projc.errors import DataError
from projc.frontend.importer import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.mark.parametrize("batch", [1, 4, 33])
@pytest.mark.parametrize("path", MODELS, ids=[os.path.basename(p) for p in MODELS])
def test_models_match_onnxruntime(path, batch):
    report = compare_model(path, batch=batch, atol=1e-5, rtol=1e-5, seed=batch)
    assert report.ok, report.format()
    assert all(out.shape[0] == batch for out in report.outputs.values())


def test_jit_one_function_for_every_batch_size():
    graph = load_model(os.path.join(ROOT, "models", "cnn_digits.onnx"))
    forward = jax.jit(make_forward(graph))
    params = graph_param_values(graph)
    rng = np.random.default_rng(0)
    for batch in (2, 7):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        (jitted,) = forward(params, {"x": x})
        (eager,) = make_forward(graph)(params, {"x": x})
        assert jitted.shape == (batch, 10)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-6)


def test_params_are_keyed_by_onnx_name_and_used():
    graph = load_model(os.path.join(ROOT, "models", "mlp_digits.onnx"))
    params = graph_param_values(graph)
    assert sorted(params) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    x = np.ones((2, 64), np.float32)
    (before,) = run_forward(graph, params, {"x": x})
    shifted = dict(params, **{"fc2.bias": params["fc2.bias"] + 1.0})
    (after,) = run_forward(graph, shifted, {"x": x})
    np.testing.assert_allclose(after - before, 1.0, rtol=1e-5)


def test_integer_outputs_come_back_as_declared_int64():
    graph = load_model(os.path.join(ROOT, "models", "sklearn_mlp.onnx"))
    label, proba = run_forward(graph, None, {"x": np.zeros((3, 64), np.float32)})
    assert label.dtype == np.int64 and proba.dtype == np.float32


def test_missing_input_is_a_data_error():
    graph = load_model(os.path.join(ROOT, "models", "mlp_digits.onnx"))
    with pytest.raises(DataError, match=r'missing input "x" \(expected f32\[B,64\]'):
        run_forward(graph, None, {"pixels": np.zeros((1, 64), np.float32)})


# -- single-op models against onnxruntime -------------------------------------------------------

def _init(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _ints(name, value):
    return _init(name, value, np.int64)


def _weights(name, shape, seed=0):
    return _init(name, np.random.default_rng(seed).standard_normal(shape))


# (id, node, input shapes, initializers, output ranks, opset); "N" is the symbolic batch.
CASES = [
    ("gemm_trans_alpha_beta", helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0,
                                               transB=1), [["N", 4]],
     [_weights("w", (3, 4)), _weights("c", (1, 3))], [2], 13),
    ("gemm_transA", helper.make_node("Gemm", ["a", "w"], ["y"], transA=1), [[4, 5]],
     [_weights("w", (4, 3))], [2], 13),
    ("matmul_batched", helper.make_node("MatMul", ["x", "w"], ["y"]), [["N", 2, 4]],
     [_weights("w", (4, 3))], [3], 13),
    ("conv1d_stride_dilation", helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2],
                                                dilations=[2], pads=[1, 2]), [["N", 2, 11]],
     [_weights("w", (4, 2, 3)), _weights("b", (4,))], [3], 17),
    ("conv2d_groups_same_upper", helper.make_node("Conv", ["x", "w"], ["y"], group=2,
                                                  auto_pad="SAME_UPPER", strides=[2, 2]),
     [["N", 4, 7, 6]], [_weights("w", (6, 2, 3, 2))], [4], 17),
    ("conv2d_same_lower", helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER"),
     [["N", 1, 5, 5]], [_weights("w", (2, 1, 2, 2))], [4], 17),
    ("conv3d", helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 1, 1, 0, 0]),
     [["N", 2, 4, 5, 3]], [_weights("w", (3, 2, 3, 2, 2)), _weights("b", (3,))], [5], 17),
    ("maxpool_ceil_dilation", helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                               strides=[2, 2], dilations=[1, 2], ceil_mode=1,
                                               pads=[1, 1, 0, 0]),
     [["N", 2, 9, 10]], [], [4], 17),
    ("maxpool_indices", helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2],
                                         strides=[2, 2]), [["N", 2, 4, 6]], [], [4, 4], 17),
    ("avgpool_include_pad_ceil", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                  strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                                  count_include_pad=1),
     [["N", 3, 8, 7]], [], [4], 17),
    ("avgpool_exclude_pad", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 3],
                                             pads=[1, 1, 1, 1]), [["N", 3, 5, 5]], [], [4], 17),
    ("avgpool_1d_same", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3],
                                         auto_pad="SAME_UPPER", strides=[2]), [["N", 2, 9]], [],
     [3], 17),
    ("global_pools", helper.make_node("GlobalAveragePool", ["x"], ["y"]), [["N", 3, 4, 5]], [],
     [4], 17),
    ("global_max", helper.make_node("GlobalMaxPool", ["x"], ["y"]), [["N", 3, 4]], [], [3], 17),
    ("batchnorm", helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                   epsilon=1e-3), [["N", 3, 4, 2]],
     [_weights("s", (3,)), _weights("b", (3,), 1), _weights("m", (3,), 2),
      _init("v", [0.5, 1.0, 2.0])], [4], 15),
    ("softmax_axis1", helper.make_node("Softmax", ["x"], ["y"], axis=1), [["N", 4, 3]], [], [3],
     13),
    ("logsoftmax", helper.make_node("LogSoftmax", ["x"], ["y"]), [["N", 5]], [], [2], 13),
    ("leaky_relu", helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.2), [["N", 5]], [], [2], 16),
    ("clip_bounds", helper.make_node("Clip", ["x", "lo", "hi"], ["y"]), [["N", 5]],
     [_init("lo", -0.5), _init("hi", 0.7)], [2], 13),
    ("clip_min_only", helper.make_node("Clip", ["x", "lo"], ["y"]), [["N", 5]],
     [_init("lo", 0.1)], [2], 13),
    ("sum_max_broadcast", helper.make_node("Max", ["x", "c", "d"], ["y"]), [["N", 3]],
     [_weights("c", (1, 3)), _weights("d", (3,), 1)], [2], 13),
    ("sub_div_neg", helper.make_node("Div", ["x", "c"], ["y"]), [["N", 3]],
     [_init("c", [2.0, -4.0, 0.5])], [2], 14),
    ("pad_reflect", helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect"), [["N", 2, 5]],
     [_ints("p", [0, 0, 2, 0, 0, 3])], [3], 13),
    ("pad_edge_axes", helper.make_node("Pad", ["x", "p", "", "ax"], ["y"], mode="edge"),
     [["N", 2, 5]], [_ints("p", [1, 2]), _ints("ax", [-1])], [3], 18),
    ("pad_constant_negative", helper.make_node("Pad", ["x", "p", "v"], ["y"]), [["N", 4, 5]],
     [_ints("p", [0, -1, 2, 0, 1, -2]), _init("v", 1.5)], [3], 13),
    ("slice_steps_negative", helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"]),
     [["N", 6, 7]], [_ints("s", [-1, 1]), _ints("e", [-100, 100]), _ints("a", [1, 2]),
                     _ints("t", [-2, 3])], [3], 13),
    ("reshape_zero_minus_one", helper.make_node("Reshape", ["x", "s"], ["y"]), [["N", 2, 6]],
     [_ints("s", [0, -1, 3])], [3], 14),
    ("transpose", helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1]), [["N", 2, 3]], [],
     [3], 13),
    ("squeeze_unsqueeze", helper.make_node("Unsqueeze", ["x", "a"], ["y"]), [["N", 3]],
     [_ints("a", [1, -1])], [4], 13),
    ("squeeze", helper.make_node("Squeeze", ["x", "a"], ["y"]), [["N", 1, 3, 1]],
     [_ints("a", [1, 3])], [2], 13),
    ("flatten_axis2", helper.make_node("Flatten", ["x"], ["y"], axis=2), [["N", 2, 3, 4]], [], [2],
     13),
    ("concat_neg_axis", helper.make_node("Concat", ["x", "x"], ["y"], axis=-1), [["N", 2]], [],
     [2], 13),
    ("gather_negative", helper.make_node("Gather", ["w", "i"], ["y"], axis=1), [],
     [_weights("w", (3, 5)), _ints("i", [[0, -1], [2, 3]])], [3], 13),
    ("argmax_last_index", helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0,
                                           select_last_index=1), [["N", 4]], [], [1], 13),
    ("reduce_mean_18", helper.make_node("ReduceMean", ["x", "a"], ["y"], keepdims=0),
     [["N", 3, 4]], [_ints("a", [-1])], [2], 18),
    ("reduce_sum_all", helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1), [["N", 3]], [], [2],
     13),
    ("reduce_max_13", helper.make_node("ReduceMax", ["x"], ["y"], axes=[1]), [["N", 3, 2]], [],
     [3], 13),
    ("shape_start_end", helper.make_node("Shape", ["x"], ["y"], start=1, end=-1), [["N", 3, 4, 5]],
     [], [1], 15),
    ("sign_abs", helper.make_node("Sign", ["x"], ["y"]), [["N", 4]], [], [2], 13),
    ("sigmoid", helper.make_node("Sigmoid", ["x"], ["y"]), [["N", 4]], [], [2], 13),
    ("rnn_tanh_bias_h0", helper.make_node("RNN", ["x", "w", "r", "b", "", "h0"], ["y", "yh"],
                                          hidden_size=3), [[5, 2, 2]],
     [_weights("w", (1, 3, 2)), _weights("r", (1, 3, 3), 1), _weights("b", (1, 6), 2),
      _weights("h0", (1, 2, 3), 3)], [4, 3], 14),
    ("rnn_relu_no_bias", helper.make_node("RNN", ["x", "w", "r"], ["", "yh"], hidden_size=4,
                                          activations=["Relu"]), [[3, "N", 2]],
     [_weights("w", (1, 4, 2)), _weights("r", (1, 4, 4), 1)], [3], 14),
    # (onnxruntime has no layout=1 RNN; the ONNX node test test_simple_rnn_batchwise covers it)
    ("rnn_bidirectional", helper.make_node("RNN", ["x", "w", "r"], ["y", "yh"], hidden_size=2,
                                           direction="bidirectional"), [[4, "N", 3]],
     [_weights("w", (2, 2, 3)), _weights("r", (2, 2, 2), 1)], [4, 3], 14),
]


def _op_model(node, input_shapes, initializers, output_ranks, opset):
    inits = {t.name for t in initializers}
    data_inputs = [name for name in node.input if name and name not in inits]
    inputs = [helper.make_tensor_value_info(n, F32, s) for n, s in zip(data_inputs, input_shapes)]
    names = [o for o in node.output if o]
    outputs = [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, [f"{n}{i}" for i in range(r)])
               for n, r in zip(names, output_ranks)]
    graph = helper.make_graph([node], "op", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(model)  # fill in the outputs' element types
    for out, typed in zip(model.graph.output, inferred.graph.output):
        out.type.tensor_type.elem_type = typed.type.tensor_type.elem_type or F32
    return model


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_single_op_matches_onnxruntime(case, tmp_path):
    name, node, shapes, inits, ranks, opset = case
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(_op_model(node, shapes, inits, ranks, opset), path)
    for batch in (1, 3):
        report = compare_model(path, batch=batch, seed=batch)
        assert report.ok, report.format()
