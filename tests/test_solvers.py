"""Solver and copies-layout tests: fast path vs the projection library, AP monotonicity, training."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import MLP_IR, RES_IR, fit, scheduled
from projc.backends.jax import projections as P
from projc.backends.jax.emit import make_stepper, make_update
from projc.backends.jax.layout_copies import CopiesLayout
from projc.backends.jax.solvers import Solver
from projc.errors import PassError, ProjcError
from projc.parser import parse_graph


def _setup(factor=True, B=5, seed=0):
    g = parse_graph(MLP_IR)
    lay = CopiesLayout(g, factor_linear=factor)
    rng = np.random.default_rng(seed)
    params = {"w1": rng.normal(size=(12, 7)).astype(np.float32) / 3,
              "b1": rng.normal(size=7).astype(np.float32),
              "w2": rng.normal(size=(7, 4)).astype(np.float32) / 2,
              "b2": rng.normal(size=4).astype(np.float32)}
    inputs = {"x": rng.normal(size=(B, 12)).astype(np.float32),
              "y": rng.integers(0, 4, B).astype(np.int32)}
    return g, lay, params, inputs, rng


def _perturb(state, rng, scale=0.3):
    return jax.tree_util.tree_map(
        lambda a: a + scale * jnp.asarray(rng.normal(size=a.shape), a.dtype), state)


def _fam(lay, kind, n=0):
    return [f for f in lay.families if f.kind == kind][n]


def test_bilinear_family_equals_library_on_gathered_slots():
    g, lay, params, inputs, rng = _setup()
    ctx = lay.make_ctx(params, inputs)
    x = _perturb(lay.init_state(ctx), rng)
    new = jax.jit(lambda s, c: lay.project(s, "A", c))(x, ctx)
    dot2, lg = _fam(lay, "dot", 1), _fam(lay, "sum")
    target = x[lg.key][0]          # the only consumer edge of z2: the logits sum's copy of z2
    a, b, y = P.bilinear(x[dot2.key][0], x[dot2.key][1], target)
    np.testing.assert_allclose(new[dot2.key][0], a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new[dot2.key][1], b, rtol=1e-5, atol=1e-5)
    # set B's slots that copy z2 now hold the projected output (the forward value of dot2)
    np.testing.assert_allclose(new[lg.key][0], y, rtol=1e-5, atol=1e-5)


def test_sum_pwl_family_and_params_equal_library_on_gathered_slots():
    g, lay, params, inputs, rng = _setup()
    ctx = lay.make_ctx(params, inputs)
    x = _perturb(lay.init_state(ctx), rng)
    new = jax.jit(lambda s, c: lay.project(s, "B", c))(x, ctx)
    relu, dot2 = _fam(lay, "sum_pwl"), _fam(lay, "dot", 1)
    target = jnp.mean(x[dot2.key][0], axis=1)  # mean over the 4 copies of h1[b,:] held by dot2
    z1, b1, h = P.sum_pwl(x[relu.key][0], x[relu.key][1], target, fn=P.relu())
    np.testing.assert_allclose(new[relu.key][0], z1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new[relu.key][1], b1, rtol=1e-5, atol=1e-5)
    # w2 is in B: its value is the mean over the batch of dot2's copies; dot2's slots are overwritten
    w2 = jnp.mean(x[dot2.key][1], axis=0).T
    np.testing.assert_allclose(new[dot2.key][1], jnp.broadcast_to(w2.T, (5, 4, 7)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new[dot2.key][0], jnp.broadcast_to(h[:, None, :], (5, 4, 7)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_factored_linear_slots_equal_materialized():
    """The (G, alpha) form of linear dot slots is exact: same iterates as materialized slots."""
    g, lay_f, params, inputs, rng = _setup(factor=True)
    lay_m = CopiesLayout(parse_graph(MLP_IR), factor_linear=False)
    for name in ("dr", "cp"):
        outs = []
        for lay in (lay_f, lay_m):
            upd = make_update(lay, Solver(lay, name), 7)
            outs.append(upd(params, inputs))
        for k in params:
            np.testing.assert_allclose(outs[0][0][k], outs[1][0][k], rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(outs[0][1]["violation"], outs[1][1]["violation"], rtol=1e-3, atol=1e-9)
    # and one linear projection step against the library
    ctx = lay_m.make_ctx(params, inputs)
    x = _perturb(lay_m.init_state(ctx), rng)
    new = jax.jit(lambda s, c: lay_m.project(s, "A", c))(x, ctx)
    dot1, relu = _fam(lay_m, "dot", 0), _fam(lay_m, "sum_pwl")
    c = jnp.broadcast_to(jnp.asarray(inputs["x"])[:, None, :], (5, 7, 12))
    _, w, _ = P.linear(c, x[dot1.key][0], x[relu.key][0])
    np.testing.assert_allclose(new[dot1.key][0], w, rtol=1e-5, atol=1e-5)


LINEAR_IR = """graph @lin {
  input %x: f32[B,6]
  label %t: f32[B,3]
  param %w: f32[6,3]
  %z: f32[B,3] = dot %x, %w  {proj="linear"}
  squared_error %z, %t
  return %z
}
"""


def test_ap_single_linear_layer_violation_decreases_monotonically():
    g = scheduled(LINEAR_IR)
    lay = CopiesLayout(g)
    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=(6, 3)).astype(np.float32)}
    inputs = {"x": rng.normal(size=(32, 6)).astype(np.float32),
              "t": rng.normal(size=(32, 3)).astype(np.float32)}
    init, step, viol, read = make_stepper(lay, Solver(lay, "ap"))
    x = init(params, inputs)
    vs = []
    for _ in range(40):
        x = step(x, params, inputs)
        vs.append(float(viol(x, params, inputs)))
    assert vs[0] > 0
    assert all(b <= a * (1 + 1e-4) + 1e-9 for a, b in zip(vs, vs[1:])), vs
    assert vs[-1] < 0.5 * vs[0]
    # the params move toward the least-squares fit: the residual of the readout drops
    w = np.asarray(read(x, params, inputs)["w"])
    r0 = np.mean((inputs["x"] @ params["w"] - inputs["t"]) ** 2)
    r1 = np.mean((inputs["x"] @ w - inputs["t"]) ** 2)
    assert r1 < r0


def test_two_set_solver_rejects_non_bipartite_graph():
    lay = CopiesLayout(scheduled(RES_IR.replace("%SKIP", "%z")))
    with pytest.raises(PassError, match="not bipartite"):
        Solver(lay, "dr")
    Solver(lay, "cp")  # cyclic projections take any DAG


def test_layout_needs_the_schedule():
    with pytest.raises(ProjcError, match="run the schedule pass"):
        CopiesLayout(parse_graph(RES_IR.replace("%SKIP", "%z")))


def test_layer_sets_and_two_sets_from_annots():
    g, lay, *_ = _setup()
    assert lay.layer_sets == tuple(("layer", i) for i in range(6))
    names = {p.hint: lay.node_set[p] for p in lay.params}
    assert names == {"w1": "B", "b1": "A", "w2": "B", "b2": "A"}


# -- every solver trains mlp_digits ------------------------------------------------------------
# (solver, steps per update, batch, updates): budgets measured on a 2-core CPU
BUDGETS = {"dr": (50, 64, 44), "dm": (50, 64, 44), "ap": (50, 64, 66), "cp": (50, 64, 66),
           "cdr": (30, 64, 66)}


def _train(solver, steps, batch, updates, digits, **kw):
    import projc

    tr = projc.compile("models/mlp_digits.onnx", solver=solver, steps_per_update=steps, **kw)
    p, st = fit(tr, digits, batch, updates)
    return tr.evaluate(p, digits.x_test, digits.y_test)["accuracy"], st


@pytest.mark.slow
@pytest.mark.parametrize("solver", sorted(BUDGETS))
def test_solver_trains_mlp_digits(solver, digits):
    acc, st = _train(solver, *BUDGETS[solver], digits)
    assert acc >= 0.90, (solver, acc, st)
    assert np.isfinite(st["residual"]) and np.isfinite(st["violation"])


@pytest.mark.slow
@pytest.mark.xfail(reason="alternating reflections do not converge on this (inconsistent, nonconvex) "
                          "problem: ~0.2-0.45 test accuracy; DR (its averaged form) reaches 0.97",
                   strict=False)
def test_ar_trains_mlp_digits(digits):
    acc, _ = _train("ar", 50, 64, 44, digits)
    assert acc >= 0.90
