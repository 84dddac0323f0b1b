"""Solver and copies-layout tests: fast path vs the projection library, AP monotonicity, training."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import MLP_IR, RES_IR, fit, scheduled
from pass_util import jit_update
from projc.backends.jax import projections as P
from projc.backends.jax.emit import make_stepper
from projc.backends.jax.layout_copies import CopiesLayout
from projc.backends.jax.solvers import Solver
from projc.errors import PassError, ProjcError
from projc.ir.parser import parse_graph


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
            upd = jit_update(lay, Solver(lay, name), 7)
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


# -- time-to-accuracy options on a toy two-set problem -------------------------------------------
# AP between two planes of R^3 at a small angle (linear convergence, slow): the limit is the
# projection of the start onto their intersection line, known in closed form.
class _Ctx(NamedTuple):
    params: dict


class PlanesLayout:
    """A minimal Layout: the state is {"v": point}; set A and B are planes through 0."""

    name = "toy"
    two_sets = ("A", "B")
    layer_sets = (("layer", 0), ("layer", 1))

    def __init__(self, angle=0.15):
        n_a = np.array([0.0, 0.0, 1.0])
        n_b = np.array([0.0, np.sin(angle), np.cos(angle)])
        self.normals = {"A": n_a, "B": n_b, ("layer", 0): n_a, ("layer", 1): n_b}

    def check_two_set(self):
        return None

    def make_ctx(self, params, inputs):
        return _Ctx({k: jnp.asarray(v) for k, v in params.items()})

    def init_state(self, ctx):
        return {"v": ctx.params["v"]}

    def project(self, x, key, ctx):
        n = jnp.asarray(self.normals[key], x["v"].dtype)
        return {"v": x["v"] - jnp.dot(x["v"], n) * n}

    def readout(self, x, ctx):
        return {"v": x["v"]}

    def sq_dist(self, x, y, ctx):
        return jnp.sum((x["v"] - y["v"]) ** 2), 3

    def violation(self, x, ctx, last_set=None):
        return jnp.sum(jnp.asarray(self.normals["A"], x["v"].dtype) * x["v"]) ** 2


V0 = {"v": np.array([0.3, 1.0, -0.7], np.float32)}
LIMIT = np.array([0.3, 0.0, 0.0])   # the intersection of the planes is the x axis


def _run(steps, tol=None, **kw):
    from projc.backends.jax.emit import run_steps
    from projc.backends.jax.solvers import make_iteration

    lay = PlanesLayout()
    s = Solver(lay, "ap", omega=kw.get("omega", 1.0))
    it = make_iteration(s, inertia=kw.get("inertia", 0.0), anderson_memory=kw.get("anderson", 0))
    ctx = lay.make_ctx(V0, {})
    x, _, used = jax.jit(lambda c: run_steps(lay, s, it, steps, lay.init_state(c), c, tol))(ctx)
    return np.asarray(x["v"]), int(used)


def test_tol_stops_early_at_the_fixed_step_point():
    v_tol, used = _run(2000, tol=1e-10)
    assert 10 < used < 2000                         # stopped by the residual, not the cap
    v_fixed, used_fixed = _run(used)                 # the same number of plain steps
    np.testing.assert_allclose(v_tol, v_fixed, rtol=1e-6, atol=1e-7)
    assert used_fixed == used
    np.testing.assert_allclose(v_tol, LIMIT, atol=1e-3)   # and it is near the limit
    _, capped = _run(5, tol=1e-10)
    assert capped == 5                               # max = steps_per_update


def test_acceleration_off_by_default_is_the_plain_loop():
    base, _ = _run(30)
    for kw in ({"omega": 1.0}, {"inertia": 0.0}, {"anderson": 0}):
        np.testing.assert_array_equal(_run(30, **kw)[0], base)


@pytest.mark.parametrize("kw", [{"omega": 1.6}, {"inertia": 0.6}, {"anderson": 2}])
def test_accelerations_reach_the_limit_in_fewer_steps(kw):
    plain = np.linalg.norm(_run(40)[0] - LIMIT)
    fast = np.linalg.norm(_run(40, **kw)[0] - LIMIT)
    assert fast < 0.5 * plain, (kw, fast, plain)
    assert _run(2000, tol=1e-10, **kw)[1] < _run(2000, tol=1e-10)[1]


def test_anderson_safeguard_falls_back_to_the_plain_step():
    from projc.backends.jax.solvers import anderson

    lay = PlanesLayout()
    s = Solver(lay, "ap")
    it = anderson(s.step, 3)
    ctx = lay.make_ctx(V0, {})
    carry = it.init(lay.init_state(ctx))
    for _ in range(3):
        carry, _ = it.advance(carry, ctx)
    assert int(carry["valid"].sum()) == 3
    x = carry["x"]
    plain = s.step(x, ctx)
    carry["r"] = jnp.asarray(0.0, jnp.float32)   # pretend the residual was 0 before: it grew
    carry, _ = it.advance(carry, ctx)
    np.testing.assert_array_equal(carry["x"]["v"], plain["v"])   # the plain step, history dropped
    assert int(carry["valid"].sum()) == 1


def test_anderson_weights_solve_the_constrained_least_squares():
    from projc.backends.jax.solvers import anderson_weights

    rng = np.random.default_rng(0)
    F = jnp.asarray(rng.normal(size=(4, 9)))
    valid = jnp.asarray([True, True, False, True])
    a = np.asarray(anderson_weights(F @ F.T, valid, 0.0))
    assert a[2] == 0 and abs(a.sum() - 1) < 1e-9
    # brute force: min |Fᵀα| over α = e + N z (Σα = 1 on the valid rows)
    rows = np.asarray(F)[[0, 1, 3]]
    best = min((np.linalg.norm(np.array([1 - u - w, u, w]) @ rows), u, w)
               for u in np.linspace(-3, 3, 121) for w in np.linspace(-3, 3, 121))
    assert np.linalg.norm(a[[0, 1, 3]] @ rows) <= best[0] + 1e-9


def test_update_scale_stretches_the_parameter_change():
    from projc.backends.jax.emit import projection_method
    from projc.backends.jax.methods import scaled

    lay = PlanesLayout()
    outs = [jax.jit(scaled(projection_method(lay, Solver(lay, "ap"), 3), a).update)(V0, (), {})[0]["v"]
            for a in (1.0, 2.5)]
    np.testing.assert_allclose(np.asarray(outs[1]) - V0["v"], 2.5 * (np.asarray(outs[0]) - V0["v"]),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw, match", [
    ({"omega": 2.0}, "omega"), ({"omega": 1.5, "name": "dr"}, "applies to ap and cp"),
    ({"inertia": 1.0}, "inertia"), ({"anderson": -1}, "anderson"),
    ({"anderson": 2, "inertia": 0.3}, "not both")])
def test_acceleration_options_are_checked(kw, match):
    from projc.backends.jax.solvers import make_iteration

    name = kw.pop("name", "ap")
    with pytest.raises(ProjcError, match=match):
        make_iteration(Solver(PlanesLayout(), name, omega=kw.get("omega", 1.0)),
                       inertia=kw.get("inertia", 0.0), anderson_memory=kw.get("anderson", 0))


@pytest.mark.parametrize("kw, match", [({"tol": 0.0}, "tol"), ({"update_scale": -1.0}, "update_scale"),
                                       ({"tol": float("nan")}, "tol")])
def test_trainer_checks_the_options_before_loading(kw, match):
    import projc

    with pytest.raises(ProjcError, match=match):
        projc.compile("no-such-file.onnx", solver="cp", **kw)


@pytest.mark.parametrize("argv, match", [
    (["--omega", "2"], "--omega"), (["--inertia", "1"], "--inertia"), (["--anderson", "-1"], "--anderson"),
    (["--tol", "0"], "--tol"), (["--update-scale", "nan"], "--update-scale"),
    (["--solver", "dr", "--omega", "1.5"], "applies to ap and cp")])
def test_cli_refuses_bad_acceleration_options(argv, match, tmp_path, capsys):
    from projc.cli import main

    out = tmp_path / "m.onnx"
    try:
        code = main(["train", "models/mlp_digits.onnx", *argv, "-o", str(out)])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_auto_update_scale_is_2_for_convolutions_and_1_otherwise():
    """update_scale="auto" (the default) stretches the updates of conv models only
    (docs/results-cnn.md): the default run equals an explicit update_scale=2 run and not a plain one."""
    import projc
    from projc.config import UpdateConfig
    from projc.train.trainer import CONV_UPDATE_SCALE

    assert UpdateConfig().update_scale == "auto" and CONV_UPDATE_SCALE == 2.0
    cnn, mlp = "models/cnn_digits.onnx", "models/mlp_digits.onnx"
    assert projc.compile(mlp, steps_per_update=2).update_scale == 1.0
    assert projc.compile(cnn, solver="adam").update_scale == 1.0  # nothing to stretch
    assert projc.compile(cnn, update_scale=1.5).update_scale == 1.5
    with pytest.raises(ProjcError, match="update_scale"):
        projc.compile(cnn, update_scale="fast")
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    moved, resolved = {}, {}
    for scale in ("auto", 1.0, 2.0):
        tr = projc.compile(cnn, solver="cp", steps_per_update=2, update_scale=scale)
        p0 = tr.init_params()
        p1, _st, _ = tr.update(p0, tr.init_state(p0), x, y)
        moved[scale], resolved[scale] = np.asarray(p1["conv.weight"]) - p0["conv.weight"], tr.update_scale
    assert resolved == {"auto": 2.0, 1.0: 1.0, 2.0: 2.0} and np.abs(moved[1.0]).max() > 1e-6
    np.testing.assert_allclose(moved["auto"], moved[2.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(moved["auto"], 2.0 * moved[1.0], rtol=1e-4, atol=1e-6)


def test_weight_decay_shrinks_each_parameter_by_its_fraction_after_the_update():
    """weight_decay δ: p ← p + α (readout − p) − δ p, the same readout as without it (README
    "Recurrent models"); out of [0, 1) it is refused before anything compiles."""
    import projc

    mlp = "models/mlp_digits.onnx"
    for bad in (-0.1, 1.0, "x"):
        with pytest.raises(ProjcError, match="weight_decay"):
            projc.compile(mlp, weight_decay=bad)
    rng = np.random.default_rng(0)
    x = rng.random((8, 64), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    plain = projc.compile(mlp, steps_per_update=3)
    p0 = plain.init_params()
    p1, _st, _ = plain.update(p0, plain.init_state(p0), x, y)
    for scale in (1.0, 1.5):
        decayed = projc.compile(mlp, steps_per_update=3, weight_decay=0.1, update_scale=scale)
        p2, _st, _ = decayed.update(p0, decayed.init_state(p0), x, y)
        for k in p0:
            want = p0[k] + scale * (np.asarray(p1[k]) - p0[k]) - 0.1 * p0[k]
            np.testing.assert_allclose(np.asarray(p2[k]), want, rtol=1e-5, atol=1e-6)
    adam = projc.compile(mlp, solver="adam", lr=1e-2, weight_decay=0.5)
    q1 = adam.update(p0, adam.init_state(p0), x, y)[0]
    adam0 = projc.compile(mlp, solver="adam", lr=1e-2)
    q0 = adam0.update(p0, adam0.init_state(p0), x, y)[0]
    assert np.linalg.norm(np.asarray(q1["fc1.weight"])) < np.linalg.norm(np.asarray(q0["fc1.weight"]))


def test_schedule_scales_the_step_and_decays_to_zero():
    """--schedule: the factor goes 1 → 0 over the run's progress (cosine, linear) and multiplies
    the projected move and Adam's update; at the end of the run the parameters stay put."""
    import jax.numpy as jnp

    import projc
    from projc.backends.jax.methods import SCHEDULE_FACTORS

    t = jnp.asarray([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(SCHEDULE_FACTORS["linear"](t), [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-7)
    np.testing.assert_allclose(SCHEDULE_FACTORS["cosine"](t),
                               [1.0, 0.5 + 0.5 ** 0.5 / 2, 0.5, 0.5 - 0.5 ** 0.5 / 2, 0.0], atol=1e-7)
    with pytest.raises(ProjcError, match="schedule"):
        projc.compile("models/mlp_digits.onnx", schedule="step")
    rng = np.random.default_rng(1)
    x, y = rng.random((8, 64), dtype=np.float32), rng.integers(0, 10, 8)
    for solver in ("dr", "adam"):
        plain = projc.compile("models/mlp_digits.onnx", solver=solver, steps_per_update=3, lr=1e-2)
        tr = projc.compile("models/mlp_digits.onnx", solver=solver, steps_per_update=3, lr=1e-2,
                           schedule="linear")
        p0 = tr.init_params()
        full = np.asarray(plain.update(p0, plain.init_state(p0), x, y)[0]["fc1.weight"]) - p0["fc1.weight"]
        moves = {t: np.asarray(tr.update(p0, tr.init_state(p0), x, y, progress=t)[0]["fc1.weight"])
                 - p0["fc1.weight"] for t in (0.0, 0.5, 1.0)}
        assert np.abs(full).max() > 1e-5 and not np.any(moves[1.0])
        np.testing.assert_allclose(moves[0.0], full, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(moves[0.5], 0.5 * full, rtol=1e-4, atol=1e-6)
        with pytest.raises(ProjcError, match="progress"):
            tr.update(p0, tr.init_state(p0), x, y, progress=-1.0)

def _planes_iterates(it, steps, grow_at=None):
    lay = PlanesLayout()
    s = Solver(lay, "ap")
    ctx = lay.make_ctx({"v": V0["v"].astype(np.float64)}, {})
    carry, out = it(s.step).init(lay.init_state(ctx)), []
    for k in range(steps):
        if k == grow_at:
            carry["r"] = jnp.asarray(0.0, jnp.float64)   # the residual "grew": the safeguard fires
        carry, _ = it(s.step).advance(carry, ctx)
        out.append(np.asarray(carry["x"]["v"]))
    return np.stack(out)


@pytest.mark.parametrize("grow_at", [None, 4])
def test_anderson_memory_one_fast_path_matches_the_ring_buffer(grow_at):
    from projc.backends.jax.solvers import anderson, anderson1

    with jax.enable_x64(True):   # in float32 the near-parallel residuals' 2x2 system amplifies rounding
        fast = _planes_iterates(anderson1, 12, grow_at)
        slow = _planes_iterates(lambda step: anderson(step, 1), 12, grow_at)
    assert fast.dtype == np.float64
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)
    assert np.abs(np.diff(slow, axis=0)).max() > 1e-3   # the iterates do move


def test_anderson_memory_one_fast_path_matches_on_a_model_update(monkeypatch, digits):
    import os

    import projc
    from projc.backends.jax import solvers

    model = os.path.join(os.path.dirname(__file__), "..", "models", "mlp_digits.onnx")

    def update():
        tr = projc.compile(model, solver="cp", steps_per_update=10, anderson=1, cache=False)
        p = tr.init_params()
        x, y = digits.x_train[:64], digits.y_train[:64]
        return tr.update(p, tr.init_state(p), x, y)[0], p

    fast, p0 = update()
    monkeypatch.setattr(solvers, "anderson1", lambda step: solvers.anderson(step, 1))
    slow, _ = update()
    for k in p0:
        moved = np.abs(np.asarray(slow[k]) - np.asarray(p0[k])).max()
        assert moved > 0
        np.testing.assert_allclose(np.asarray(fast[k]), np.asarray(slow[k]), atol=1e-4 * max(moved, 1e-3))
