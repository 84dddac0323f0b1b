"""Resize / Upsample and PRelu for training (issue 23).

Resize nearest lowers to ``take`` moves, linear and cubic to ``take`` + one ``wsum`` family (a
fixed-coefficient sum per output); PRelu to relu(x) + a·min(x, 0) with the slope a trained
parameter (a bilinear ``mul``). The training graph's forward equals onnxruntime's on every
variant, and a few updates lower the loss and move the slope.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pass_util import evaluate, op_counts
from projc.frontend.importer import load_model
from projc.passes import compile_for_training


def _save(path, nodes, x_shape, y_shape, inits, opset=17):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return str(path)


def resize_model(path, mode, coord, *, scales=None, sizes=None, nearest="round_prefer_floor", in_hw=(3, 4)):
    """x [N,2,H,W] * w (a trained per-channel scale) -> Resize -> y."""
    inits = {"w": np.array([1.5, -0.5], np.float32).reshape(1, 2, 1, 1), "roi": np.zeros(0, np.float32)}
    inputs = ["xw", "roi"]
    if scales is not None:
        inits["scales"] = np.asarray(scales, np.float32)
        inputs.append("scales")
        out_hw = [int(np.floor(d * s)) for d, s in zip(in_hw, scales[2:])]
    else:  # sizes of the spatial axes only (opset 18 axes): sizes over every axis would fix the batch
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.asarray(sizes, np.int64)
        inputs += ["scales", "sizes"]
        out_hw = list(sizes)
    attrs = {"axes": [2, 3]} if sizes is not None else {}
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"]),
             helper.make_node("Resize", inputs, ["y"], mode=mode, coordinate_transformation_mode=coord,
                              nearest_mode=nearest, **attrs)]
    return _save(path, nodes, [2, *in_hw], [2, *out_hw], inits, opset=18 if sizes is not None else 17)


CASES = [
    ("nearest", "half_pixel", dict(scales=[1, 1, 2, 2])),
    ("nearest", "asymmetric", dict(scales=[1, 1, 2, 3], nearest="floor")),
    ("nearest", "align_corners", dict(sizes=[5, 7], nearest="round_prefer_ceil")),
    ("nearest", "half_pixel", dict(scales=[1, 1, 0.5, 0.5], in_hw=(4, 6))),
    ("linear", "half_pixel", dict(scales=[1, 1, 2, 2])),
    ("linear", "pytorch_half_pixel", dict(scales=[1, 1, 2, 2])),
    ("linear", "align_corners", dict(sizes=[5, 7])),
    ("linear", "asymmetric", dict(scales=[1, 1, 1, 2.5])),
    ("cubic", "half_pixel", dict(scales=[1, 1, 2, 2])),
]


@pytest.mark.parametrize("mode,coord,kw", CASES, ids=[f"{m}-{c}-{i}" for i, (m, c, _) in enumerate(CASES)])
def test_resize_lowers_and_matches_onnxruntime(tmp_path, mode, coord, kw):
    path = resize_model(tmp_path / "m.onnx", mode, coord, **kw)
    g = compile_for_training(load_model(path), loss="squared_error")
    counts = op_counts(g)
    assert "Resize" not in counts and counts.get("take", 0) >= 1
    assert counts.get("wsum", 0) == (0 if mode == "nearest" else 1)
    shape = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(evaluate(g, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,solver", [("nearest", "dr"), ("linear", "ap"), ("linear", "dr")])
def test_resize_trains(tmp_path, mode, solver):
    from projc.train.trainer import Trainer

    path = resize_model(tmp_path / "m.onnx", mode, "half_pixel", scales=[1, 1, 2, 2])
    tr = Trainer(path, solver=solver, steps_per_update=20, loss="squared_error")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2, 3, 4)).astype(np.float32)
    ratio = np.array([0.5 / 1.5, 2.0 / -0.5], np.float32).reshape(1, 2, 1, 1)  # a teacher with w = [0.5, 2]
    y = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x * ratio})[0]
    p = tr.init_params()
    before = tr.evaluate(p, x, y)["mse"]
    state = tr.init_state(p)
    for _ in range(5):
        p, state, _ = tr.update(p, state, x, y)
    after = tr.evaluate(p, x, y)["mse"]
    assert after < 0.5 * before


def prelu_model(path, slope_shape=(3,), hidden=3):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
             helper.make_node("PRelu", ["h", "a"], ["p"]),
             helper.make_node("Gemm", ["p", "W2", "b2"], ["y"])]
    slope = np.linspace(0.1, 0.3, int(np.prod(slope_shape))).reshape(slope_shape)
    inits = {"W1": rng.normal(size=(4, hidden)).astype(np.float32), "b1": np.zeros(hidden, np.float32),
             "a": slope.astype(np.float32), "W2": rng.normal(size=(hidden, 2)).astype(np.float32),
             "b2": np.zeros(2, np.float32)}
    return _save(path, nodes, [4], [2], inits)


def test_prelu_lowers_matches_onnxruntime_and_the_slope_trains(tmp_path):
    from projc.train.trainer import Trainer

    path = prelu_model(tmp_path / "m.onnx")
    g = compile_for_training(load_model(path))
    counts = op_counts(g)
    assert "PRelu" not in counts and counts["mul"] == 1 and counts["sum_pwl"] >= 2
    assert "a" in [v.hint for v in g.params]
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(evaluate(g, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    tr = Trainer(path, solver="dr", steps_per_update=20)
    y = np.random.default_rng(3).integers(0, 2, size=16)
    xb = np.random.default_rng(4).normal(size=(16, 4)).astype(np.float32)
    p0 = tr.init_params()
    p, state = p0, tr.init_state(p0)
    for _ in range(3):
        p, state, _ = tr.update(p, state, xb, y)
    assert not np.allclose(p["a"], p0["a"])
    assert tr.evaluate(p, xb, y)["loss"] < tr.evaluate(p0, xb, y)["loss"]


@pytest.mark.parametrize("slope,fn", [((1,), "leaky_relu"), ((3,), "clip")])
def test_prelu_frozen_slope(tmp_path, slope, fn):
    """A frozen slope: one value is a leaky ReLU; per-channel values keep the split (a linear mul)."""
    path = prelu_model(tmp_path / "m.onnx", slope_shape=slope)
    from projc.frontend.importer import from_onnx, read_model
    from projc.train.trainer import freeze_params

    graph = from_onnx(read_model(path).proto, path=path)
    freeze_params(graph, ["a"])
    g = compile_for_training(graph)
    fns = [op.params["fn"] for op in g.ops if op.kind == "sum_pwl"]
    assert fn in fns
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(evaluate(g, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
