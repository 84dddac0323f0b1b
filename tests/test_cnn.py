"""CNN exports: average pooling / GlobalAveragePool / ReduceMean as fixed-coefficient sums, BatchNorm
kept as a node, logits behind a Flatten of a pooled [B,C,1,1] tensor, and the bundled CNN models.

Forward checks compare the lowered training graph with onnxruntime; projection checks compare the
layouts' projection of a dot-with-a-constant-column family with the nearest point of
{(a, y): y = c.a} computed independently (normal equations), plus sampled feasible points.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pass_util import evaluate, op_counts, save_onnx
from projc.errors import PassError
from projc.frontend.importer import load_model
from projc.passes import compile_for_training

MODELS = Path(__file__).resolve().parents[1] / "models"


def _model(path, nodes, inits, in_shape, out_shape, opset=17):
    """A one-input model ``x`` -> ``logits`` (float32) saved at ``path``."""
    return save_onnx(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], inits, opset)


def _conv_inits(rng, cin=2, cout=3):
    return {"cw": rng.normal(size=(cout, cin, 3, 3)) / 3, "cb": rng.normal(size=cout) / 3}


def avgpool_model(path, rng, **attrs):
    """conv -> relu -> AveragePool(attrs) -> flatten -> gemm."""
    x = np.zeros((1, 3, 6, 6), np.float32)
    probe = helper.make_graph([helper.make_node("AveragePool", ["x"], ["y"], **attrs)], "p",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    pm = helper.make_model(probe, opset_imports=[helper.make_opsetid("", 17)])
    pm.ir_version = 8
    feat = ort.InferenceSession(pm.SerializeToString()).run(None, {"x": x})[0].size
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], **attrs),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    inits = {**_conv_inits(rng, 2, 3), "fw": rng.normal(size=(4, feat)) / 3, "fb": np.zeros(4)}
    return _model(path, nodes, inits, ["N", 2, 6, 6], ["N", 4])


def gap_model(path, rng, op="GlobalAveragePool", opset=17, bn=False):
    """conv [-> BatchNormalization] -> relu -> (GlobalAveragePool | ReduceMean | GlobalMaxPool) -> flatten."""
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1])]
    inits = _conv_inits(rng, 2, 4)
    if bn:
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["cn"], epsilon=1e-3))
        inits.update(g=1 + rng.normal(size=4) / 4, b=rng.normal(size=4) / 4, mu=rng.normal(size=4) / 4,
                     var=1 + rng.random(4))
    nodes.append(helper.make_node("Relu", ["cn" if bn else "c"], ["r"]))
    if op == "ReduceMean" and opset >= 18:
        nodes.append(helper.make_node("ReduceMean", ["r", "axes"], ["p"], keepdims=1))
        inits["axes"] = None
    elif op == "ReduceMean":
        nodes.append(helper.make_node("ReduceMean", ["r"], ["p"], axes=[2, 3], keepdims=1))
    else:
        nodes.append(helper.make_node(op, ["r"], ["p"]))
    nodes.append(helper.make_node("Flatten", ["p"], ["logits"]))
    if inits.get("axes", 0) is None:
        del inits["axes"]
        nodes.insert(0, helper.make_node("Constant", [], ["axes"],
                                         value=numpy_helper.from_array(np.array([-1, 2], np.int64))))
    return _model(path, nodes, inits, ["N", 2, 5, 5], ["N", 4], opset)


def _check_forward(path, x):
    graph = load_model(path)
    compiled = compile_for_training(graph)
    got = evaluate(compiled, {"x": x})[0]
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return compiled


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0], count_include_pad=1),
])
def test_avgpool_lowers_to_a_mean_family(tmp_path, attrs):
    rng = np.random.default_rng(0)
    path = avgpool_model(tmp_path / "m.onnx", rng, **attrs)
    x = rng.normal(size=(3, 2, 6, 6)).astype(np.float32)
    g = _check_forward(path, x)
    means = [op for op in g.ops if op.kind == "mean"]
    assert len(means) == 1 and means[0].annots["proj"] == "closed"
    k = int(np.prod(attrs["kernel_shape"]))
    assert means[0].params["metric"] == "sum"
    red = [means[0].inputs[0].shape[a] for a in means[0].params["axes"]]
    if attrs["kernel_shape"] == attrs["strides"] and not attrs.get("pads"):   # tiling: a split reshape
        assert red == attrs["kernel_shape"] and "patches" not in {op.kind for op in g.ops}
    else:
        assert red == [k]


def test_avgpool_refuses_excluded_padding(tmp_path):
    rng = np.random.default_rng(0)
    path = avgpool_model(tmp_path / "m.onnx", rng, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    with pytest.raises(PassError, match="count_include_pad"):
        compile_for_training(load_model(path))


@pytest.mark.parametrize("op,opset", [("GlobalAveragePool", 17), ("ReduceMean", 17), ("ReduceMean", 18)])
def test_global_means_lower_and_match_onnxruntime(tmp_path, op, opset):
    rng = np.random.default_rng(1)
    path = gap_model(tmp_path / "m.onnx", rng, op=op, opset=opset)
    g = _check_forward(path, rng.normal(size=(4, 2, 5, 5)).astype(np.float32))
    assert op_counts(g)["conv"] == 1 and op_counts(g)["mean"] == 1 and "ReduceMean" not in op_counts(g)


def test_reduce_mean_over_middle_axis(tmp_path):
    """keepdims=0 over a non-trailing axis."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[1], keepdims=0),   # [N,5,5]
             helper.make_node("Flatten", ["m"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["logits"], transB=1)]
    path = _model(tmp_path / "m.onnx", nodes, {**_conv_inits(rng, 2, 4), "fw": rng.normal(size=(3, 25))},
                  ["N", 2, 5, 5], ["N", 3])
    _check_forward(path, rng.normal(size=(2, 2, 5, 5)).astype(np.float32))


