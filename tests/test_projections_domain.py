"""sum_smooth with a restricted domain or a pole: exp, log, sqrt, rsqrt, reciprocal, square and pow with
a constant exponent (backends/jax/proj_smooth_domain.py), against the float64 brute-force oracle of
tests/oracle_1d.py and the op's forward.

Feasibility: the returned sum lies in the domain as the forward adds the operands (never NaN, never
across a pole), and y is the forward there; optimality: no oracle point of the search domain is
closer (relative gap, float64).  The worst gap per fn is printed at the end (`-s`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle_1d import check_feasible, oracle_costs, random_points, smooth_forward

from projc.backends.jax import proj_smooth as PS
from projc.backends.jax import projections as P
from projc.backends.jax.proj_smooth_domain import DOMAIN_FNS, cubic_minima
from projc.ir.constraints import type_rules as constraint_type_rules
from projc.ir.parser import parse_graph
from projc.ir.verify import VerificationError, verify
from projc.ops import constraint as C

GAPS: dict[str, float] = {}
GAP_TOL = 1e-9
# (fn, exponent): the named fns, and pow beyond the exponents they stand for (0.5, -0.5, -1, 2)
VARIANTS = [(fn, 1.0) for fn in sorted(set(DOMAIN_FNS) - {"pow"})] + [
    ("pow", e) for e in (3.0, 4.0, -2.0, -3.0, 1.5, 2.5, 0.3, -1.7, 0.0)]


def label(fn, e):
    return fn if fn != "pow" else f"pow e={e:g}"


@pytest.fixture(scope="module", autouse=True)
def _report_gaps():
    yield
    if GAPS:
        print("\nworst oracle gap per fn (relative, float64; <= 0: the oracle found nothing closer):")
        for k in sorted(GAPS):
            print(f"  {k:22s} {GAPS[k]: .3e}")


def test_every_domain_fn_is_an_op_fn():
    assert set(DOMAIN_FNS) <= set(C.SMOOTH_FNS) and set(DOMAIN_FNS) <= set(PS.SMOOTH_FNS)


# ------------------------------------------------------------------------------ feasibility
FEASIBLE = [{"fn": fn} for fn in sorted(set(DOMAIN_FNS) - {"pow"})] + [
    {"fn": "pow", "exponent": e} for e in (3.0, -2.0, 1.5, -1.7, 0.0)]


def edges():
    """S0 at 0, ±1e-12, ±1e3, ±1e30 (outside the domain too), targets inside and outside the range."""
    S0, y0 = (v.ravel() for v in np.meshgrid([-1e30, -1e3, -1.0, -1e-12, 0.0, 1e-12, 1.0, 1e3, 1e30],
                                             [-1e3, -2.0, 0.0, 0.5, 2.0, 1e3]))
    return S0, y0, np.abs(S0) >= 1e30


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_feasible_against_forward(dtype):
    """One jit for all: the sum in the domain as the forward adds the operands (a constant first and
    last), never NaN, never worse than staying; rows with |a| ~ 1e30 or targets ±1e6, operands that
    cancel (the rounding margin off a domain's end), and the edges.  Finite too, except for a float32
    sum of operands ~1e30 under a power > 1 (no sum the dtype can place safely inside the domain
    keeps s^e finite: it overflows to inf, never NaN)."""
    f64 = dtype == jnp.float64
    with jax.enable_x64(f64):  # float64: the named fns (a compile costs ~1 s a fn)
        check_feasible("sum_smooth", FEASIBLE[:6] if f64 else FEASIBLE, dtype, 2 if f64 else 3, seed=7,
                       extreme=True, extra=edges())


# ------------------------------------------------------------------------------- optimality
def near_the_ends(rng, M):
    """S0 next to a domain's end or a pole and on both sides of it, targets near and far from it."""
    S0 = rng.choice([-1, 1], M) * 10.0 ** rng.uniform(-14, 1, M) * (rng.random(M) < 0.9)
    y0 = rng.choice([-1, 1], M) * 10.0 ** rng.uniform(-3, 6, M)
    n = rng.integers(1, 7, M).astype(np.float64)
    return S0, y0, n, np.abs(S0) * (1 + 3 * rng.random(M))


def on_the_graph(fn, e):
    """Points (S0, f(S0)), next to a pole or an end too (S0 = 1e-300 for log: inside the rounding
    margin, but f(S0) is defined, so it must not move)."""
    S0 = np.array([1e-300 if fn == "log" else 1e-150, 1e-12, 0.3, 1.0, 7.5, 1e3])  # (1e-300)² underflows
    S0 = np.r_[S0, -S0]
    y0 = smooth_forward(fn, 1.0, e)(S0)
    S0 = np.where(np.isfinite(y0), S0, 1.0)
    return S0, smooth_forward(fn, 1.0, e)(S0), np.full(S0.shape, 2.0), np.abs(S0)


@pytest.mark.parametrize("fn,e", VARIANTS, ids=[label(*v) for v in VARIANTS])
def test_oracle(fn, e):
    """Random points over many scales, points next to the domain's ends, and points on the graph
    (which come back unchanged: idempotence)."""
    rng = np.random.default_rng(17 + len(fn) + int(10 * abs(e)) + 100 * (e < 0))
    parts = random_points(rng, 500), near_the_ends(rng, 200), on_the_graph(fn, e)
    pts = [np.concatenate(v) for v in zip(*parts)]
    S, ours, best, z0 = oracle_costs(fn, *pts, exponent=e)
    gap = (ours - best) / (best + 1e-12 * (1 + z0))
    GAPS[label(fn, e)] = max(GAPS.get(label(fn, e), -np.inf), float(np.max(gap)))
    bad = gap > GAP_TOL
    assert not np.any(bad), (fn, e, pts[0][bad], pts[1][bad], pts[2][bad], gap[bad])
    k = len(parts[2][0])
    assert np.array_equal(S[-k:], pts[0][-k:]), (fn, e, S[-k:], pts[0][-k:])


# ------------------------------------------------------------------------------ branches, poles
def test_reciprocal_chooses_a_branch_and_crosses_the_pole_only_when_cheaper():
    with jax.enable_x64(True):
        f = jax.jit(lambda s, t: PS.solve_sum("reciprocal", s, t, 1))
        # near the negative branch: stays on it
        assert float(f(jnp.asarray(-2.0), jnp.asarray(-0.4))) < 0
        # a target far on the other side: the positive branch, never the pole
        S = float(f(jnp.asarray(-0.1), jnp.asarray(5.0)))
        assert S > 0 and abs(1 / S - 5.0) < 1.0
        # exactly at the pole: either branch, never 0
        S = float(f(jnp.asarray(0.0), jnp.asarray(0.0)))
        assert S != 0 and np.isfinite(1 / S)


def test_square_is_even_and_sqrt_never_negative():
    with jax.enable_x64(True):
        sq = jax.jit(lambda s, t: PS.solve_sum("square", s, t, 2))
        for s0, t in [(1.5, 4.0), (0.2, -1.0), (3.0, 0.5)]:
            assert float(sq(jnp.asarray(s0), jnp.asarray(t))) == pytest.approx(
                -float(sq(jnp.asarray(-s0), jnp.asarray(t))), abs=1e-12)
        # inside the parabola, S0 = 0: two equally good points ±√(y0 - 1/(2n)), either one
        S = float(sq(jnp.asarray(0.0), jnp.asarray(4.0)))
        assert abs(abs(S) - np.sqrt(4.0 - 1 / 4)) < 1e-9
        r = jax.jit(lambda a, t: P.sum_smooth(a, t, fn="sqrt"))
        a, y = r(jnp.asarray([-5.0, -1e-300, 0.0, 2.0]), jnp.asarray([-3.0, 0.0, -1.0, 10.0]))
        assert bool(jnp.all(a >= 0)) and bool(jnp.all(jnp.isfinite(y)))


def test_cubic_minima_against_numpy_roots():
    rng = np.random.default_rng(4)
    p = rng.normal(size=400) * 10.0 ** rng.uniform(-3, 6, 400)
    q = rng.normal(size=400) * 10.0 ** rng.uniform(-3, 9, 400)
    with jax.enable_x64(True):
        lo, hi = (np.asarray(v) for v in cubic_minima(jnp.asarray(p), jnp.asarray(q)))
    for i in range(400):
        r = np.roots([1.0, 0.0, p[i], q[i]])
        real = np.sort(r[np.abs(r.imag) <= 1e-7 * (1 + np.abs(r))].real)
        scale = max(np.sqrt(abs(p[i])), np.cbrt(abs(q[i])), 1e-300)
        assert abs(lo[i] - real[0]) <= 1e-6 * scale and abs(hi[i] - real[-1]) <= 1e-6 * scale, (p[i], q[i])


# ------------------------------------------------------------------------------------ the IR
def test_pow_needs_its_exponent_and_forward_matches_numpy():
    text = """graph @g {
  input %x: f32[B,4]
  param %b: f32[4]
  %y: f32[B,4] = sum_smooth[exponent=3.0, fn="pow"] %x, %b
  return %y
}
"""
    verify(parse_graph(text), constraint_type_rules())
    with pytest.raises(VerificationError, match="exponent"):
        verify(parse_graph(text.replace("exponent=3.0, ", "")), constraint_type_rules())
    x = np.linspace(0.1, 3.0, 7)
    for fn, e, ref in [("pow", 3.0, x ** 3), ("pow", -1.7, x ** -1.7), ("sqrt", 1.0, np.sqrt(x)),
                       ("rsqrt", 1.0, x ** -0.5), ("reciprocal", 1.0, 1 / x), ("square", 1.0, x * x),
                       ("exp", 1.0, np.exp(x)), ("log", 1.0, np.log(x)), ("pow", 0.0, np.ones_like(x))]:
        got = np.asarray(C.sum_smooth(jnp.asarray(x, jnp.float32), fn=fn, exponent=e))
        assert np.allclose(got, ref, rtol=1e-5), (fn, e)
    assert np.isnan(float(C.smooth(jnp.asarray(-2.0), "pow", exponent=0.5)))
    assert float(C.smooth(jnp.asarray(-2.0), "pow", exponent=3.0)) == -8.0
