"""Integer arithmetic of symbolic shapes (projc.frontend.symbolic): TorchScript's dynamic-batch
exports reshape to Mul(batch, heads) and resize to Concat(Shape(x)[:2], sizes)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from projc.cli.compare import compare_model
from projc.frontend.symbolic import Product, evaluate, resolve_resize_sizes


def entries(*values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def test_products_and_their_inverse():
    doubled = evaluate("Mul", [entries("B"), np.array([2], np.int64)], {})
    assert list(doubled) == ["Bx2"] and isinstance(doubled[0], Product)
    assert list(evaluate("Mul", [np.array(3), doubled], {}).reshape(-1)) == ["Bx6"]
    assert list(evaluate("Div", [evaluate("Mul", [doubled, np.array(3)], {}), np.array(6)], {})) \
        == ["B"]
    assert list(evaluate("Div", [doubled, np.array(4)], {})) == ["(Bx2/4)"]  # opaque, not B/2
    assert list(evaluate("Add", [entries("B", 4), np.array([0, 1])], {})) == ["B", 5]
    assert list(evaluate("Sub", [entries("B"), entries("B")], {})) == [0]
    assert list(evaluate("Mul", [entries("B"), entries("T")], {})) == ["(B*T)"]
    assert list(evaluate("Div", [entries(-7, 7), np.array([2, -2])], {})) == [-3, -3]  # truncation
    assert evaluate("Mul", [entries("B"), np.array([0.5])], {}) is None  # float shape math


def test_resize_sizes_keep_the_symbolic_axes():
    params = {"coordinate_transformation_mode": "align_corners"}
    sizes = resolve_resize_sizes(entries("B", 4, 5, 7), ("B", 4, 4, 6), params)
    assert sizes.tolist() == [4, 5, 7] and params["axes"] == [1, 2, 3]
    assert resolve_resize_sizes(entries("T", 4, 5, 7), ("B", 4, 4, 6), {}) is None
    crop = {"coordinate_transformation_mode": "tf_crop_and_resize"}
    assert resolve_resize_sizes(entries("B", 4, 5, 7), ("B", 4, 4, 6), crop) is None


def test_reshape_to_batch_times_heads_under_a_dynamic_batch(tmp_path):
    """x [N, 6, 8] -> Reshape [N*2, 6, 4] -> Transpose -> Reshape back [N, 6, 8] with
    the sizes computed from Shape(x), as TorchScript's MultiheadAttention export does."""
    def const(name, values):
        return numpy_helper.from_array(np.asarray(values, np.int64), name)

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Mul", ["n", "two"], ["n2"]),
        helper.make_node("Unsqueeze", ["n2", "axis0"], ["n2_1"]),
        helper.make_node("Concat", ["n2_1", "rest"], ["split"], axis=0),
        helper.make_node("Reshape", ["x", "split"], ["heads"]),
        helper.make_node("Neg", ["heads"], ["neg"]),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n_1"]),
        helper.make_node("Concat", ["n_1", "back"], ["merge"], axis=0),
        helper.make_node("Reshape", ["neg", "merge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 8])],
        [const("zero", 0), const("two", 2), const("axis0", [0]), const("rest", [6, 4]),
         const("back", [6, 8])])
    path = str(tmp_path / "heads.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = compare_model(path, batch=5)
    assert report.ok and report.outputs["y"].shape == (5, 6, 8)
