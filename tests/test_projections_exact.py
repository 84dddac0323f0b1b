"""sum_smooth and sum_pwl at the edges: feasibility against the op's forward for every fn, exactness
of the scalar search against an independent float64 oracle (tests/oracle_1d.py), staircases and
sign on the graph ONNX defines.

Feasibility: the returned y equals the forward (projc.ops.constraint) applied to the returned
operands, summed as the forward sums them (exactly for the discontinuous fns, 1e-5 relative for the
smooth ones), in float32 and float64, with and without a constant operand.  Optimality: no
oracle point is closer (relative gap, float64); the worst gap per fn is printed at the end (`-s`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle_1d import check_feasible, oracle_costs, random_points

from projc.backends.jax import proj_pwl as PW
from projc.backends.jax import proj_smooth as PS
from projc.backends.jax import projections as P
from projc.backends.jax.proj_smooth_domain import DOMAIN_FNS
from projc.ops import constraint as C

GAPS: dict[str, float] = {}
GAP_TOL = 1e-9


@pytest.fixture(scope="module", autouse=True)
def _report_gaps():
    yield
    if GAPS:
        print("\nworst oracle gap per fn (float64; relative, or for staircases in units of the margin's"
              " allowance; <= 0: the oracle found nothing closer):")
        for k in sorted(GAPS):
            print(f"  {k:26s} {GAPS[k]: .3e}")


def record(name, ours, best, z0):
    gap = (ours - best) / (best + 1e-12 * (1 + z0))
    GAPS[name] = max(GAPS.get(name, -np.inf), float(np.max(gap)))
    return gap


# ------------------------------------------------------------------ feasibility for every fn
PWL_CASES = {
    "relu": {}, "leaky_relu": {"alpha": 0.1}, "clip": {"lo": -1.0, "hi": 2.0}, "abs": {}, "sign": {},
    "identity": {}, "hardsigmoid": {"alpha": 0.2, "beta": 0.5}, "relu6": {}, "round": {}, "floor": {},
    "ceil": {}, "fake_quant": {"scale": 0.25, "zero_point": 3.0, "qmin": 0.0, "qmax": 255.0},
}
SMOOTH_CASES = [{"fn": fn} for fn in sorted(set(C.SMOOTH_FNS) - set(DOMAIN_FNS))]
SMOOTH_CASES[[p["fn"] for p in SMOOTH_CASES].index("elu")]["alpha"] = 1.3


def test_cases_cover_every_fn():
    """Every sum_pwl fn here, every sum_smooth fn here or in test_projections_domain.py."""
    assert set(PWL_CASES) == set(C.PWL_FNS)
    assert {p["fn"] for p in SMOOTH_CASES} | set(DOMAIN_FNS) == set(C.SMOOTH_FNS) == set(PS.SMOOTH_FNS)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sum_pwl_feasible_against_forward(dtype, n):
    """Every sum_pwl fn (one jit), sums on staircase ties and targets on levels included."""
    with jax.enable_x64(dtype == jnp.float64):
        check_feasible("sum_pwl", [{"fn": fn, **p} for fn, p in sorted(PWL_CASES.items())], dtype, n, seed=1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sum_smooth_feasible_against_forward(dtype):
    """The activations (the domain-restricted fns: test_projections_domain.py), one jit for all."""
    with jax.enable_x64(dtype == jnp.float64):
        check_feasible("sum_smooth", SMOOTH_CASES, dtype, 3 if dtype == jnp.float32 else 1, seed=2, extreme=True)


# ------------------------------------------------------------------ optimality: hardswish first
def oracle_gaps(fn, S0, y0, n, mag=None, alpha=1.0):
    S, ours, best, z0 = oracle_costs(fn, S0, y0, n, mag, alpha)
    return S, record(f"sum_smooth {fn}", ours, best, z0)


def test_hardswish_regression_at_the_oracles_point():
    """a0 = [5.9197], y0 = 0.5516, n = 1: the linear piece's minimum (S = (S0 + y0)/2 = 3.236) is
    bracketed by every grid segment and used to take both refinements, while the quadratic piece's
    minimum (S = 2.8081, a root of its cubic) is 0.032 cheaper.  Exact now: the cubic in closed form."""
    with jax.enable_x64(True):
        a, y = jax.jit(lambda a, t: P.sum_smooth(a, t, fn="hardswish"))(jnp.asarray([5.9197]), jnp.asarray([0.5516]))
    S, y = float(a[0]), float(y[0])
    u = S + 1.5  # on [-3, 3]: the stationary point solves u³ + (18 - 9/4 - 6y0)u - 18(S0 + 3/2) = 0
    assert abs(u ** 3 + (18 - 2.25 - 6 * 0.5516) * u - 18 * (5.9197 + 1.5)) < 1e-9
    assert S == pytest.approx(2.8081434359, abs=1e-9) and y == pytest.approx(S * (S + 3) / 6, abs=1e-12)
    cost = (S - 5.9197) ** 2 + (y - 0.5516) ** 2
    assert cost < ((5.9197 + 0.5516) / 2 - 5.9197) ** 2 * 2 - 0.03  # beats the linear piece's 14.408
    _, gap = oracle_gaps("hardswish", [5.9197], [0.5516], [1])
    assert gap[0] <= GAP_TOL


def test_hardswish_oracle_many_points():
    rng = np.random.default_rng(11)
    S0, y0, n, mag = random_points(rng, 1500)
    # and a dense sweep around the kinks and the regression point's family (n = 1, S0 > 3)
    g0, t0 = np.meshgrid(np.linspace(-8, 8, 33), np.linspace(-3, 6, 19))
    S0, y0 = np.r_[S0, g0.ravel()], np.r_[y0, t0.ravel()]
    n, mag = np.r_[n, np.ones(g0.size)], np.r_[mag, np.abs(g0.ravel())]
    _, gap = oracle_gaps("hardswish", S0, y0, n, mag)
    assert np.all(gap <= GAP_TOL), (S0[gap > GAP_TOL], y0[gap > GAP_TOL], gap[gap > GAP_TOL])


@pytest.mark.parametrize("fn", ["tanh", "sigmoid", "one_minus_sigmoid", "softplus", "silu", "gelu",
                                "gelu_tanh", "elu"])
def test_smooth_oracle_many_points(fn):
    """The other activations: several local minima (far targets), kinks (elu), saturated sums."""
    rng = np.random.default_rng(sum(map(ord, fn)))
    S0, y0, n, mag = random_points(rng, 500)
    _, gap = oracle_gaps(fn, S0, y0, n, mag, alpha=1.3 if fn == "elu" else 1.0)
    assert np.all(gap <= GAP_TOL), (S0[gap > GAP_TOL], y0[gap > GAP_TOL], gap[gap > GAP_TOL])


# --------------------------------------------------------------------- staircases and sign
STAIRS = {
    "round": P.staircase("round"),
    "floor": P.staircase("floor"),
    "ceil": P.staircase("ceil"),
    "fake_quant_u8": P.fake_quant(0.25, 3, 0, 255),
    "fake_quant_i8": P.fake_quant(0.1, 0, -128, 127),
}


def stair_closure_oracle(stc, S0, y0, n):
    """Least cost over the closure of the staircase: every level in a window, S clipped into it."""
    a_lo, a_hi = {"round": (-0.5, 0.5), "floor": (0.0, 1.0), "ceil": (-1.0, 0.0)}[stc.mode]
    jmin, jmax = stc.kmin - stc.zero_point, stc.kmax - stc.zero_point
    t0, kap = S0 / stc.scale, y0 / stc.scale
    ks = np.arange(math.floor(min(t0, kap)) - 3, math.ceil(max(t0, kap)) + 4, dtype=np.float64)
    ks = np.unique(np.clip(ks, jmin, jmax))
    t = np.clip(t0, np.where(ks <= jmin, -np.inf, ks + a_lo), np.where(ks >= jmax, np.inf, ks + a_hi))
    return float(np.min(stc.scale ** 2 * ((t - t0) ** 2 / n + (ks - kap) ** 2)))


@pytest.mark.parametrize("name", sorted(STAIRS))
def test_staircase_on_the_onnx_graph_and_optimal_up_to_the_margin(name):
    """y == φ(S) as the forward evaluates it (round half to even included) at ties, on levels and
    elsewhere; the cost exceeds the closure's optimum by at most scale²(2δ|Δt| + δ²)/n."""
    stc = STAIRS[name]
    rng = np.random.default_rng(5)
    B = 400
    t = np.round(rng.normal(size=B) * 6) + rng.choice([0.5, 0.0, 1.0, 0.3], B)  # ties, levels, others
    S0 = np.where(rng.random(B) < 0.6, t * stc.scale, rng.normal(size=B) * 20 * stc.scale)
    y0 = np.where(rng.random(B) < 0.5, np.round(rng.normal(size=B) * 6) * stc.scale, rng.normal(size=B) * 10)
    with jax.enable_x64(True):
        for n in (1, 2, 3):
            ops = [jnp.asarray(S0 / n)] * n
            *a, y = (np.asarray(v) for v in P.sum_pwl(*ops, jnp.asarray(y0), fn=stc))
            S = sum(a[1:], a[0])
            fwd = np.asarray(C.pwl(jnp.asarray(S), "fake_quant", scale=stc.scale, zero_point=stc.zero_point,
                                   qmin=stc.kmin, qmax=stc.kmax) if name.startswith("fake") else
                             C.pwl(jnp.asarray(S), name))
            assert np.array_equal(y, fwd), (name, n, S[y != fwd], y[y != fwd])
            delta = np.asarray(PW.stair_margin(stc, n, np.abs(S0), S0 / stc.scale, y0 / stc.scale, jnp.float64))
            ours = (S - S0) ** 2 / n + (y - y0) ** 2
            for i in range(B):
                best = stair_closure_oracle(stc, S0[i], y0[i], n)
                slack = stc.scale ** 2 * (2 * delta[i] * math.sqrt(n * best) / stc.scale + delta[i] ** 2) / n
                assert ours[i] <= best + slack + 1e-12 * (1 + best), (name, S0[i], y0[i], n, ours[i], best)
                key = f"sum_pwl {name} (/margin)"
                GAPS[key] = max(GAPS.get(key, -np.inf), (ours[i] - best) / (slack + 1e-300))


