"""Single-op models of the ops added for transformer and common exports, against onnxruntime
(projc's forward at rtol/atol 1e-5 in float32; integer outputs exact), and their import checks."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.cli.compare import compare_model
from projc.errors import ModelLoadError
from projc.frontend.importer import from_onnx

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _init(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _ints(name, value):
    return _init(name, value, np.int64)


def _weights(name, shape, seed=0):
    return _init(name, np.random.default_rng(seed).standard_normal(shape))


def _model(node, inputs, initializers=(), opset=17, outputs=None):
    """``inputs``: [(name, elem type, shape)]; outputs typed by ONNX shape inference."""
    inits = list(initializers)
    infos = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    names = [o for o in node.output if o]
    graph = helper.make_graph([node], "op", infos,
                              [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None)
                               for n in names], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    for out in inferred.graph.output:
        if not out.type.tensor_type.HasField("shape"):  # function ops: shaped like input 0
            out = helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type or F32,
                                                [f"{out.name}{i}" for i in range(len(inputs[0][2]))])
        model.graph.output.append(out)
    return model


def _x(shape, dtype=F32):
    return [("x", dtype, shape)]


N = "N"
CASES = [
    # normalization
    ("layernorm_axis1", helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=1),
     _x([N, 3, 4]), [_weights("s", (3, 4)), _weights("b", (4,), 1)], 17),
    ("layernorm_no_bias", helper.make_node("LayerNormalization", ["x", "s"], ["y"], epsilon=0.1),
     _x([N, 5]), [_weights("s", (5,))], 17),
    ("rmsnorm", helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-2),
     _x([N, 3, 4]), [_weights("s", (3, 4))], 23),
    # (GroupNormalization-18 is deprecated: onnx.checker refuses it since onnx 1.19)
    ("groupnorm_21", helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2,
                                      epsilon=1e-3), _x([N, 6, 2, 2]),
     [_weights("s", (6,)), _weights("b", (6,), 1)], 21),
    ("instancenorm", helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"]),
     _x([N, 3, 4, 2]), [_weights("s", (3,)), _weights("b", (3,), 1)], 17),
    # elementwise
    ("mod_int", helper.make_node("Mod", ["x", "d"], ["y"]), _x([N, 4], I64),
     [_ints("d", [3, -3, 2, -2])], 17),
    ("mod_int_fmod", helper.make_node("Mod", ["x", "d"], ["y"], fmod=1), _x([N, 4], I64),
     [_ints("d", [3, -3, 2, -2])], 17),
    ("mod_float_fmod", helper.make_node("Mod", ["x", "d"], ["y"], fmod=1), _x([N, 4]),
     [_init("d", [0.7, -0.7, 1.5, -1.5])], 17),
    ("mish", helper.make_node("Mish", ["x"], ["y"]), _x([N, 5]), [], 18),
    ("softsign", helper.make_node("Softsign", ["x"], ["y"]), _x([N, 5]), [], 17),
    ("sin", helper.make_node("Sin", ["x"], ["y"]), _x([N, 5]), [], 17),
    ("cos", helper.make_node("Cos", ["x"], ["y"]), _x([N, 5]), [], 17),
    ("atan", helper.make_node("Atan", ["x"], ["y"]), _x([N, 5]), [], 17),
    ("sinh", helper.make_node("Sinh", ["x"], ["y"]), _x([N, 5]), [], 17),
    ("hardmax", helper.make_node("Hardmax", ["x"], ["y"], axis=1), _x([N, 4, 3]), [], 17),
    # transformer pieces
    ("trilu_lower_k", helper.make_node("Trilu", ["x", "k"], ["y"], upper=0), _x([N, 4, 5]),
     [_ints("k", 1)], 17),
    ("trilu_upper", helper.make_node("Trilu", ["x"], ["y"]), _x([N, 3, 3]), [], 17),
    ("einsum_bmm", helper.make_node("Einsum", ["x", "w"], ["y"], equation="bij,jk->bik"),
     _x([N, 2, 3]), [_weights("w", (3, 4))], 17),
    ("einsum_bilinear", helper.make_node("Einsum", ["x", "w", "x"], ["y"],
                                         equation="bi,ij,bj->b"), _x([N, 3]),
     [_weights("w", (3, 3))], 17),
    ("einsum_transpose_implicit", helper.make_node("Einsum", ["x"], ["y"], equation="bji"),
     _x([N, 2, 3]), [], 17),
    ("attention_gqa_3d", helper.make_node("Attention", ["x", "k", "v"], ["y"], q_num_heads=4,
                                          kv_num_heads=2, is_causal=1),
     _x([N, 3, 8]) + [("k", F32, [N, 5, 4]), ("v", F32, [N, 5, 6])], [], 23),
    ("attention_4d_mask_softcap", helper.make_node("Attention", ["x", "k", "v", "m"], ["y"],
                                                   softcap=2.0, scale=0.3),
     _x([N, 2, 3, 4]) + [("k", F32, [N, 2, 5, 4]), ("v", F32, [N, 2, 5, 3])],
     [_weights("m", (3, 5), 2)], 23),
    # reductions
    ("reduce_l2_13", helper.make_node("ReduceL2", ["x"], ["y"], axes=[1]), _x([N, 3, 2]), [], 13),
    ("reduce_l1_18", helper.make_node("ReduceL1", ["x", "a"], ["y"], keepdims=0), _x([N, 3, 2]),
     [_ints("a", [-1])], 18),
    ("reduce_logsumexp", helper.make_node("ReduceLogSumExp", ["x", "a"], ["y"]), _x([N, 4]),
     [_ints("a", [1])], 18),
    ("reduce_prod", helper.make_node("ReduceProd", ["x"], ["y"], axes=[2], keepdims=0),
     _x([N, 2, 3]), [], 13),
    ("reduce_sumsquare", helper.make_node("ReduceSumSquare", ["x", "a"], ["y"]), _x([N, 2, 3]),
     [_ints("a", [0, 2])], 18),
    # indexing
    ("cumsum_exclusive_reverse", helper.make_node("CumSum", ["x", "a"], ["y"], exclusive=1,
                                                  reverse=1), _x([N, 5]), [_ints("a", 1)], 14),
    ("topk_smallest", helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=0),
     _x([N, 6, 2]), [_ints("k", [3])], 17),
    ("topk_int", helper.make_node("TopK", ["x", "k"], ["v", "i"]), _x([N, 6], I64),
     [_ints("k", [2])], 17),
    ("gather_elements", helper.make_node("GatherElements", ["w", "x"], ["y"], axis=1),
     _x([2, 3], I64), [_weights("w", (2, 5))], 17),
    ("scatternd_add", helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="add"),
     _x([4, 3]), [_ints("i", [[1], [3], [1]]), _weights("u", (3, 3))], 17),
    ("scatter_elements_mul", helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1,
                                              reduction="mul"), _x([3, 4]),
     [_ints("i", [[0, -1], [2, 2], [1, 3]]), _weights("u", (3, 2))], 18),
    # spatial
    ("convtranspose_groups_strides", helper.make_node(
        "ConvTranspose", ["x", "w", "b"], ["y"], group=2, strides=[2, 3], pads=[1, 0, 0, 2],
        output_padding=[1, 0], dilations=[1, 2]), _x([N, 4, 3, 4]),
     [_weights("w", (4, 3, 3, 2)), _weights("b", (6,), 1)], 17),
    ("convtranspose_1d_same_upper", helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], strides=[2], auto_pad="SAME_UPPER"), _x([N, 2, 5]),
     [_weights("w", (2, 3, 4))], 17),
    ("convtranspose_same_lower", helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_LOWER"),
     _x([N, 1, 3, 3]), [_weights("w", (1, 2, 3, 3))], 17),
    ("convtranspose_output_shape", helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], strides=[3], output_shape=[9]), _x([N, 1, 3]),
     [_weights("w", (1, 2, 2))], 17),
    ("depth_to_space_dcr", helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2),
     _x([N, 8, 2, 3]), [], 17),
    ("depth_to_space_crd", helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2,
                                            mode="CRD"), _x([N, 8, 2, 3]), [], 17),
    ("space_to_depth", helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2),
     _x([N, 2, 4, 6]), [], 17),
]

_RESIZE = [
    ("nearest", "half_pixel", "round_prefer_floor"), ("nearest", "asymmetric", "floor"),
    ("nearest", "align_corners", "round_prefer_ceil"), ("nearest", "pytorch_half_pixel", "ceil"),
    ("linear", "half_pixel", None), ("linear", "asymmetric", None),
    ("linear", "align_corners", None), ("linear", "pytorch_half_pixel", None),
    ("cubic", "half_pixel", None), ("cubic", "align_corners", None),
]
for _mode, _coords, _nearest in _RESIZE:
    _attrs = {"mode": _mode, "coordinate_transformation_mode": _coords}
    if _nearest:
        _attrs["nearest_mode"] = _nearest
    CASES.append((f"resize_up_scales_{_mode}_{_coords}", helper.make_node(
        "Resize", ["x", "", "s"], ["y"], **_attrs), _x([N, 2, 3, 4]),
        [_init("s", [1, 1, 2.5, 1.5])], 13))
    CASES.append((f"resize_down_sizes_{_mode}_{_coords}", helper.make_node(
        "Resize", ["x", "", "", "z"], ["y"], **_attrs), _x([2, 2, 7, 5]),
        [_ints("z", [2, 2, 3, 2])], 13))
CASES += [
    ("resize_align_corners_down_scales", helper.make_node(
        "Resize", ["x", "", "s"], ["y"], mode="linear",
        coordinate_transformation_mode="align_corners"), _x([N, 1, 4, 4]),
     [_init("s", [1, 1, 0.6, 0.6])], 13),
    ("resize_18_axes_not_larger", helper.make_node(
        "Resize", ["x", "", "", "z"], ["y"], mode="linear", axes=[2, 3],
        keep_aspect_ratio_policy="not_larger"), _x([N, 1, 4, 6]), [_ints("z", [7, 7])], 18),
    ("resize_18_antialias", helper.make_node(
        "Resize", ["x", "", "s"], ["y"], mode="cubic", antialias=1), _x([N, 1, 8, 9]),
     [_init("s", [1, 1, 0.5, 0.4])], 18),
    ("resize_tf_crop", helper.make_node(
        "Resize", ["x", "r", "", "z"], ["y"], mode="linear", extrapolation_value=-7.0,
        coordinate_transformation_mode="tf_crop_and_resize"), _x([2, 1, 4, 4]),
     [_init("r", [0, 0, -0.2, 0.3, 1, 1, 0.9, 1.3]), _ints("z", [2, 1, 5, 3])], 13),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(case, tmp_path):
    name, node, inputs, inits, opset = case
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(_model(node, inputs, inits, opset), path)
    for batch in (1, 3):
        report = compare_model(path, batch=batch, seed=batch)
        assert report.ok, report.format()


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_legacy_upsample_keeps_its_asymmetric_coordinates(mode, tmp_path, capsys):
    """An opset-9 Upsample reaches projc as the Resize-13 onnx's converter makes of it, which
    defaults to half_pixel coordinates; projc restores Upsample's (onnxruntime runs the file)."""
    node = helper.make_node("Upsample", ["x", "s"], ["y"], mode=mode)
    graph = helper.make_graph([node], "up", [helper.make_tensor_value_info("x", F32, [N, 1, 2, 3])],
                              [helper.make_tensor_value_info("y", F32, [N, 1, 4, 4])],
                              [_init("s", [1, 1, 2, 1.5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 7
    path = str(tmp_path / "upsample.onnx")
    onnx.save(model, path)
    report = compare_model(path, batch=2)
    assert report.ok, report.format()
    assert "upgraded to 13" in capsys.readouterr().err


@pytest.mark.parametrize("node,inputs,inits,opset,match", [
    (helper.make_node("Mod", ["x", "x"], ["y"]), _x([N, 2]), [], 17, "fmod=0"),
    (helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=3), _x([N, 2]),
     [_weights("s", (2,))], 17, "axis=3"),
    (helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3),
     _x([N, 4, 2]), [_weights("s", (4,)), _weights("b", (4,))], 21, "not divisible"),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2], output_padding=[2]),
     _x([N, 1, 3]), [_weights("w", (1, 1, 2))], 17, "output_padding"),
    (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2), _x([N, 6, 2, 2]), [], 17,
     "divisible"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], mode="area"), _x([N, 1, 2, 2]),
     [_init("s", [1, 1, 2, 2])], 13, "mode='area'"),
    (helper.make_node("TopK", ["x", "k"], ["v", "i"], largest=2), _x([N, 4]),
     [_ints("k", [2])], 17, "largest=2"),
    (helper.make_node("Einsum", ["x"], ["y"], equation="ij,jk->ik"), _x([N, 2]), [], 17,
     "2 operand terms"),
])
def test_invalid_attributes_are_refused_at_import(node, inputs, inits, opset, match):
    model = helper.make_model(
        helper.make_graph([node], "bad", [helper.make_tensor_value_info(n, t, s)
                                          for n, t, s in inputs],
                          [helper.make_tensor_value_info(o, F32, [f"{o}{i}" for i in
                                                                  range(len(inputs[0][2]))])
                           for o in node.output],
                          inits), opset_imports=[helper.make_opsetid("", opset)])
    with pytest.raises(ModelLoadError, match=match):
        from_onnx(model)


def _resize_10(scales, mode, tmp_path):
    node = helper.make_node("Resize", ["x", "s"], ["y"], mode=mode)
    graph = helper.make_graph([node], "r10", [helper.make_tensor_value_info("x", F32, [N, 1, 5, 4])],
                              [helper.make_tensor_value_info("y", F32, [N, 1, "h", "w"])],
                              [_init("s", scales)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 7
    path = str(tmp_path / "resize10.onnx")
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 0.6, 0.5], [1, 1, 0.5, 2.0], [1, 1, 1.7, 2.5]])
def test_legacy_resize_10_rounds_as_onnxruntime(scales, mode, tmp_path):
    """Resize-10: asymmetric coordinates; nearest truncates, and rounds up on downsampled axes."""
    report = compare_model(_resize_10(scales, mode, tmp_path), batch=2)
    assert report.ok, report.format()


def test_legacy_resize_10_mixed_nearest_rounding_is_refused(tmp_path):
    from projc.errors import UnsupportedModelError
    from projc.frontend.importer import load_model

    with pytest.raises(UnsupportedModelError, match="downsamples some axes and upsamples"):
        load_model(_resize_10([1, 1, 0.6, 1.5], "nearest", tmp_path))
