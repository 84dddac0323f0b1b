"""sum_smooth and the staircase sum_pwl presets against brute-force oracles (issue 11).

Oracles, float64: for smooth f, a dense grid over S in [S0 - R, S0 + R] (R = √n|f(S0) - y0| bounds
every better point) refined by a bounded scalar minimization around its best points; for a staircase,
every level k in a window that must hold the best one, each with S clipped into its piece.  The
worst relative gap (ours - oracle)/oracle per activation is printed at the end (`-s`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize

from projc.backends.jax import proj_smooth as PS
from projc.backends.jax import projections as P
from projc.backends.jax.proj_smooth_domain import DOMAIN_FNS

GAPS: dict[str, float] = {}
GAP_TOL = 1e-7
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=25)
FNS = sorted(set(PS.SMOOTH_FNS) - set(DOMAIN_FNS))  # the domain-restricted ones: test_projections_domain.py


@pytest.fixture(scope="module", autouse=True)
def _report_gaps():
    yield
    if GAPS:
        print("\nworst oracle gap per activation (relative, float64; <= 0: the oracle found nothing closer):")
        for k in sorted(GAPS):
            print(f"  {k:22s} {GAPS[k]: .3e}")


def record(name, ours, oracle):
    gap = (ours - oracle) / (oracle + 1e-12)
    GAPS[name] = max(GAPS.get(name, -np.inf), gap)
    return gap


def f_np(fn, s, alpha=1.0):
    with jax.enable_x64(True):
        return np.asarray(PS.smooth_eval(fn, jnp.asarray(s, jnp.float64), alpha))


def smooth_oracle(fn, S0, y0, n, alpha=1.0):
    """Least (S-S0)²/n + (f(S)-y0)²: grid of 40001 points, then refinement near the 3 best."""
    R = math.sqrt(n) * abs(float(f_np(fn, S0, alpha)) - y0) + 1e-12
    grid = S0 + np.linspace(-R, R, 40001)
    cost = lambda S: (S - S0) ** 2 / n + (f_np(fn, S, alpha) - y0) ** 2  # noqa: E731
    c = cost(grid)
    best = c.min()
    h = grid[1] - grid[0]
    for i in np.argsort(c)[:3]:
        r = optimize.minimize_scalar(lambda s: float(cost(np.float64(s))), bounds=(grid[i] - h, grid[i] + h),
                                     method="bounded", options=dict(xatol=1e-13 * (abs(S0) + R)))
        best = min(best, float(r.fun))
    return best


@st.composite
def smooth_case(draw):
    """S0, y0 over many scales: ordinary, saturated (|S0| up to 1e3), targets outside the range."""
    S0 = draw(st.sampled_from([1.0, 4.0, 30.0, 1e3])) * draw(st.floats(-1, 1))
    y0 = draw(st.sampled_from([0.5, 1.5, 5.0, 100.0])) * draw(st.floats(-1, 1))
    return S0, y0, draw(st.integers(1, 5))


@settings(**SETTINGS)
@given(smooth_case(), st.sampled_from(FNS))
def test_sum_smooth_oracle(case, fn):
    S0, y0, n = case
    alpha = 1.3 if fn == "elu" else 1.0
    rng = np.random.default_rng(abs(hash((S0, y0, n))) % 2**32)
    parts = rng.normal(size=n)
    ops = list(S0 / n + parts - parts.mean())
    with jax.enable_x64(True):
        *a, y = (np.asarray(v) for v in P.sum_smooth(*[jnp.asarray(o) for o in ops], jnp.asarray(y0),
                                                      fn=fn, alpha=alpha))
    S = sum(a)
    assert abs(y - f_np(fn, S, alpha)) <= 1e-12 * (1 + abs(y))          # feasible
    assert np.allclose(np.array(a) - ops, (S - S0) / n, atol=1e-9 * (1 + abs(S0)))  # only the sum moved
    ours = sum((ai - oi) ** 2 for ai, oi in zip(a, ops)) + (y - y0) ** 2
    gap = record(f"sum_smooth {fn}", ours, smooth_oracle(fn, S0, y0, n, alpha))
    assert gap <= GAP_TOL, (fn, S0, y0, n, ours)


@pytest.mark.parametrize("fn", FNS)
def test_sum_smooth_several_minima_and_ties(fn):
    """Targets outside the range and symmetric points (two equally good minima): the least cost
    among the oracle's on a deterministic grid of (S0, y0)."""
    S0s = np.array([-6.0, -2.5, -0.5, 0.0, 0.5, 2.5, 6.0])
    y0s = np.array([-3.0, -1.2, 0.0, 0.3, 1.2, 3.0])
    with jax.enable_x64(True):
        S0, y0 = np.meshgrid(S0s, y0s)
        S = np.asarray(PS.solve_sum(fn, jnp.asarray(S0), jnp.asarray(y0), 2))
    ours = (S - S0) ** 2 / 2 + (f_np(fn, S) - y0) ** 2
    for o, s0, t in zip(ours.ravel(), S0.ravel(), y0.ravel()):
        assert record(f"sum_smooth {fn}", o, smooth_oracle(fn, s0, t, 2)) <= GAP_TOL, (fn, s0, t)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("fn", FNS)