# the ramps of bounded staircases (and floor/ceil ones, for the middle offset), as IR params
RAMPS = {
    "fake_quant_u8": ({"fn": "fake_quant", "scale": 0.25, "zero_point": 3, "qmin": 0, "qmax": 255}, 0.0),
    "fake_quant_i8": ({"fn": "fake_quant", "scale": 0.1, "zero_point": 0, "qmin": -128, "qmax": 127}, 0.0),
    "half_steps": ({"fn": "fake_quant", "scale": 0.5, "zero_point": 0, "qmin": 0, "qmax": 4}, 0.0),
}


@pytest.mark.parametrize("name", sorted(RAMPS))
def test_staircase_ramp_against_a_brute_force_oracle(name):
    """staircase="ramp" projects onto the line through the levels' middles clipped at the end levels,
    as a dense search over S of (S - S0)²/n + (ramp(S) - y0)² finds it; the ramp meets every level
    at its piece's middle."""
    from oracle_1d import oracle
    params, _ = RAMPS[name]
    stc = PS.pwl_fn(params)
    lo, hi = stc.scale * (stc.kmin - stc.zero_point), stc.scale * (stc.kmax - stc.zero_point)
    ramp = lambda S: np.clip(S, lo, hi)  # noqa: E731 - round: the middles are the levels themselves
    levels = np.arange(stc.kmin, stc.kmax + 1)
    mids = stc.scale * (levels - stc.zero_point)
    np.testing.assert_allclose(np.asarray(PW.pwl_eval(PW.stair_ramp(stc), jnp.asarray(mids))),
                               np.asarray(P.stair_eval(stc, jnp.asarray(mids))), rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(11)
    B = 300
    S0 = rng.normal(size=B) * (hi - lo) * 0.7 + (hi + lo) / 2
    y0 = rng.normal(size=B) * (hi - lo) * 0.7 + (hi + lo) / 2
    off = rng.normal(size=B)
    with jax.enable_x64(True):
        for n in (1, 2, 3):
            ops = [jnp.asarray((S0 - off) / n)] * n
            *a, y = (np.asarray(v) for v in P.sum_activation("sum_pwl", params, *ops, jnp.asarray(y0),
                                                             offset=jnp.asarray(off), staircase="ramp"))
            S = off + sum(a[1:], a[0])
            np.testing.assert_allclose(y, ramp(S), atol=1e-12)
            ours = (S - S0) ** 2 / n + (y - y0) ** 2
            best, _ = oracle(ramp, S0, y0, np.full(B, n), [(np.full(B, -np.inf), np.full(B, np.inf))])
            assert np.all(ours <= best + 1e-9 * (1 + best)), (name, n, np.max(ours - best))
            key = f"sum_pwl ramp {name}"
            GAPS[key] = max(GAPS.get(key, -np.inf), float(np.max(ours - best)))


def test_stair_ramp_middles_and_unbounded():
    """floor's ramp is x - ½ (the middle of [j, j + 1] maps to j), ceil's x + ½; a staircase without
    an end level has no ramp (it would be the identity), so "ramp" leaves its exact projection."""
    for mode, shift in (("floor", -0.5), ("ceil", 0.5), ("round", 0.0)):
        st = P.staircase(mode, 2.0, 0.0, -3, 5)
        x = jnp.asarray([-100.0, -1.3, 0.0, 2.2, 100.0])
        want = np.clip(np.asarray(x) + 2.0 * shift, -6.0, 10.0)
        np.testing.assert_allclose(np.asarray(PW.pwl_eval(PW.stair_ramp(st), x)), want)
        assert PW.stair_ramp(P.staircase(mode)) is None
    ops, y0 = jnp.asarray([0.3, 1.6]), jnp.asarray([2.0, 0.0])
    for a, b in zip(P.sum_activation("sum_pwl", {"fn": "round"}, ops, y0, staircase="ramp"),
                    P.sum_activation("sum_pwl", {"fn": "round"}, ops, y0)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_staircase_margin_at_a_tie():
    """round at S = 0.5 evaluates to 0 (half to even): a point (0.5, 0) stays put; a target of 1
    moves the sum past the tie by the margin, never onto it (which the forward would give 0)."""
    with jax.enable_x64(True):
        a, b, y = P.sum_pwl(jnp.asarray(0.25), jnp.asarray(0.25), jnp.asarray(0.0), fn="round")
        assert float(a + b) == 0.5 and float(y) == 0.0
        a, b, y = P.sum_pwl(jnp.asarray(0.25), jnp.asarray(0.25), jnp.asarray(1.0), fn="round")
        assert float(y) == 1.0 and 0.5 < float(a + b) <= 0.5 + 2 * PW.STAIR_MARGIN
        assert float(jnp.round(a + b)) == 1.0
        # floor at an integer is that integer's level; below it the one under
        a, y = P.sum_pwl(jnp.asarray(2.0), jnp.asarray(1.0), fn="floor")
        assert float(y) == 1.0 and 2.0 - 2 * PW.STAIR_MARGIN <= float(a) < 2.0


def test_sign_zero_piece_is_exactly_zero():
    """A unit projected onto sign's 0 gets operands that sum to exactly 0 in operand order, so the
    forward gives 0 too (a spread shift alone leaves a rounding residue, whose sign flips it)."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        ops = [jnp.asarray(rng.normal(size=256) * 0.1) for _ in range(3)]
        *new, y = P.sum_pwl(*ops, jnp.zeros(256), fn="sign")
        S = new[0] + new[1] + new[2]
        assert np.all(np.asarray(y) == 0) and np.all(np.asarray(S) == 0)
        assert np.allclose(np.asarray(new[0] - ops[0]), np.asarray(new[2] - ops[2]), atol=1e-15)
