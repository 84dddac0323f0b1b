"""ONNX importer and op registry: shapes, roles, folding, and the errors bad models get."""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.errors import ModelLoadError, UnsupportedModelError
from projc.frontend.importer import from_onnx, load_model
from projc.ir import DTYPES
from projc.ir.verify import verify
from projc.ops import OpDef, format_supported_ops, lookup, register, supported_ops
from projc.ops.registry import _REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))


def model_path(name: str) -> str:
    path = os.path.join(ROOT, "models", f"{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"models/{name}.onnx is not there yet")
    return path


def make_model(nodes, inputs, outputs, *, opset=17, initializers=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def tensor_info(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def save(tmp_path, model, name="m.onnx") -> str:
    path = str(tmp_path / name)
    onnx.save(model, path)
    return path


# -- the bundled models -----------------------------------------------------------------------

@pytest.mark.parametrize("path", MODELS, ids=[os.path.basename(p) for p in MODELS])
def test_every_model_imports_with_types_everywhere(path):
    graph = load_model(path)
    assert graph.meta["path"] == path and graph.meta["opset"][""] >= 13
    for value in graph.values():
        assert value.dtype in DTYPES
        assert all(isinstance(d, (int, str)) for d in value.shape)
    for op in graph.ops:
        assert op.annots["src"]
        assert all(v in set(graph.values()) for v in op.inputs if v is not None)
    assert graph.params, "every bundled model has trainable weights"
    verify(graph)


def test_mlp_digits_shapes_and_roles():
    graph = load_model(model_path("mlp_digits"))
    (x,) = graph.inputs
    assert (x.hint, x.type_str(), x.role) == ("x", "f32[B,64]", "input")
    assert [v.hint for v in graph.params] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [v.type_str() for v in graph.params] == [
        "f32[32,64]", "f32[32]", "f32[10,32]", "f32[10]"]
    assert graph.consts == []
    assert [op.kind for op in graph.ops] == ["Gemm", "Relu", "Gemm"]
    assert graph.ops[0].params == {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}
    assert graph.ops[0].annots == {"src": "/fc1/Gemm"}
    assert [v.type_str() for v in graph.outputs] == ["f32[B,10]"]


def test_cnn_digits_reshape_chain_folds():
    graph = load_model(model_path("cnn_digits"))
    kinds = [op.kind for op in graph.ops]
    assert kinds == ["Conv", "Relu", "ReduceMax", "Reshape", "Gemm"]
    reshape = graph.ops[3]
    shape = reshape.inputs[1]
    assert shape.role == "const" and shape.data.tolist() == [0, -1]  # batch copied, rest inferred
    assert reshape.outputs[0].type_str() == "f32[B,16]"
    assert [v.hint for v in graph.params] == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]


def test_sklearn_mlp_roles_and_unnamed_batch():
    graph = load_model(model_path("sklearn_mlp"))
    assert graph.inputs[0].type_str() == "f32[B,64]"  # skl2onnx leaves the batch dim unnamed
    assert {v.hint for v in graph.params} == {"coefficient", "intercepts", "coefficient1",
                                             "intercepts1"}
    assert {v.hint for v in graph.consts} == {"classes", "shape_tensor"}
    assert "ml.ArrayFeatureExtractor" in [op.kind for op in graph.ops]
    assert [(v.hint, v.type_str()) for v in graph.outputs] == [
        ("label", "i64[B]"), ("probabilities", "f32[B,10]")]


# -- bad files --------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.onnx: no such file"):
        load_model(tmp_path / "nope.onnx")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty.onnx: the file is empty"):
        load_model(path)


def test_truncated_protobuf(tmp_path):
    data = open(model_path("mlp_digits"), "rb").read()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "half.onnx" in str(info.value) and "truncated" in str(info.value)
    assert "\n" not in str(info.value)


def test_checker_failure_is_a_load_error(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", [2])],
                       [tensor_info("y", [2])])
    model.graph.node[0].input[0] = "undefined"
    with pytest.raises(ModelLoadError, match="onnx.checker"):
        load_model(save(tmp_path, model))


def test_all_unsupported_ops_listed_once(tmp_path):
    nodes = [helper.make_node("LpNormalization", ["x"], ["h"], name="hm"),
             helper.make_node("Relu", ["h"], ["r"], name="fine"),
             helper.make_node("MeanVarianceNormalization", ["r"], ["y"], axes=[1], name="es")]
    model = make_model(nodes, [tensor_info("x", ["N", 4])], [tensor_info("y", ["N"])])
    with pytest.raises(UnsupportedModelError) as info:
        load_model(save(tmp_path, model, "two_bad.onnx"))
    message = str(info.value)
    assert 'LpNormalization (opset 17) at node "hm"' in message
    assert 'MeanVarianceNormalization (opset 17) at node "es"' in message
    assert "fine" not in message and "projc ops" in message and "two_bad.onnx" in message


def test_unnamed_unsupported_node_gets_a_label(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("LpNormalization", ["r"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [2, 3])], [tensor_info("y", [2, 3])])
    with pytest.raises(UnsupportedModelError, match='node "LpNormalization_1"'):
        load_model(save(tmp_path, model))


def test_old_opset_is_upgraded_in_memory_with_a_note(tmp_path, capfd):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", ["N", 4])],
                       [tensor_info("y", ["N", 4])], opset=7)
    path = save(tmp_path, model)
    graph = load_model(path)
    assert graph.meta["opset"][""] == 13 and [op.kind for op in graph.ops] == ["Relu"]
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"projc: note: {path}: opset 7 upgraded to 13 in memory with "
                   "onnx.version_converter"]
    assert onnx.load(path).opset_import[0].version == 7  # the file is left alone