def test_sum_smooth_finite_at_saturation(fn, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        S0 = jnp.asarray([-1e30, -1e3, -60.0, 0.0, 60.0, 1e3, 1e30], dtype)
        for y0 in (-1e3, -2.0, 0.0, 0.5, 2.0, 1e3):
            a, b, y = P.sum_smooth(S0 / 2, S0 / 2, jnp.full_like(S0, y0), fn=fn)
            assert a.dtype == dtype and y.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(y))), (fn, y0, a, y)
            S = a + b
            # never worse than not moving
            cost = (S - S0) ** 2 / 2 + (y - y0) ** 2
            stay = (PS.smooth_eval(fn, S0) - y0) ** 2
            assert bool(jnp.all(cost <= stay * (1 + 1e-5) + 1e-30)), (fn, y0)


def test_sum_smooth_offset_and_jit():
    """A constant offset (a data bias) is never moved; jit gives the eager result."""
    with jax.enable_x64(True):
        a0, c, y0 = jnp.array([0.3, -2.0]), jnp.array([1.0, 0.5]), jnp.array([0.9, -0.99])
        a, y = P.sum_smooth(a0, y0, fn="tanh", offset=c)
        b, z = P.sum_smooth(a0 + c, y0, fn="tanh")
        assert np.allclose(a + c, b) and np.allclose(y, z)
        aj, yj = jax.jit(lambda *v: P.sum_smooth(*v, fn="tanh", offset=c))(a0, y0)
        assert np.allclose(aj, a) and np.allclose(yj, y)


# ------------------------------------------------------------------------------------ staircases
STAIRS = {
    "round": P.staircase("round"),
    "floor": P.staircase("floor"),
    "ceil": P.staircase("ceil"),
    "fake_quant_u8": P.fake_quant(0.25, 3, 0, 255),
    "fake_quant_i8": P.fake_quant(0.1, 0, -128, 127),
}


def stair_oracle(stc, S0, y0, n):
    """Exhaustive over the levels in a window that must hold the best one (the closure's optimum;
    levels j = k - zero_point, t = S/scale)."""
    sides = {"round": (-0.5, 0.5), "floor": (0.0, 1.0), "ceil": (-1.0, 0.0)}[stc.mode]
    jmin, jmax = stc.kmin - stc.zero_point, stc.kmax - stc.zero_point
    t0, kap = S0 / stc.scale, y0 / stc.scale
    ks = np.arange(math.floor(min(t0, kap)) - 3, math.ceil(max(t0, kap)) + 4, dtype=np.float64)
    ks = np.unique(np.clip(ks, jmin, jmax))
    lo = np.where(ks <= jmin, -np.inf, ks + sides[0])
    hi = np.where(ks >= jmax, np.inf, ks + sides[1])
    t = np.clip(t0, lo, hi)
    return float(np.min(stc.scale ** 2 * ((t - t0) ** 2 / n + (ks - kap) ** 2)))


@settings(**SETTINGS)
@given(st.sampled_from(sorted(STAIRS)), st.floats(-60, 60), st.floats(-60, 60), st.integers(1, 4),
       st.booleans())
def test_staircase_oracle(name, S0, y0, n, tie):
    """On the graph ONNX defines (y = φ(S) as stair_eval, the forward's formula, gives it) and as
    close as the closure's optimum up to the margin's allowance (proj_pwl.stair_margin)."""
    stc = STAIRS[name]
    if tie:  # exactly on a threshold / a level: ties between two levels
        S0, y0 = (round(S0) + 0.5) * stc.scale, round(y0) * stc.scale
    ops = [S0 / n] * n
    with jax.enable_x64(True):
        *a, y = (np.asarray(v) for v in P.sum_pwl(*[jnp.asarray(o) for o in ops], jnp.asarray(y0), fn=stc))
        S = sum(a[1:], a[0])
        assert float(y) == float(P.stair_eval(stc, jnp.asarray(S))), (name, S, y)
        delta = float(P.pwl.stair_margin(stc, n, abs(S0), S0 / stc.scale, y0 / stc.scale, jnp.float64))
    ours = sum((ai - oi) ** 2 for ai, oi in zip(a, ops)) + (y - y0) ** 2
    best = stair_oracle(stc, S0, y0, n)
    slack = (2 * delta * math.sqrt(n * best) * stc.scale + (delta * stc.scale) ** 2) / n
    assert ours <= best + slack + 1e-9 * (1 + best), (name, S0, y0, n)
    record(f"sum_pwl {name}", ours, best + slack)


def test_staircase_far_target_and_offset():
    """A target 1e4 levels away (unbounded staircase) and a constant offset, float32 and float64."""
    for dt in (jnp.float32, jnp.float64):
        with jax.enable_x64(dt == jnp.float64):
            a, y = P.sum_activation("sum_pwl", {"fn": "round"}, jnp.asarray([0.2], dt), jnp.asarray([1e4], dt),
                                    offset=jnp.asarray([1.0], dt))
            # n = 1: the best level solves min (k - .5 - 1.2)² + (k - 1e4)²: k ≈ (1.7 + 1e4)/2
            assert abs(float(y[0]) - 5001.0) <= 1.0 and float(a[0] + 1.0) >= float(y[0]) - 0.5 - 1e-3


