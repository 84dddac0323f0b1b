"""The ``conv`` family (Conv, grouped/depthwise Conv, ConvTranspose) against onnxruntime and against
the earlier ``patches`` + ``dot`` lowering: the forward, one projection per layout, and updates.

Float64 throughout the projection checks (x64 on), so the two paths differ by rounding only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pass_util import evaluate, jit_update, op_counts, rel_diff, save_onnx
from projc.backends.jax.conv import ConvOps, conv_project_means
from projc.backends.jax.layout_consensus import ConsensusLayout
from projc.backends.jax.layout_copies import CopiesLayout
from projc.backends.jax.proj_dot_means import dot_project_means
from projc.backends.jax.solvers import Solver
from projc.frontend.importer import load_model
from projc.ops.convolution import canonical_kernel, geometry, patch_view
from projc.passes import compile_for_training, training_pipeline


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# (op, attrs, input channels, weight shape, input spatial): strides, pads, dilations, groups, transposes
CASES = {
    "plain": ("Conv", dict(pads=[1, 1, 1, 1]), 2, (3, 2, 3, 3), (6, 5)),
    "strided": ("Conv", dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]), 3, (4, 3, 3, 2), (7, 6)),
    "grouped": ("Conv", dict(group=2, pads=[0, 1, 1, 0]), 4, (6, 2, 2, 3), (5, 5)),
    "depthwise": ("Conv", dict(group=3, pads=[1, 1, 1, 1]), 3, (3, 1, 3, 3), (5, 4)),
    "transpose": ("ConvTranspose", dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0]), 3,
                  (3, 2, 3, 3), (3, 4)),
    "transpose_grouped": ("ConvTranspose", dict(group=2, strides=[1, 2], pads=[0, 1, 1, 0], dilations=[2, 1]),
                          4, (4, 3, 2, 3), (4, 3)),
}


def conv_model(path, case, rng, relu_head=True):
    """conv -> relu -> conv 1x1 -> GlobalAveragePool -> Flatten: logits [N, 3]."""
    kind, attrs, cin, wshape, spatial = CASES[case]
    oc = wshape[1] * attrs.get("group", 1) if kind == "ConvTranspose" else wshape[0]
    nodes = [helper.make_node(kind, ["x", "w", "b"], ["c"], **attrs),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    inits = {"w": rng.normal(size=wshape) / 2, "b": rng.normal(size=oc) / 4,
             "w2": rng.normal(size=(3, oc, 1, 1)) / 2}
    return save_onnx(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, *spatial])],
                     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits, 17)


def _patches_pipeline():
    pipeline = training_pipeline()
    for p in pipeline:
        if p.name == "lower":
            p.conv = "patches"
    return pipeline


@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_family_forward_equals_onnxruntime(tmp_path, case):
    rng = np.random.default_rng(1)
    path = conv_model(tmp_path / "m.onnx", case, rng)
    x = rng.normal(size=(3, CASES[case][2], *CASES[case][4])).astype(np.float32)
    g = compile_for_training(load_model(path))
    assert op_counts(g).get("conv") == 2 and "patches" not in op_counts(g)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(evaluate(g, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_patch_view_is_the_conv(x64):
    """y = patch_view(x) . canonical_kernel(w) for every case (the family's slots)."""
    from projc.ops.convolution import conv
    rng = np.random.default_rng(2)
    for kind, attrs, cin, wshape, spatial in CASES.values():
        params = dict(attrs, transpose=int(kind == "ConvTranspose"))
        geo = geometry(params, wshape[2:])
        x, w = rng.normal(size=(2, *spatial, cin)), rng.normal(size=wshape)
        pv = jax.jit(lambda v, geo=geo: patch_view(v, geo))(x)        # [N, *O, G, K]
        wc = canonical_kernel(w, geo)
        wm = jnp.reshape(wc, (geo.group, wc.shape[0] // geo.group, -1))
        y = jnp.einsum("nhwgk,gmk->nhwgm", pv, wm).reshape(pv.shape[:3] + (-1,))
        np.testing.assert_allclose(y, jax.jit(lambda a, b, geo=geo: conv(a, b, geo))(x, w), rtol=1e-12, atol=1e-12)


# -- one projection on means: conv family vs the patch view's dot (+ col2im averaging) -----------
def _col2im_mean(pm, x_shape, geo):
    """The patches move's averaging: the patch-shaped mean back to input shape, / copies."""
    spec = jax.ShapeDtypeStruct(x_shape, pm.dtype)
    t = jax.linear_transpose(lambda v: patch_view(v, geo), spec)
    cnt = t(jnp.ones(pm.shape, pm.dtype))[0]
    return t(pm)[0] / jnp.maximum(cnt, 1), cnt


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("free,mode", [((True, True), "bilinear"), ((False, True), "linear"),
                                       ((True, False), "linear"), ((False, True), "bilinear")])
@pytest.mark.parametrize("target", ["near", "far"])
def test_conv_means_equal_patch_dot_means(x64, case, free, mode, target):
    kind, attrs, cin, wshape, spatial = CASES[case]
    geo = geometry(dict(attrs, transpose=int(kind == "ConvTranspose")), wshape[2:])
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(2, *spatial, cin)), rng.normal(size=wshape)
    from projc.ops.convolution import conv
    p = conv(x, w, geo)
    y0 = p + rng.normal(size=p.shape) * (0.3 if target == "near" else 20.0)
    ops = ConvOps(type("F", (), {"op": type("O", (), {"params": dict(attrs, transpose=int(kind == "ConvTranspose")),
                                                      "inputs": [None, type("V", (), {"shape": wshape})]})})(),
                  x.shape, w.shape, x.dtype)
    mx, mw, y = jax.jit(lambda *a: conv_project_means(ops, *a, free, mode))(x, w, y0)
    # the reference: dot_project_means per group on the patch view [R, K] x [K, M_g]
    pv = patch_view(x, geo)                                          # [N, *O, G, K]
    wc = canonical_kernel(jnp.asarray(w), geo)
    G, mg = geo.group, wc.shape[0] // geo.group
    ref_pm, ref_wc, ref_y = [], [], []
    for g in range(G):
        a = pv[..., g, :]
        b = jnp.reshape(wc[g * mg:(g + 1) * mg], (mg, -1)).T
        yg = y0[..., g * mg:(g + 1) * mg]
        ma, mb, yy = jax.jit(lambda *v: dot_project_means(*v, free, mode))(a, b, yg)
        ref_pm.append(ma)
        ref_wc.append(mb.T.reshape((mg,) + wc.shape[1:]))
        ref_y.append(yy)
    np.testing.assert_allclose(y, jnp.concatenate(ref_y, -1), rtol=1e-9, atol=1e-9)
    if free[0]:
        ref_x, cnt = _col2im_mean(jnp.stack(ref_pm, -2), x.shape, geo)
        covered = np.asarray(cnt) > 0
        np.testing.assert_allclose(np.asarray(mx)[covered], np.asarray(ref_x)[covered], rtol=1e-9, atol=1e-9)
    if free[1]:
        back = jax.linear_transpose(lambda v: canonical_kernel(v, geo), jax.ShapeDtypeStruct(w.shape, w.dtype))
        np.testing.assert_allclose(mw, back(jnp.concatenate(ref_wc, 0))[0], rtol=1e-9, atol=1e-9)


# -- training: the conv family gives the parameters of the patches lowering ---------------------------
def _params(g):
    return {v.hint: np.asarray(v.data, np.float64) for v in g.params}


def _run(g, layout, solver, steps, updates, x, y):
    upd = jit_update(layout, Solver(layout, solver), steps)
    p = _params(g)
    for _ in range(updates):
        p, st = upd(p, {"x": x, "y": y})
    return {k: np.asarray(v) for k, v in p.items()}, st


@pytest.mark.parametrize("case", ["plain", "strided"])
@pytest.mark.parametrize("layout,solver", [("consensus", "cp"), ("consensus", "ap"), ("copies", "dr")])
def test_conv_family_trains_like_the_patches_lowering(x64, tmp_path, case, layout, solver):
    rng = np.random.default_rng(6)
    path = conv_model(tmp_path / "m.onnx", case, rng)
    new = compile_for_training(load_model(path))
    old = compile_for_training(load_model(path), pipeline=_patches_pipeline())
    assert "conv" not in op_counts(old) and op_counts(old).get("patches") == 2
    cin, spatial = CASES[case][2], CASES[case][4]
    x, y = rng.normal(size=(5, cin, *spatial)), rng.integers(0, 3, 5).astype(np.int32)

    def lay(g):
        return ConsensusLayout(g, solver=solver) if layout == "consensus" else CopiesLayout(g)
    p_new, s_new = _run(new, lay(new), solver, 5, 2, x, y)
    p_old, s_old = _run(old, lay(old), solver, 5, 2, x, y)
    init = _params(new)
    for k in p_new:
        assert rel_diff(p_new[k], p_old[k]) < 1e-8, (k, rel_diff(p_new[k], p_old[k]))
    assert max(rel_diff(p_new[k], init[k]) for k in init) > 1e-2


@pytest.mark.parametrize("case", ["grouped", "depthwise", "transpose", "transpose_grouped"])
@pytest.mark.parametrize("solver", ["cp", "ap"])
def test_conv_family_consensus_equals_copies(x64, tmp_path, case, solver):
    """Grouped and transposed convs have no patches lowering: the consensus layout (conv means)
    against the copies layout (materialized slots of the same family)."""
    rng = np.random.default_rng(7)
    path = conv_model(tmp_path / "m.onnx", case, rng)
    g = compile_for_training(load_model(path))
    cin, spatial = CASES[case][2], CASES[case][4]
    x, y = rng.normal(size=(4, cin, *spatial)), rng.integers(0, 3, 4).astype(np.int32)
    p_con, _ = _run(g, ConsensusLayout(g, solver=solver), solver, 5, 2, x, y)
    p_cop, _ = _run(g, CopiesLayout(g), solver, 5, 2, x, y)
    init = _params(g)
    for k in p_con:
        assert rel_diff(p_con[k], p_cop[k]) < 1e-8, (k, rel_diff(p_con[k], p_cop[k]))
    assert max(rel_diff(p_con[k], init[k]) for k in init) > 1e-2


# -- the hybrid layout: DR with the conv families as edge means -------------------------------------
def _memory(tr, x, y) -> int:
    m = tr.lower_update(x, y).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)


def test_hybrid_layout_runs_dr_with_conv_means(tmp_path):
    import projc
    from projc.backends.jax.conv import ConvMeans
    from projc.backends.jax.slot_storage import Materialized

    rng = np.random.default_rng(9)
    path = conv_model(tmp_path / "m.onnx", "plain", rng)
    x, y = rng.normal(size=(8, 2, 6, 5)).astype(np.float32), rng.integers(0, 3, 8)
    hyb = projc.compile(path, solver="dr", layout="hybrid", steps_per_update=4)
    cop = projc.compile(path, solver="dr", layout="copies", steps_per_update=4)
    kinds = {f.kind: type(f.storage) for f in hyb.layout.families}
    assert kinds["conv"] is ConvMeans and issubclass(kinds["sum_pwl"], Materialized)
    p0 = hyb.init_params()
    p1, _, stats = hyb.update(p0, hyb.init_state(p0), x, y)
    assert np.isfinite(stats["residual"]) and max(float(np.max(np.abs(p1[k] - p0[k]))) for k in p0) > 1e-3
    assert _memory(hyb, x, y) < _memory(cop, x, y)


# -- a ConvTranspose decoder trained on reconstruction (squared error, explicit targets) -------------
@pytest.mark.slow
@pytest.mark.parametrize("layout,solver", [("consensus", "cp"), ("hybrid", "dr")])
def test_convtranspose_autoencoder_reconstruction_improves(layout, solver):
    from pathlib import Path

    from projc.backends.jax.forward import make_forward
    from projc.backends.jax.layout_hybrid import HybridLayout
    from projc.train.data import load_data

    path = Path(__file__).resolve().parents[1] / "models" / "ae_convt_digits.onnx"
    g = compile_for_training(load_model(str(path)), loss="squared_error")
    assert op_counts(g)["conv"] == 4 and sum(op.params.get("transpose", 0) for op in g.ops if op.kind == "conv") == 2
    lay = ConsensusLayout(g, solver=solver) if layout == "consensus" else HybridLayout(g)
    data = load_data("digits", seed=0, input_shape=(None, 1, 8, 8))
    x = data.x_train[:32]
    upd = jit_update(lay, Solver(lay, solver), 10)
    fwd = jax.jit(make_forward(g))
    p = {v.hint: np.asarray(v.data) for v in g.params}
    err0 = float(np.mean((np.asarray(fwd(p, {"x": x})[0]) - x) ** 2))
    for _ in range(4):
        p, _ = upd(p, {"x": x, "y": x})  # the target is the input: reconstruction
    err = float(np.mean((np.asarray(fwd(p, {"x": x})[0]) - x) ** 2))
    assert err < 0.8 * err0, (err0, err)