def test_opset_no_onnx_defines_is_refused(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", ["N", 4])],
                       [tensor_info("y", ["N", 4])], opset=99)
    with pytest.raises(UnsupportedModelError, match=r"opset 99 of domain ai.onnx does not exist"):
        load_model(save(tmp_path, model))


def test_old_ir_initializer_missing_from_inputs_is_accepted(tmp_path):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [tensor_info("x", ["N", 4])], [tensor_info("y", ["N", 4])],
                       opset=13, initializers=[w])
    model.ir_version = 3  # before IR 4 every initializer had to be listed as an input
    graph = load_model(save(tmp_path, model))
    assert [v.hint for v in graph.params] == ["w"] and [v.hint for v in graph.inputs] == ["x"]


def test_input_of_unknown_rank(tmp_path):
    model = make_model([helper.make_node("Relu", ["pixels"], ["y"])],
                       [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, None)],
                       [tensor_info("y", ["N", 4])])
    with pytest.raises(UnsupportedModelError, match='input "pixels" has unknown rank'):
        load_model(save(tmp_path, model))


def test_runtime_value_in_a_static_operand(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="rs")]
    inputs = [tensor_info("x", [2, 6]), tensor_info("shape", [2], TensorProto.INT64)]
    model = make_model(nodes, inputs,
                       [tensor_info("y", [3, 4])])
    with pytest.raises(UnsupportedModelError, match=r'node "rs" \(Reshape\): input 1 \("shape"\) '
                                                    "must be known at compile time"):
        from_onnx(model)
    graph = from_onnx(model, bind={"shape": np.array([3, 4])})  # bound: a constant
    assert graph.ops[0].outputs[0].type_str() == "f32[3,4]"
    assert [v.hint for v in graph.inputs] == ["x"]


def test_unsupported_variant_of_a_registered_op_names_the_node(tmp_path):
    inits = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn1",
                            training_mode=1)
    model = make_model([node], [tensor_info("x", ["N", 2])], [tensor_info("y", ["N", 2])],
                       initializers=inits)
    with pytest.raises(UnsupportedModelError, match=r'bn.onnx: node "bn1" \(BatchNormalization\) '
                                                    "cannot be imported: .*training_mode=1"):
        load_model(save(tmp_path, model, "bn.onnx"))


# -- folding, symbols, roles --------------------------------------------------------------------

def test_constant_subgraphs_fold():
    def constant(name, value):
        return helper.make_node("Constant", [], [name],
                                value=numpy_helper.from_array(np.array(value, np.float32)))
    nodes = [constant("c", [3.0]), constant("two", [2.0]),
             helper.make_node("Mul", ["c", "two"], ["six"]),
             helper.make_node("Add", ["x", "six"], ["y"])]
    graph = from_onnx(make_model(nodes, [tensor_info("x", ["N", 1])], [tensor_info("y", ["N", 1])]))
    assert [op.kind for op in graph.ops] == ["Add"]
    six = graph.ops[0].inputs[1]
    assert six.role == "const" and six.hint == "six" and six.data.tolist() == [6.0]
    assert [v.hint for v in graph.initializers] == ["six"]  # folded-away inputs are dropped


def test_float_initializer_feeding_a_computation_is_trainable():
    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    graph = from_onnx(make_model([helper.make_node("Mul", ["x", "two"], ["y"])],
                                 [tensor_info("x", ["N", 1])], [tensor_info("y", ["N", 1])],
                                 initializers=[two]))
    assert [(v.hint, v.role) for v in graph.initializers] == [("two", "param")]