def test_piece_presets_hardsigmoid_relu6():
    x = jnp.asarray([-9.0, -2.5, 0.0, 1.0, 2.5, 7.0])
    assert np.allclose(P.pwl_eval(P.hardsigmoid(), x), np.clip(0.2 * np.asarray(x) + 0.5, 0, 1))
    assert np.allclose(P.pwl_eval(P.hardsigmoid(0.5, 0.1), x), np.clip(0.5 * np.asarray(x) + 0.1, 0, 1))
    assert np.array_equal(P.pwl_eval("relu6", x), np.clip(np.asarray(x), 0, 6))
    a, y = P.sum_activation("sum_pwl", {"fn": "hardsigmoid", "alpha": 0.2, "beta": 0.5},
                            jnp.asarray([0.0]), jnp.asarray([2.0]), offset=jnp.asarray([1.0]))
    # target above the range: the sum rises to the top of the ramp, (1-0.5)/0.2 = 2.5, at most
    assert float(y[0]) <= 1.0 and 0 < float(a[0] + 1.0) <= 2.5 + 1e-6


def test_stair_eval_matches_onnx_semantics():
    x = jnp.asarray([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.6])
    assert np.array_equal(P.stair_eval(P.staircase("round"), x), np.round(np.asarray(x)))  # half to even
    fq = P.fake_quant(0.5, 10, 0, 255)
    ref = 0.5 * (np.clip(np.round(np.asarray(x) / 0.5) + 10, 0, 255) - 10)
    assert np.allclose(P.stair_eval(fq, x), ref)


# -- sign with a margin (the "sign" preset): a closed subset of the graph itself ----------------------

def sign_margin_oracle(m, S0, y0, n):
    """Least (S-S0)²/n + (sign(S)-y0)² over S = 0 or |S| >= m: dense grid plus the ends ±m and 0."""
    R = math.sqrt(n) * (abs(S0) + abs(y0) + 2.0)  # (0, 0) costs less than that
    grid = np.concatenate([S0 + np.linspace(-R, R, 200001), [-m, m, 0.0]])
    grid = grid[(np.abs(grid) >= m) | (grid == 0)]
    return float(np.min((grid - S0) ** 2 / n + (np.sign(grid) - y0) ** 2))


@settings(**SETTINGS)
@given(st.sampled_from([None, 0.2, 1.0]), st.floats(-3, 3), st.floats(-3, 3), st.integers(1, 4), st.booleans())
def test_sign_margin_oracle(margin, S0, y0, n, tie):
    """Feasible on the exact graph (y = sign(S), |S| >= margin unless S = 0) and as close as the oracle."""
    fn, m = ("sign", P.pwl.SIGN_MARGIN) if margin is None else (P.sign(margin), margin)
    if tie:  # the flip's tie line y0 = -m S0/n and the zero point's tie y0 = (1 + m²/n)/2 at S0 = 0
        S0, y0 = (S0, -m * S0 / n) if S0 > 0 else (0.0, (1 + m * m / n) / 2)
    ops = [S0 / n] * n
    with jax.enable_x64(True):
        *a, y = (float(v) for v in P.sum_pwl(*[jnp.asarray(o) for o in ops], jnp.asarray(y0), fn=fn))
    S = sum(a)
    if y == 0:
        assert abs(S) <= 1e-12 * (1 + abs(S0)), (S0, y0, S)
    else:
        assert y == np.sign(S) and abs(S) >= m * (1 - 1e-12), (S0, y0, S, y)
    ours = sum((ai - oi) ** 2 for ai, oi in zip(a, ops)) + (y - y0) ** 2
    oracle = sign_margin_oracle(m, S0, y0, n)
    assert record(f"sum_pwl sign m={m}", ours, oracle) <= 1e-7, (S0, y0, n, ours, oracle)


def test_sign_margin_versus_closure():
    """Margin 0 (the closure) leaves a flipped unit on the jump, off the graph: (S, y) = (0, -1) while
    sign(0) = 0.  The training preset moves it past the threshold instead; pwl_eval stays exact."""
    S0, y0 = jnp.asarray([0.1]), jnp.asarray([-1.0])
    a, y = P.sum_pwl(S0, y0, fn=P.sign(0.0))
    assert float(a[0]) == 0.0 and float(y[0]) == -1.0 and float(jnp.sign(a[0])) != float(y[0])
    a, y = P.sum_pwl(S0, y0, fn="sign")
    assert float(y[0]) == -1.0 and float(a[0]) == pytest.approx(-P.pwl.SIGN_MARGIN)
    x = jnp.asarray([-2.0, -0.3, 0.0, 0.1, 0.5, 4.0])
    assert np.array_equal(P.pwl_eval("sign", x), np.sign(np.asarray(x)))
    with pytest.raises(ValueError, match="margin"):
        P.sign(-0.1)