def test_batchnorm_node_and_flattened_pool_logits(tmp_path):
    rng = np.random.default_rng(3)
    path = gap_model(tmp_path / "m.onnx", rng, op="GlobalMaxPool", bn=True)
    g = _check_forward(path, rng.normal(size=(4, 2, 5, 5)).astype(np.float32))
    loss = g.ops[-1]
    assert loss.kind == "cross_entropy" and loss.inputs[0].shape[1:] == (4,) and loss.inputs[0].rank == 2
    assert g.meta["logits_output"] == "logits"


def test_flatten_logits_only_from_unit_spatial_dims(tmp_path):
    """A Flatten of a [B,C,H,W] with H*W > 1 is not a classifier head: refused, with the shape."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["logits"])]
    path = _model(tmp_path / "m.onnx", nodes, _conv_inits(rng, 2, 4), ["N", 2, 2, 2], ["N", 16])
    with pytest.raises(PassError, match=r"needs logits \[B, C\].*f32\[B,4,2,2\]"):
        compile_for_training(load_model(path))


# -- projection of a dot with a constant column: exact nearest point -----------------------------------
def _nearest_on_fixed_sum(c, a0, y0):
    """argmin |a-a0|^2 + (c.a-y0)^2 over a (y = c.a): (I + c c^T) a = a0 + c y0."""
    a = np.linalg.solve(np.eye(len(c)) + np.outer(c, c), a0 + c * y0)
    return a, c @ a


AVG_IR = """graph @avg {
  input %x: f32[B,4]
  label %y: i64[B]
  const %c: f32[3,1] = [[0.25], [0.5], [0.25]]
  param %w: f32[4,6]
  %z: f32[B,6] = dot %x, %w  {proj="linear"}
  %h: f32[B,6] = sum_pwl[fn="relu"] %z
  %r: f32[B,2,3] = reshape[shape=[-1, 2, 3]] %h
  %m: f32[B,2,1] = dot %r, %c  {proj="linear"}
  %lg: f32[B,2] = reshape[shape=[-1, 2]] %m
  cross_entropy[lam=5.0] %lg, %y
  return %lg
}
"""


def _check_nearest(c, a0_rows, y0_rows, a1_rows, y1_rows, rng):
    for a1, a0, y0, y1 in zip(a1_rows, a0_rows, y0_rows, y1_rows):
        want, y_want = _nearest_on_fixed_sum(c, a0, y0)
        np.testing.assert_allclose(a1, want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(y1, y_want, rtol=1e-9, atol=1e-12)
        d = np.sum((a1 - a0) ** 2) + (c @ a1 - y0) ** 2
        samples = a1 + rng.normal(size=(200, len(c))) * 0.1   # no sampled feasible point is closer
        assert np.all(np.sum((samples - a0) ** 2, 1) + (samples @ c - y0) ** 2 >= d - 1e-12)


@pytest.mark.parametrize("layout", ["copies", "consensus"])
def test_mean_family_projection_is_the_nearest_point(layout):
    """dot(free [..,K], const column c [K,1]): y = sum c_i a_i, projected exactly in both layouts."""
    from projc.backends.jax.families import ProjOptions
    from projc.backends.jax.layout_copies import CopiesLayout
    from projc.backends.jax.proj_dot_means import dot_project_means
    from projc.ir.parser import parse_graph
    from projc.passes import PassManager

    rng = np.random.default_rng(5)
    c = np.array([0.25, 0.5, 0.25])
    with jax.enable_x64(True):
        g = parse_graph(AVG_IR)
        PassManager("select-projections,bipartite,schedule").run(g)
        lay = CopiesLayout(g)
        ctx = lay.make_ctx({"w": rng.normal(size=(4, 6))},
                           {"x": rng.normal(size=(5, 4)), "y": rng.integers(0, 2, 5).astype(np.int32)})
        state = lay.init_state(ctx)
        fam = next(f for f in lay.families if f.kind == "dot" and f.op.inputs[1].hint == "c")
        assert fam.mode == "linear" and fam.free == [True, False] and not fam.factored
        a0 = np.asarray(fam.storage.full(fam, state[fam.key], ctx)[0])          # [B,2,1,3] slots
        y0 = np.asarray(fam.storage.output(fam, state[fam.key], ctx))
        y0 = y0 + rng.normal(size=y0.shape)                                      # a target off the graph
        if layout == "copies":
            slots, y1 = fam.storage.project(fam, state[fam.key], ctx, lambda fallback: y0, ProjOptions())
            a1 = np.asarray(slots[0])
        else:  # the consensus layout's dot projection (means over the M=1 copies: the copies)
            a1, _, y1 = dot_project_means(a0[..., 0, :], c[:, None], y0, (True, False), "linear")
    _check_nearest(c, a0.reshape(-1, 3), y0.reshape(-1), np.asarray(a1).reshape(-1, 3),
                   np.asarray(y1).reshape(-1), rng)


# -- the mean family: closed-form projection in a weighted metric ---------------------------------------
def _nearest_weighted_mean(a0, y0, weight):
    """argmin |a-a0|^2 + weight (mean(a)-y0)^2 by a dense solve: (I + w c c^T) a = a0 + w c y0, c = 1/K."""
    c = np.full(len(a0), 1 / len(a0))
    a = np.linalg.solve(np.eye(len(c)) + weight * np.outer(c, c), a0 + weight * c * y0)
    return a, c @ a


@pytest.mark.parametrize("weight", [None, 1.0, 7.0])
def test_mean_projection_is_the_weighted_nearest_point(weight):
    from projc.backends.jax.projections import mean, sum_reduce

    rng = np.random.default_rng(9)
    k = 6
    a0, y0 = rng.normal(size=(4, k)), rng.normal(size=4)
    with jax.enable_x64(True):
        a1, y1 = (np.asarray(v) for v in mean(a0, y0, axis=-1, weight=weight))
        w = float(k * k) if weight is None else weight
        for row in range(4):
            want, y_want = _nearest_weighted_mean(a0[row], y0[row], w)
            np.testing.assert_allclose(a1[row], want, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(y1[row], y_want, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(y1[row], a1[row].mean(), rtol=1e-12)       # on the graph
            d = np.sum((a1[row] - a0[row]) ** 2) + w * (a1[row].mean() - y0[row]) ** 2
            samples = a1[row] + rng.normal(size=(200, k)) * 0.1
            assert np.all(np.sum((samples - a0[row]) ** 2, 1) + w * (samples.mean(1) - y0[row]) ** 2 >= d - 1e-12)
        if weight is None:  # the "sum" metric = the exact projection of the sum onto K times the target
            a2, s2 = (np.asarray(v) for v in sum_reduce(a0, k * y0, axis=-1))
            np.testing.assert_allclose(a1, a2, rtol=1e-12)
            np.testing.assert_allclose(y1, s2 / k, rtol=1e-12)


MEAN_IR = """graph @avg {
  input %x: f32[B,4]
  label %y: i64[B]
  param %w: f32[4,12]
  %z: f32[B,12] = dot %x, %w  {proj="linear"}
  %h: f32[B,12] = sum_pwl[fn="relu"] %z
  %r: f32[B,3,2,2] = reshape[shape=[-1, 3, 2, 2]] %h
  %m: f32[B,2] = mean[axes=[1, 3], keepdims=0, metric=METRIC] %r
  cross_entropy[lam=5.0] %m, %y
  return %m
}
"""


@pytest.mark.parametrize("metric", ["sum", "euclidean"])
def test_mean_family_projects_over_non_trailing_axes(metric):
    """The family moves its [B,3,2,2] slots exactly as projections.mean on the gathered axes (1, 3)."""
    from projc.backends.jax.families import ProjOptions
    from projc.backends.jax.layout_copies import CopiesLayout
    from projc.ir.parser import parse_graph
    from projc.passes import PassManager

    rng = np.random.default_rng(10)
    with jax.enable_x64(True):
        g = parse_graph(MEAN_IR.replace("METRIC", f'"{metric}"'))
        PassManager("select-projections,bipartite,schedule").run(g)
        lay = CopiesLayout(g)
        ctx = lay.make_ctx({"w": rng.normal(size=(4, 12))},
                           {"x": rng.normal(size=(5, 4)), "y": rng.integers(0, 2, 5).astype(np.int32)})
        state = lay.init_state(ctx)
        fam = next(f for f in lay.families if f.kind == "mean")
        a0 = np.asarray(fam.storage.full(fam, state[fam.key], ctx)[0])          # [B,3,2,2]
        y0 = np.asarray(fam.storage.output(fam, state[fam.key], ctx)) + rng.normal(size=(5, 2))
        slots, y1 = fam.storage.project(fam, state[fam.key], ctx, lambda fallback: y0, ProjOptions())
    a1 = np.asarray(slots[0])
    w = 36.0 if metric == "sum" else 1.0
    for b, j in np.ndindex(5, 2):
        want, y_want = _nearest_weighted_mean(a0[b, :, j, :].reshape(-1), y0[b, j], w)
        np.testing.assert_allclose(a1[b, :, j, :].reshape(-1), want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(y1)[b, j], y_want, rtol=1e-9, atol=1e-12)


def test_lower_mean_metric_option_and_error(tmp_path):
    from projc.passes import PassManager

    path = gap_model(tmp_path / "m.onnx", np.random.default_rng(11))
    pipeline = "attach-loss,canonicalize,fold-constants,dce,fuse-activations,lower{mean_metric=euclidean}"
    g = PassManager(pipeline).run(load_model(path))
    assert [op.params["metric"] for op in g.ops if op.kind == "mean"] == ["euclidean"]
    with pytest.raises(PassError, match="mean_metric='l1'"):
        PassManager(pipeline.replace("euclidean", "l1")).run(load_model(path))


# -- sum_pwl with a constant operand of a broadcast shape (frozen BatchNorm shift) ---------------------
def test_sum_pwl_per_element_table_is_the_elementwise_projection():
    """The piece table shifted by a per-channel constant [C,1,1]: the result equals projecting each
    element with its own scalar table (the regression behind BatchNorm's traceback)."""
    from projc.backends.jax import proj_pwl as W

    rng = np.random.default_rng(6)
    a0, y0 = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    shift = rng.normal(size=(3, 1, 1))
    ce = np.broadcast_to(shift, a0.shape)[..., None]
    lo, hi, s, ic = (np.asarray(f) for f in W.relu())
    table = W.Pieces(lo - ce, hi - ce, np.broadcast_to(s, ce.shape[:-1] + s.shape), ic + s * ce)
    got_a, got_y = (np.asarray(v) for v in W.sum_pwl(a0, y0, fn=table))
    for idx in np.ndindex(a0.shape):
        t = W.Pieces(lo - ce[idx], hi - ce[idx], s, ic + s * ce[idx])
        a, y = (float(v) for v in W.sum_pwl(np.array(a0[idx]), np.array(y0[idx]), fn=t))
        assert abs(got_a[idx] - a) < 1e-6 and abs(got_y[idx] - y) < 1e-6
        assert abs(got_y[idx] - max(got_a[idx] + shift[idx[1], 0, 0], 0)) < 1e-5  # on the graph


# -- the bundled CNN models --------------------------------------------------------------------------
CNN_MODELS = {  # convolutions are conv families; pools whose windows tile the map reduce a reshape
    "cnn2_digits": {"max": 2, "conv": 2, "concat": 1},
    "lenet_digits": {"patches": None, "mean": 2, "conv": 2, "mul": 2},   # two 2x2 average pools
    "gap_digits": {"conv": 2},
    "maxlogits_digits": {"max": 1, "conv": 2},   # the global MaxPool needs no patches
    "fcn_maxlogits_digits": {"max": 2, "patches": None, "conv": 3},  # the 2x2 MaxPool and the global one
}


@pytest.mark.parametrize("name", sorted(CNN_MODELS))
def test_bundled_cnn_forward_equals_onnxruntime(name):
    path = str(MODELS / f"{name}.onnx")
    g = _check_forward(path, np.random.default_rng(7).random((5, 1, 8, 8)).astype(np.float32))
    counts = op_counts(g)
    for kind, n in CNN_MODELS[name].items():
        assert counts.get(kind) == n, (kind, counts)
    assert g.ops[-1].inputs[0].shape[1:] == (10,)


# -- every solver, both layouts, on a tiny CNN with every new form ---------------------------------------
def tiny_cnn(path, rng):
    """conv -> BatchNorm -> relu -> AveragePool 2 -> conv -> relu -> ReduceMean -> conv 1x1 ->
    GlobalAveragePool -> Flatten (logits [N,3])."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "mu", "var"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("AveragePool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("ReduceMean", ["r2"], ["m2"], axes=[3], keepdims=1),
             helper.make_node("Conv", ["m2", "w3"], ["c3"]),
             helper.make_node("GlobalAveragePool", ["c3"], ["p3"]),
             helper.make_node("Flatten", ["p3"], ["logits"])]
    inits = {"w1": rng.normal(size=(2, 1, 3, 3)), "b1": np.zeros(2), "g": [1.5, 0.5], "b": [0.1, -0.2],
             "mu": [0.2, -0.1], "var": [1.3, 0.7], "w2": rng.normal(size=(3, 2, 3, 3)) / 2,
             "b2": np.zeros(3), "w3": rng.normal(size=(3, 3, 1, 1))}
    return _model(path, nodes, inits, ["N", 1, 4, 4], ["N", 3])


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["ap", "cp", "dr", "dm", "ar", "cdr"])
def test_tiny_cnn_updates_under_every_solver(tmp_path, solver):
    import projc

    rng = np.random.default_rng(8)
    path = tiny_cnn(tmp_path / "tiny.onnx", rng)
    _check_forward(path, rng.normal(size=(3, 1, 4, 4)).astype(np.float32))
    tr = projc.compile(path, solver=solver, steps_per_update=3)
    assert tr.layout.name == ("consensus" if solver in ("ap", "cp") else "copies")
    x, y = rng.normal(size=(6, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 6)
    p0 = tr.init_params()
    p1, _st, stats = tr.update(p0, tr.init_state(p0), x, y)
    assert np.isfinite(stats["residual"])
    assert max(float(np.max(np.abs(np.asarray(p1[k]) - p0[k]))) for k in p0) > 1e-4  # it trained
    out = tmp_path / "t.onnx"
    tr.export(p1, out)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, tr.logits(p1, x), rtol=1e-4, atol=1e-4)


# -- BatchNormalization with trained gamma/beta ------------------------------------------------------
def test_batchnorm_trains_gamma_beta_when_asked(tmp_path):
    import projc

    rng = np.random.default_rng(12)
    path = gap_model(tmp_path / "m.onnx", rng, op="GlobalMaxPool", bn=True)
    x = rng.normal(size=(4, 2, 5, 5)).astype(np.float32)
    frozen = compile_for_training(load_model(path))
    trained = compile_for_training(load_model(path), train_batchnorm=True)
    assert {"g", "b"} <= {v.hint for v in trained.params} and not {"g", "b"} & {v.hint for v in frozen.params}
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(evaluate(trained, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    muls = [op for op in trained.ops if op.kind == "mul"]
    assert sorted(op.annots["proj"] for op in muls) == ["bilinear", "linear"]   # inv_std const; gamma free
    tr = projc.compile(path, solver="dr", steps_per_update=3, train_batchnorm=True)
    p0 = tr.init_params()
    p1, _st, _ = tr.update(p0, tr.init_state(p0), x, rng.integers(0, 4, 4))
    assert np.max(np.abs(p1["g"] - p0["g"])) > 1e-5 and np.max(np.abs(p1["b"] - p0["b"])) > 1e-5
    out = tmp_path / "t.onnx"
    tr.export(p1, out)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, tr.logits(p1, x), rtol=1e-4, atol=1e-4)