def test_symbolic_dims_and_derived_shapes():
    nodes = [helper.make_node("Concat", ["x", "x"], ["xx"], axis=0),
             helper.make_node("Flatten", ["x"], ["f"], axis=0)]
    graph = from_onnx(make_model(nodes, [tensor_info("x", ["batch", "seq", 4])],
                                 [tensor_info("xx", ["a", "b", 4]), tensor_info("f", ["c", "d"])]))
    assert graph.inputs[0].shape == ("B", "seq", 4)
    assert graph.outputs[0].shape == ("Bx2", "seq", 4)
    assert graph.outputs[1].shape[0] == 1 and isinstance(graph.outputs[1].shape[1], str)


def test_shape_of_a_static_dim_is_constant():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
             helper.make_node("Concat", ["minus1", "n1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = from_onnx(make_model(nodes, [tensor_info("x", ["N", 5])], [tensor_info("y", ["N", 5])],
                                 initializers=inits))
    assert [op.kind for op in graph.ops] == ["Reshape"]
    assert graph.ops[0].inputs[1].data.tolist() == [-1, 5]
    assert graph.outputs[0].shape == ("B", 5)


def test_frozen_operands_are_consts():
    def init(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)
    inits = [init("scale", [1, 2]), init("bias", [0, 1]), init("mean", [0, 0]), init("var", [1, 1]),
             init("lo", 0.0), init("hi", 6.0)]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["b"]),
             helper.make_node("Clip", ["b", "lo", "hi"], ["y"])]
    graph = from_onnx(make_model(nodes, [tensor_info("x", ["N", 2, 3])],
                                 [tensor_info("y", ["N", 2, 3])], initializers=inits))
    assert {v.hint for v in graph.params} == {"scale", "bias"}
    assert {v.hint for v in graph.consts} == {"mean", "var", "lo", "hi"}


def test_split_at_opset_13_gets_its_output_count():
    nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1)]
    graph = from_onnx(make_model(nodes, [tensor_info("x", ["N", 6])],
                                 [tensor_info(n, ["N", 2]) for n in "abc"], opset=13))
    assert graph.ops[0].params == {"axis": 1, "num_outputs": 3}
    assert [v.shape for v in graph.outputs] == [("B", 2)] * 3


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_axes_move_from_attribute_to_input(opset):
    if opset < 18:
        nodes = [helper.make_node("ReduceMax", ["x"], ["y"], axes=[2, 3], keepdims=0)]
        inits = []
    else:
        nodes = [helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)]
        inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    graph = from_onnx(make_model(nodes, [tensor_info("x", ["N", 4, 5, 6])],
                                 [tensor_info("y", ["N", 4])], opset=opset, initializers=inits))
    assert graph.outputs[0].shape == ("B", 4)


# -- registry ---------------------------------------------------------------------------------

def test_lookup_picks_the_newest_registration_not_after_the_opset():
    assert lookup("ReduceMax", 17).since == 13 and "axes" in lookup("ReduceMax", 17).attrs
    assert lookup("ReduceMax", 18).since == 18 and lookup("ReduceMax", 18).static == (1,)
    assert lookup("ReduceSum", 13).static == (1,)
    assert lookup("Relu", 12) is None and lookup("Relu", 21).since == 14
    assert lookup("LpNormalization", 17) is None
    assert lookup("ml.ZipMap", 1) is not None


def test_registry_lists_the_required_ops():
    required = ("Gemm MatMul Add Sub Mul Div Neg Sum Max Relu LeakyRelu Clip Abs Sign Identity "
                "Dropout Flatten Reshape Transpose Concat Squeeze Unsqueeze Slice Pad Conv "
                "MaxPool AveragePool GlobalMaxPool GlobalAveragePool ReduceMax ReduceSum "
                "ReduceMean BatchNormalization Softmax LogSoftmax Cast Constant ConstantOfShape "
                "Gather ArgMax RNN Shape Sigmoid Tanh ml.ArrayFeatureExtractor ml.ZipMap").split()
    ops = supported_ops()
    assert [k for k in required if k not in ops] == []
    table = format_supported_ops()
    assert "| Gemm | 13 |" in table and "ml.ZipMap" in table


def test_register_is_generic_and_rejects_duplicates():
    @register("projc_test.twice", since=1, attrs={"k": 2})
    def twice(x, *, k):
        return x * k
    try:
        opdef = lookup("projc_test.twice", 99)
        assert isinstance(opdef, OpDef) and opdef.fn(3, **opdef.attrs) == 6
        with pytest.raises(ValueError, match="registered twice"):
            register("projc_test.twice", since=1)(twice)
    finally:
        del _REGISTRY["projc_test.twice"]


