"""The split pass: every op it lowers, as a small ONNX model whose op reads trained values.

For each case: the training graph (the whole pipeline, split included) computes what onnxruntime
computes on the original file; the split leaves no ONNX op behind; the chain's constraints hold at
the forward point (violation 0: the chain is feasible exactly where the op's forward is); and every
family of the chain projects onto its own graph (its output equals its forward at the projected
operands) from a perturbed target.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pass_util import save_onnx
from projc.errors import PassError
from projc.frontend.importer import load_model
from projc.ir.constraints import CONSTRAINT_KINDS
from projc.passes import compile_for_training, lowering_table

B = 3


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _const(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array)))


def _model(tmp_path, name, body, shape, classes, inits=None, opset=17, positive=False):
    """x [B, *shape] * w (a trained per-element scale, so the op reads free values) -> body ->
    Flatten -> logits [B, classes]. ``body``: nodes reading "h" and writing "out"."""
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1.5, shape) if positive else rng.standard_normal(shape)
    # a mul by a constant 1 after the Flatten: attach-loss would otherwise walk back through it
    nodes = [helper.make_node("Mul", ["x", "w"], ["h"])] + body + [
        helper.make_node("Flatten", ["out"], ["flat"], axis=1), _const("one", np.float32(1.0)),
        helper.make_node("Mul", ["flat", "one"], ["logits"])]
    return save_onnx(tmp_path / f"{name}.onnx", nodes, [_vi("x", ["B", *shape])], [_vi("logits", ["B", classes])],
                     {"w": w, **(inits or {})}, opset=opset)


def _u(*shape):
    return np.random.default_rng(1).uniform(0.5, 1.5, shape)


def _n(*shape):
    return np.random.default_rng(2).standard_normal(shape)


CAUSAL = np.where(np.tril(np.ones((4, 4), bool)), 0.0, -np.inf).astype(np.float32)


def _cases():
    mk = helper.make_node
    return {
        "softmax": (lambda: [mk("Softmax", ["h"], ["out"], axis=-1)], (3, 4), 12, {}, 17, False, "reduce_sum"),
        "softmax_axis1": (lambda: [mk("Softmax", ["h"], ["out"], axis=1)], (3, 4), 12, {}, 17, False, "reduce_sum"),
        "softmax_causal": (lambda: [_const("m", CAUSAL), mk("Add", ["h", "m"], ["s"]),
                                    mk("Softmax", ["s"], ["out"], axis=-1)], (2, 4, 4), 32, {}, 17, False,
                           "segment_sum"),
        "softmax_causal_axis2": (lambda: [_const("m", CAUSAL.T.copy()), mk("Add", ["h", "m"], ["s"]),
                                          mk("Softmax", ["s"], ["out"], axis=1)], (4, 4), 16, {}, 17, False,
                                 "segment_sum"),
        "softmax_where": (lambda: [_const("c", np.tril(np.ones((4, 4), bool))), _const("f", np.float32(-1e9)),
                                   mk("Where", ["c", "h", "f"], ["s"]), mk("Softmax", ["s"], ["out"], axis=-1)],
                          (4, 4), 16, {}, 17, False, "segment_sum"),
        "log_softmax": (lambda: [mk("LogSoftmax", ["h"], ["out"], axis=-1)], (3, 4), 12, {}, 17, False, "reduce_sum"),
        "layer_norm": (lambda: [mk("LayerNormalization", ["h", "g", "b"], ["out"], axis=-1, epsilon=1e-3)],
                       (3, 4), 12, {"g": _u(4), "b": _n(4)}, 17, False, "mean_square"),
        "layer_norm_2d": (lambda: [mk("LayerNormalization", ["h", "g", "b"], ["out"], axis=1)],
                          (3, 4), 12, {"g": _u(3, 4), "b": _n(3, 4)}, 17, False, "mean_square"),
        "rms_norm": (lambda: [mk("RMSNormalization", ["h", "g"], ["out"], axis=-1)], (3, 4), 12, {"g": _u(4)},
                     23, False, "mean_square"),
        "group_norm_21": (lambda: [mk("GroupNormalization", ["h", "g", "b"], ["out"], num_groups=2)],
                          (4, 2, 2), 16, {"g": _u(4), "b": _n(4)}, 21, False, "mean_square"),
        "instance_norm": (lambda: [mk("InstanceNormalization", ["h", "g", "b"], ["out"])],
                          (2, 3, 2), 12, {"g": _u(2), "b": _n(2)}, 17, False, "mean_square"),
        "div": (lambda: [mk("Mul", ["x", "v"], ["d"]), mk("Div", ["h", "d"], ["out"])], (5,), 5,
                {"v": _u(5)}, 17, True, "sum_smooth"),
        "exp": (lambda: [mk("Exp", ["h"], ["out"])], (5,), 5, {}, 17, False, "sum_smooth"),
        "log": (lambda: [mk("Log", ["h"], ["out"])], (5,), 5, {}, 17, True, "sum_smooth"),
        "sqrt": (lambda: [mk("Sqrt", ["h"], ["out"])], (5,), 5, {}, 17, True, "sum_smooth"),
        "reciprocal": (lambda: [mk("Reciprocal", ["h"], ["out"])], (5,), 5, {}, 17, True, "sum_smooth"),
        "pow_2": (lambda: [_const("e", np.float32(2)), mk("Pow", ["h", "e"], ["out"])], (5,), 5, {}, 17, False,
                  "sum_smooth"),
        "pow_1.5": (lambda: [_const("e", np.float32(1.5)), mk("Pow", ["h", "e"], ["out"])], (5,), 5, {}, 17, True,
                    "sum_smooth"),
        "pow_-0.5": (lambda: [_const("e", np.float32(-0.5)), mk("Pow", ["h", "e"], ["out"])], (5,), 5, {}, 17, True,
                     "sum_smooth"),
        "reduce_sum": (lambda: [_const("ax", np.array([2], np.int64)), mk("ReduceSum", ["h", "ax"], ["out"],
                                                                          keepdims=0)], (2, 3), 2, {}, 17, False,
                       "reduce_sum"),
        "matmul_batched": (lambda: [mk("Mul", ["x", "v"], ["k"]), mk("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                                    mk("MatMul", ["h", "kt"], ["out"])], (2, 3, 4), 18, {"v": _n(2, 3, 4)}, 17,
                           False, "dot"),
        "einsum_qk": (lambda: [mk("Mul", ["x", "v"], ["k"]), mk("Einsum", ["h", "k"], ["out"],
                                                                equation="bhid,bhjd->bhij")],
                      (2, 3, 4), 18, {"v": _n(2, 3, 4)}, 17, False, "dot"),
        "einsum_pv": (lambda: [mk("Mul", ["x", "v"], ["k"]), mk("Einsum", ["h", "k"], ["out"],
                                                                equation="bhij,bhjd->bhid")],
                      (2, 3, 3), 18, {"v": _n(2, 3, 3)}, 17, False, "dot"),
        "einsum_reduce": (lambda: [mk("Einsum", ["h", "w2"], ["out"], equation="bij,jk->bk")],
                          (3, 4), 5, {"w2": _n(4, 5)}, 17, False, "reduce_sum"),
    }


CASES = _cases()


def _forward_pair(path):
    """(projc's training-graph forward, onnxruntime's) on the same positive random inputs."""
    from projc.backends.jax.forward import make_forward

    graph = load_model(path)
    train = compile_for_training(graph)
    x = np.random.default_rng(3).uniform(0.5, 1.5, (B,) + tuple(graph.inputs[0].shape[1:])).astype(np.float32)
    got = np.asarray(make_forward(train)({v.hint: v.data for v in train.params}, {"x": x})[0])
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return train, x, got, want


@pytest.mark.parametrize("name", sorted(CASES))
def test_split_forward_matches_onnxruntime_and_projects_feasibly(name, tmp_path):
    body, shape, classes, inits, opset, positive, expect = CASES[name]
    path = _model(tmp_path, name, body(), shape, classes, inits, opset, positive)
    train, x, got, want = _forward_pair(path)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    kinds = {op.kind for op in train.ops}
    assert kinds <= set(CONSTRAINT_KINDS), kinds - set(CONSTRAINT_KINDS)
    assert expect in kinds
    _check_feasible(train, x)


def _check_feasible(train, x):
    from projc.backends.jax.layout_copies import CopiesLayout

    layout = CopiesLayout(train)
    params = {v.hint: jnp.asarray(v.data) for v in train.params}
    inputs = {"x": x, layout.graph.labels[0].hint: np.zeros((B,), np.int64)}
    fams = [f for f in layout.families if f.out is not None]

    @jax.jit
    def check(params, inputs):
        ctx = layout.make_ctx(params, inputs)
        state = layout.init_state(ctx)
        pairs = []
        for i, fam in enumerate(fams):  # each family from a perturbed target
            out = fam.storage.output(fam, state[fam.key], ctx)
            target = out + 0.3 * jax.random.normal(jax.random.PRNGKey(i), out.shape)
            new, yproj = fam.storage.project(fam, state[fam.key], ctx, lambda fb, t=target: t, layout.opts)
            pairs.append((fam.storage.output(fam, new, ctx), yproj))
        return layout.violation(state, ctx, "A"), pairs

    violation, pairs = check(params, inputs)
    assert float(violation) < 1e-10  # the forward point satisfies every constraint of the chain
    for fam, (again, yproj) in zip(fams, pairs):
        assert np.all(np.isfinite(np.asarray(again))), fam.op
        np.testing.assert_allclose(np.asarray(again), np.asarray(yproj), rtol=2e-5, atol=2e-5,
                                   err_msg=f"{fam.kind} {fam.op.params}")


def test_every_split_lowering_is_listed():
    table = lowering_table()
    for kind in ("Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization", "GroupNormalization",
                 "InstanceNormalization", "Div", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "ReduceSum",
                 "Einsum", "Attention"):
        assert any(name == "split" for name, _ in table[kind]), kind


def test_masked_softmax_drops_the_masked_entries(tmp_path):
    """The masked entries never enter a family: exp, the row sums and the products cover the 10
    unmasked entries of each 4x4 causal block; the output has exact zeros above the diagonal."""
    body, shape, classes, inits, opset, positive, _ = CASES["softmax_causal"]
    path = _model(tmp_path, "m", body(), shape, classes, inits, opset, positive)
    train, x, got, _ = _forward_pair(path)
    exp = next(op for op in train.ops if op.kind == "sum_smooth" and op.params["fn"] == "exp")
    assert exp.outputs[0].shape[-1] == 10
    assert np.all(got.reshape(B, 2, 4, 4)[:, :, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0)


@pytest.mark.parametrize("shift", ["fixed", "max", "none"])
def test_softmax_shifts_agree(shift, tmp_path):
    from projc.backends.jax.forward import make_forward
    from projc.passes import TRAINING_PASSES

    body, shape, classes, inits, opset, positive, _ = CASES["softmax"]
    path = _model(tmp_path, "s", body(), shape, classes, inits, opset, positive)
    graph = load_model(path)
    pipeline = ",".join(f"split{{shift={shift}}}" if p == "split" else p for p in TRAINING_PASSES)
    train = compile_for_training(graph, pipeline=pipeline)
    x = np.random.default_rng(3).standard_normal((B, 3, 4)).astype(np.float32)
    got = np.asarray(make_forward(train)({v.hint: v.data for v in train.params}, {"x": x})[0])
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert ("shift" in {op.kind for op in train.ops}) == (shift == "fixed")
    _check_feasible(train, x)


def test_shift_is_a_constant_of_the_update(tmp_path):
    """The softmax's shift is no variable: no family reads it as a free operand, and the bipartite
    and schedule passes see no edge through it."""
    from projc.backends.jax.layout_copies import CopiesLayout

    body, shape, classes, inits, opset, positive, _ = CASES["softmax"]
    train = compile_for_training(load_model(_model(tmp_path, "s", body(), shape, classes, inits, opset, positive)))
    layout = CopiesLayout(train)
    shift = next(op for op in train.ops if op.kind == "shift").outputs[0]
    exp = next(f for f in layout.families if f.kind == "sum_smooth")
    assert not exp.free[exp.op.inputs.index(shift)]


def test_split_refusals(tmp_path):
    mk = helper.make_node
    path = _model(tmp_path, "p", [mk("Mul", ["x", "v"], ["e"]), mk("Pow", ["h", "e"], ["out"])], (5,), 5,
                  {"v": _u(5)}, positive=True)
    with pytest.raises(PassError, match="constant scalar exponent"):
        compile_for_training(load_model(path))
    path = _model(tmp_path, "l", [_const("m", CAUSAL), mk("Add", ["h", "m"], ["s"]),
                                  mk("LogSoftmax", ["s"], ["out"], axis=-1)], (4, 4), 16)
    with pytest.raises(PassError, match="masked LogSoftmax"):
        compile_for_training(load_model(path))