# -- per-op validation: what onnxruntime refuses is refused at import, naming node and attribute

def _conv(**attrs):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)
    return make_model([node], [tensor_info("x", ["N", 1, 8, 8])],
                      [tensor_info("y", ["N", 2, "H", "W"])], initializers=[w])


def _pool(op_type="MaxPool", **attrs):
    node = helper.make_node(op_type, ["x"], ["y"], name="pool1", **attrs)
    return make_model([node], [tensor_info("x", ["N", 1, 8, 8])],
                      [tensor_info("y", ["N", 1, "H", "W"])])


@pytest.mark.parametrize("model,message", [
    (_conv(strides=[0, 1]), r'node "conv1" \(Conv\) is invalid: attribute strides=\[0, 1\]: '
                            r"every entry must be an integer >= 1"),
    (_conv(kernel_shape=[-3, 3]), r"attribute kernel_shape=\[-3, 3\]: every entry must be"),
    (_conv(kernel_shape=[2, 2]), r"kernel_shape=\[2, 2\] does not match the weight's spatial "
                                 r"shape \[3, 3\]"),
    (_conv(pads=[1, 1, -1, 1]), r"attribute pads=\[1, 1, -1, 1\]: every entry must be an "
                                r"integer >= 0"),
    (_conv(dilations=[1]), r"attribute dilations=\[1\] has 1 entries, expected 2"),
    (_conv(dilations=[5, 5]), r"the window \(kernel 3, dilation 5\) is larger than spatial axis"),
    (_conv(group=2), r"the input has 1 channels, the weight expects 1 x group 2 = 2"),
    (_pool(kernel_shape=[0, 2]), r'node "pool1" \(MaxPool\) is invalid: attribute '
                                 r"kernel_shape=\[0, 2\]"),
    (_pool(), r"Required attribute .kernel_shape. is missing"),  # onnx.checker
    (_pool("AveragePool", kernel_shape=[2, 2], pads=[2, 0, 0, 0]),
     r"each pad must be smaller than the kernel"),
])
def test_invalid_attributes_are_refused_naming_node_and_attribute(tmp_path, model, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(save(tmp_path, model))


def test_inputs_of_one_type_parameter_must_share_a_type(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3), np.float64), "w")  # float64 weight, f32 input
    model = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
                       [tensor_info("x", ["N", 4])], [tensor_info("y", ["N", 3])],
                       initializers=[w])
    with pytest.raises(ModelLoadError, match=r'node "fc" \(Gemm\) is invalid: inputs 0 and 1 '
                                             r"must have the same type \(T\), got "
                                             r"tensor\(float\) and tensor\(double\)"):
        load_model(save(tmp_path, model))


def test_initializer_data_not_filling_its_dims_is_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    del w.dims[:]
    w.dims.extend([4, 2])  # 12 values for 8 places (onnx.checker only catches too few)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [tensor_info("x", ["N", 4])], [tensor_info("y", ["N", 2])],
                       initializers=[w])
    with pytest.raises(ModelLoadError, match=r'initializer "w" \(dims \[4, 2\]\) holds data that '
                                             r"does not match its dims"):
        load_model(save(tmp_path, model))


def test_float64_model_computes_in_float64(tmp_path):
    from projc.backends.jax.forward import run_forward

    c = numpy_helper.from_array(np.array([1e300, 1.0], np.float64), "c")
    model = make_model([helper.make_node("Add", ["x", "c"], ["y"])],
                       [tensor_info("x", ["N", 2], TensorProto.DOUBLE)],
                       [tensor_info("y", ["N", 2], TensorProto.DOUBLE)], initializers=[c])
    graph = load_model(save(tmp_path, model))
    x = np.array([[1e300, 1e-300]], np.float64)
    (y,) = run_forward(graph, None, {"x": x})
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, x + np.array([1e300, 1.0]))  # float32 would give inf, 1.0


def test_float32_model_is_unchanged_by_the_float64_path():
    import jax

    from projc.backends.jax.forward import needs_x64, run_forward

    graph = load_model(model_path("mlp_digits"))
    assert not needs_x64(graph)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    (ours,) = run_forward(graph, None, {"x": x})
    with jax.enable_x64(False):
        (reference,) = run_forward(graph, None, {"x": x})
    assert ours.dtype == np.float32 and not jax.config.jax_enable_x64
    np.testing.assert_array_equal(ours, reference)


def test_graph_without_outputs_is_refused(tmp_path):
    model = make_model([], [tensor_info("x", ["N", 4])], [])
    with pytest.raises(ModelLoadError, match="the graph has no outputs"):
        load_model(save(tmp_path, model))
