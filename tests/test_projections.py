"""Projection operator library: feasibility, optimality against brute-force oracles, idempotence,
finiteness, jit/vmap agreement, float32 and float64.

Oracle tests run in float64 and record the worst relative optimality gap per operator in GAPS
(printed at the end of the module; run with `-s` to see it).  The gap of a returned point z against
an oracle point z' (both feasible) is (|z - z0|² - |z' - z0|²) / (|z' - z0|² + 1e-12 (1 + |z0|²));
positive means the oracle found a closer point.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize

from projc.backends.jax import projections as P

GAPS: dict[str, float] = {}
GAP_TOL = 1e-6
FEAS_TOL = 1e-5
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)


@pytest.fixture(scope="module", autouse=True)
def _report_gaps():
    yield
    if GAPS:
        print("\nworst oracle gap per operator (relative, float64; <= 0 means none closer):")
        for k in sorted(GAPS):
            print(f"  {k:28s} {GAPS[k]: .3e}")


def record_gap(name: str, ours: float, oracle: float, z0_sq: float) -> float:
    gap = (ours - oracle) / (oracle + 1e-12 * (1.0 + z0_sq))
    GAPS[name] = max(GAPS.get(name, -np.inf), gap)
    return gap


def x64():
    return jax.enable_x64(True)


def np64(*xs):
    return [np.asarray(x, dtype=np.float64) for x in xs]


# ------------------------------------------------------------------------------------ input cases
MODES = ("normal", "zeros", "ties", "far", "tiny")


@st.composite
def case(draw, modes=MODES):
    seed = draw(st.integers(0, 2**31 - 1))
    scale = 10.0 ** draw(st.floats(-3, 3))
    mode = draw(st.sampled_from(modes))
    return np.random.default_rng(seed), scale, mode


def values(rng, shape, scale, mode):
    """Float64 array of `shape` drawn per adversarial mode."""
    if mode == "zeros":
        x = rng.normal(size=shape) * (rng.random(shape) < 0.3)
    elif mode == "ties":
        x = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif mode == "tiny":
        x = rng.normal(size=shape) * 1e-9
    else:
        x = rng.normal(size=shape)
    return x * scale


def target(rng, shape, scale, mode):
    if mode == "far":
        return rng.choice([-1.0, 1.0], size=shape) * scale * 10.0 ** rng.uniform(1, 3, size=shape)
    return values(rng, shape, scale, mode)


def allclose_rel(x, y, rtol, scale=None):
    x, y = np64(x, y)
    s = np.abs(y) if scale is None else scale
    return np.all(np.abs(x - y) <= rtol * (s + 1e-300) + 1e-300)


# ---------------------------------------------------------------------- affine ops: exact oracle
def affine_projection(z0, coef):
    """Nearest point to z0 (rows) on {z: coef·z = 0}, coef broadcast per row (float64)."""
    r = np.sum(coef * z0, axis=-1, keepdims=True)
    return z0 - coef * r / np.sum(coef * coef, axis=-1, keepdims=True)


def check_affine(name, outs, z0, coef):
    z = np.stack([np.asarray(o, np.float64) for o in outs], axis=-1) if isinstance(outs, tuple) else outs
    zo = affine_projection(z0, coef)
    scale = np.abs(z0).max() + 1e-300
    assert np.all(np.abs(z - zo) <= 1e-9 * scale)
    for zi, zoi, z0i in zip(z.reshape(-1, z.shape[-1]), zo.reshape(-1, z.shape[-1]), z0.reshape(-1, z.shape[-1])):
        record_gap(name, np.sum((zi - z0i) ** 2), np.sum((zoi - z0i) ** 2), np.sum(z0i**2))


@settings(max_examples=40, **SETTINGS)
@given(case(), st.integers(1, 4))
def test_identity_sum_linear_oracle(c, n):
    rng, scale, mode = c
    B = 6
    with x64():
        a, y = values(rng, (B,), scale, mode), target(rng, (B,), scale, mode)
        out = P.identity(a, y)
        check_affine("identity", out, np.stack([a, y], -1), np.array([1.0, -1.0]))

        ops = [values(rng, (B,), scale, mode) for _ in range(n)]
        out = P.sum(*ops, y)
        check_affine("sum", out, np.stack([*ops, y], -1), np.array([1.0] * n + [-1.0]))

        A = values(rng, (B, n), scale, mode)
        out = P.sum_reduce(A, y, axis=-1)
        z = np.concatenate([np.asarray(out[0]), np.asarray(out[1])[:, None]], -1)
        check_affine("sum_reduce", z, np.concatenate([A, y[:, None]], -1), np.array([1.0] * n + [-1.0]))
        outT = P.sum_reduce(A.T, y, axis=0)
        assert np.allclose(np.asarray(outT[0]).T, np.asarray(out[0]), rtol=1e-12, atol=0)

        cdata = values(rng, (B, n), 10.0 ** rng.uniform(-3, 3), "normal")
        w = values(rng, (B, n), scale, mode)
        cc, wn, yn = P.linear(cdata, w, y)
        assert np.array_equal(np.asarray(cc), cdata)
        z = np.concatenate([np.asarray(wn), np.asarray(yn)[:, None]], -1)
        coef = np.concatenate([cdata, -np.ones((B, 1))], -1)
        check_affine("linear", z, np.concatenate([w, y[:, None]], -1), coef)


# ------------------------------------------------------------------------------------------- max
def max_oracle(a0, y0):
    """Exact projection onto {y = max a} by enumerating the set of entries equal to the max."""
    n = a0.size
    best = np.inf
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            S = list(S)
            m = (a0[S].sum() + y0) / (k + 1)
            rest = np.delete(a0, S)
            if rest.size and rest.max() > m:
                continue
            best = min(best, np.sum((a0[S] - m) ** 2) + (y0 - m) ** 2)
    return best


MAX = jax.jit(P.max, static_argnames=("axis",))


@settings(max_examples=40, **SETTINGS)
@given(case(), st.integers(1, 6))
def test_max_oracle(c, n):
    rng, scale, mode = c
    B = 4
    with x64():
        a0 = values(rng, (B, n), scale, mode)
        y0 = target(rng, (B,), scale, mode)
        a, y = np64(*MAX(a0, y0))
        assert np.array_equal(a.max(-1), y)  # exactly on the graph
        for i in range(B):
            ours = np.sum((a[i] - a0[i]) ** 2) + (y[i] - y0[i]) ** 2
            gap = record_gap("max", ours, max_oracle(a0[i], y0[i]), np.sum(a0[i] ** 2) + y0[i] ** 2)
            assert gap <= GAP_TOL
        # axis handling: same result along axis 0
        aT, yT = np64(*MAX(a0.T, y0, axis=0))
        assert np.array_equal(aT.T, a) and np.array_equal(yT, y)


def test_max_ties_and_raise():
    with x64():
        a, y = P.max(jnp.array([2.0, 2.0, 1.0]), 5.0)  # raise one of the tied maxima
        assert np.allclose(np.sort(np.asarray(a)), [1.0, 2.0, 3.5]) and float(y) == 3.5
        a, y = P.max(jnp.array([2.0, 2.0, 2.0]), 2.0)  # already feasible
        assert np.array_equal(np.asarray(a), [2.0, 2.0, 2.0]) and float(y) == 2.0
        a, y = P.max(jnp.array([3.0, 3.0, 0.0]), -3.0)  # both tied maxima come down together
        assert np.allclose(np.asarray(a), [1.0, 1.0, 0.0]) and float(y) == 1.0


def test_max_newton_matches_sort_and_falls_back():
    """The Newton level search equals the sort-based one; after its cap it reports non-convergence
    (P.max then uses the sort)."""
    from projc.backends.jax.projections import _max_level_newton, _max_level_sort

    rng = np.random.default_rng(3)
    newton = jax.jit(_max_level_newton, static_argnums=3)
    sort = jax.jit(_max_level_sort)
    ys = np.array([-1e4, -3.0, 0.0, 2.0, 1e4])
    with x64():
        for n in (1, 2, 5, 64, 1000):
            rows = [rng.normal(size=n), -np.exp(np.arange(n) * 0.5), -np.arange(n) ** 2.0, np.zeros(n),
                    rng.integers(0, 3, n).astype(float)]
            a = jnp.asarray(np.repeat(np.stack(rows), len(ys), axis=0))
            y0 = jnp.asarray(np.tile(ys, len(rows)))
            top = jnp.arange(n) == jnp.argmax(a, -1)[:, None]
            m, unconv = newton(a, y0, top, n + 2)
            assert not bool(unconv)
            assert np.allclose(np.asarray(m), np.asarray(sort(a, y0)), rtol=1e-12, atol=1e-12)
        a = jnp.asarray(-np.exp(np.arange(64) * 0.5)[None])
        _, unconv = _max_level_newton(a, jnp.array([-1e3]), jnp.arange(64)[None] == 0, 2)
        assert bool(unconv)


def test_max_large_n_no_quadratic_memory():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 100_000)), jnp.float32)
    a, y = jax.jit(P.max)(x, jnp.full((2,), 10.0))
    assert a.shape == x.shape and np.all(np.isfinite(np.asarray(a)))
    assert np.array_equal(np.asarray(a).max(-1), np.asarray(y))


# ---------------------------------------------------------------------------------------- sum_pwl
def random_table(rng, continuous):
    k = int(rng.integers(1, 5))
    bps = np.sort(rng.normal(size=k - 1) * 2)
    lo = np.concatenate([[-np.inf], bps])
    hi = np.concatenate([bps, [np.inf]])
    s = rng.normal(size=k) * rng.choice([0.0, 1.0, 3.0], size=k)
    c = rng.normal(size=k)
    if continuous:
        for i in range(1, k):
            c[i] = s[i - 1] * bps[i - 1] + c[i - 1] - s[i] * bps[i - 1]
    return P.Pieces(lo, hi, s, c)


FNS = {
    "relu": "relu",
    "leaky_relu": P.leaky_relu(0.1),
    "clip": P.clip(-1.0, 2.0),
    "abs": P.abs,
    "sign": "sign",
    "step": P.step(),
    "quantize": P.quantize(4, 0.5),
    "identity": P.identity_fn,
    "table": [(-np.inf, -1.0, 0.5, 0.0), (-1.0, 1.0, -2.0, 1.0), (1.0, np.inf, 0.0, 4.0)],
}


def pwl_best_y_cost(tab, S, y0):
    """min over closed pieces containing S of (φ_k(S) - y0)² (inf if none)."""
    S = np.asarray(S, np.float64)[..., None]
    inside = (S >= tab.lo) & (S <= tab.hi)
    v = tab.slope * S + tab.intercept
    return np.where(inside, (v - y0) ** 2, np.inf).min(-1)


def pwl_oracle(tab, S0, y0, n):
    """Global min of (S-S0)²/n + (φ(S)-y0)²: dense grid + endpoints + bounded 1-D minimization."""
    # any better S has (S-S0)²/n below the cost of some feasible point: the nearest point of each piece
    # in S (S0 itself when a piece covers it; tables with gaps, e.g. sign's margin, need the clip)
    Sk = np.clip(S0, tab.lo, tab.hi)
    R = np.sqrt(n * np.min((Sk - S0) ** 2 / n + (tab.slope * Sk + tab.intercept - y0) ** 2)) * 1.01 + 1e-300
    grid = np.concatenate([S0 + np.linspace(-R, R, 4001), tab.lo[np.isfinite(tab.lo)], tab.hi[np.isfinite(tab.hi)]])
    best = np.min((grid - S0) ** 2 / n + pwl_best_y_cost(tab, grid, y0))
    for lo, hi, s, c in zip(*tab):
        lo2, hi2 = max(lo, S0 - R), min(hi, S0 + R)
        if lo2 > hi2:
            continue
        f = lambda S, s=s, c=c: (S - S0) ** 2 / n + (s * S + c - y0) ** 2  # noqa: E731
        if hi2 > lo2:
            r = optimize.minimize_scalar(f, bounds=(lo2, hi2), method="bounded",
                                         options=dict(xatol=1e-14 * (abs(S0) + R)))
            best = min(best, f(r.x))
        best = min(best, f(lo2), f(hi2))
    return best


def pwl_feasible(tab, S, y, tol, mag=None):
    """(S, y) on a closed piece up to tol relative to mag (Σ|a_i|, default |S|) + |y|."""
    S = np.asarray(S, np.float64)[..., None]
    y = np.asarray(y, np.float64)[..., None]
    mag = np.abs(S) if mag is None else np.asarray(mag, np.float64)[..., None]
    scale = mag + np.abs(y) + 1e-30
    inside = (S >= tab.lo - tol * scale) & (S <= tab.hi + tol * scale)
    on = np.abs(tab.slope * S + tab.intercept - y) <= tol * scale * (1 + np.abs(tab.slope))
    return np.all(np.any(inside & on, axis=-1))


@settings(max_examples=60, **SETTINGS)
@given(case(), st.integers(1, 4), st.sampled_from(sorted(FNS) + ["random", "random_cont"]))
def test_sum_pwl_oracle(c, n, fname):
    rng, scale, mode = c
    fn = random_table(rng, fname == "random_cont") if fname.startswith("random") else FNS[fname]
    tab = P.pwl.resolve(fn)
    B = 5
    with x64():
        ops = [values(rng, (B,), scale, mode) for _ in range(n)]
        y0 = target(rng, (B,), scale, mode)
        *a, y = np64(*P.sum_pwl(*ops, y0, fn=fn))
        S0, S = np.sum(ops, 0), np.sum(a, 0)
        assert pwl_feasible(tab, S, y, 1e-12, sum(np.abs(ai) for ai in a))
        # only the sum moves, spread evenly
        for ai, oi in zip(a, ops):
            assert np.allclose(ai - oi, (S - S0) / n, rtol=1e-9, atol=1e-12 * (np.abs(S0) + np.abs(S) + 1))
        for i in range(B):
            ours = sum(np.sum((ai[i] - oi[i]) ** 2) for ai, oi in zip(a, ops)) + (y[i] - y0[i]) ** 2
            z0 = sum(oi[i] ** 2 for oi in ops) + y0[i] ** 2
            gap = record_gap("sum_pwl", ours, pwl_oracle(tab, S0[i], y0[i], n), z0)
            assert gap <= GAP_TOL, (fname, S0[i], y0[i], ours)
            # perturb the operands independently (not evenly): never closer
            pert = np.stack([ai[i] for ai in a]) + rng.normal(size=(200, n)) * (
                np.abs(S[i]) + np.sqrt(max(ours, 0)) + 1e-6) * 10.0 ** rng.uniform(-6, 0, (200, 1))
            o = np.stack([oi[i] for oi in ops])
            cost = np.sum((pert - o) ** 2, -1) + pwl_best_y_cost(tab, pert.sum(-1), y0[i])
            if np.isfinite(cost.min()):  # all perturbed sums can fall in a gap of the table (sign's margin)
                record_gap("sum_pwl(perturbed)", ours, cost.min(), z0)
            assert (ours - cost.min()) <= GAP_TOL * (cost.min() + 1e-12 * (1 + z0))


def test_sum_pwl_relu_negative_targets_grid():
    """The reference's failure mode (negative targets): exact on a dense deterministic grid."""
    S0, y0 = np.meshgrid(np.linspace(-3, 3, 25), np.linspace(-3, 3, 25))
    tab = P.pwl.resolve("relu")
    with x64():
        for n in (1, 2, 3):
            ops = [S0 / n] * n
            *a, y = np64(*P.sum_pwl(*ops, y0, fn="relu"))
            ours = sum((ai - oi) ** 2 for ai, oi in zip(a, ops)) + (y - y0) ** 2
            for o, s0, t in zip(ours.ravel(), S0.ravel(), y0.ravel()):
                gap = record_gap("sum_pwl", o, pwl_oracle(tab, s0, t, n), s0 * s0 / n + t * t)
                assert gap <= GAP_TOL


def test_pwl_presets_eval():
    x = jnp.array([-2.0, -0.5, 0.0, 0.25, 0.5, 1.0, 3.0])
    ev = lambda f: np.asarray(P.pwl_eval(f, x))  # noqa: E731
    xn = np.asarray(x)
    assert np.array_equal(ev("relu"), np.maximum(xn, 0))
    assert np.allclose(ev(P.leaky_relu(0.2)), np.where(xn >= 0, xn, 0.2 * xn))
    assert np.array_equal(ev(P.clip(-1, 2)), np.clip(xn, -1, 2))
    assert np.array_equal(ev("abs"), np.abs(xn))
    assert np.array_equal(ev("sign"), np.sign(xn))
    assert np.array_equal(ev("step"), (xn >= 0).astype(np.float32))
    assert np.array_equal(ev("identity"), xn)
    q = P.quantize(3, 0.5, offset=-0.5)  # levels -0.5, 0, 0.5
    assert np.array_equal(ev(q), [-0.5, -0.5, 0.0, 0.5, 0.5, 0.5, 0.5])
    assert np.array_equal(ev(P.clip(None, 0.0)), np.minimum(xn, 0))
    with pytest.raises(ValueError):
        P.pwl.resolve("nope")
    with pytest.raises(ValueError):
        P.pieces([(1.0, 0.0, 1.0, 0.0)])


# ------------------------------------------------------------------------------------- bilinear
def bilinear_point(a0, b0, t):
    a = (a0 + t * b0) / (1 - t * t)
    b = (b0 + t * a0) / (1 - t * t)
    return a, b


def bilinear_oracle(a0, b0, y0, rng, starts=1):
    """Best feasible point from (1) every real stationary point of the quartic in t and (2) BFGS over
    (a, b) from several starts; costs are evaluated at feasible points (y := a·b)."""
    n = a0.size
    cost = lambda a, b: np.sum((a - a0) ** 2) + np.sum((b - b0) ** 2) + (a @ b - y0) ** 2  # noqa: E731
    U, V = 0.5 * np.sum((a0 + b0) ** 2), 0.5 * np.sum((a0 - b0) ** 2)
    # 2 (t - y0)(1-t)²(1+t)² + U (1+t)² - V (1-t)² = 0
    p1 = np.polynomial.Polynomial
    poly = 2 * p1([-y0, 1]) * p1([1, -1]) ** 2 * p1([1, 1]) ** 2 + U * p1([1, 1]) ** 2 - V * p1([1, -1]) ** 2
    best = np.inf
    for r in poly.roots():
        if abs(r.imag) < 1e-6 * (1 + abs(r.real)) and abs(abs(r.real) - 1) > 1e-12:
            best = min(best, cost(*bilinear_point(a0, b0, r.real)))
    f = lambda z: cost(z[:n], z[n:])  # noqa: E731

    def grad(z):
        a, b = z[:n], z[n:]
        r = a @ b - y0
        return np.concatenate([2 * (a - a0) + 2 * r * b, 2 * (b - b0) + 2 * r * a])

    s = np.sqrt(abs(y0)) + np.abs(a0).max() + np.abs(b0).max() + 1e-3
    inits = [np.concatenate([a0, b0]), np.concatenate([b0, a0])] + [rng.normal(size=2 * n) * s for _ in range(starts)]
    for z in inits:
        r = optimize.minimize(f, z, jac=grad, method="BFGS", options=dict(gtol=1e-12 * s * s, maxiter=400))
        best = min(best, r.fun)
    return best


@st.composite
def bilinear_case(draw):
    rng, scale, mode = draw(case(MODES + ("a=b", "a=-b", "pole")))
    n = draw(st.integers(1, 5))
    a0 = values(rng, (n,), scale, mode if mode in MODES else "normal")
    b0 = values(rng, (n,), scale, mode if mode in MODES else "normal")
    y0 = target(rng, (), scale * scale, mode if mode in MODES else "normal")
    if mode == "a=b":
        b0 = a0.copy()
        y0 = -abs(y0) * 10
    elif mode == "a=-b":
        b0 = -a0
        y0 = abs(y0) * 10
    elif mode == "pole":  # targets near the U = 0 / V = 0 threshold values
        b0 = -a0 + values(rng, (n,), scale * 1e-6, "normal")
        y0 = 1 - 0.25 * np.sum((a0 - b0) ** 2) / 4 + rng.normal() * 1e-3
    return rng, a0, b0, float(y0)


@settings(max_examples=50, **SETTINGS)
@given(bilinear_case())
def test_bilinear_oracle(c):
    rng, a0, b0, y0 = c
    with x64():
        a, b, y = np64(*P.bilinear(a0, b0, y0))
        scale = np.linalg.norm(a) * np.linalg.norm(b) + abs(y) + 1e-300
        assert abs(a @ b - y) <= 1e-12 * scale
        ours = np.sum((a - a0) ** 2) + np.sum((b - b0) ** 2) + (y - y0) ** 2
        z0 = np.sum(a0**2) + np.sum(b0**2) + y0**2
        gap = record_gap("bilinear", ours, bilinear_oracle(a0, b0, y0, rng), z0)
        assert gap <= GAP_TOL, (a0, b0, y0)


def test_bilinear_degenerate():
    with x64():
        # a = -b with a large target: optimum has t = 1 and any direction of u; cost 2(y0-1)+1+V/4·..
        for v, y0 in [(np.zeros(3), 10.0), (np.array([1.0, -2.0, 0.5]), 40.0), (np.zeros(2), -10.0)]:
            a, b, y = np64(*P.bilinear(v, -v, y0))
            assert np.all(np.isfinite(a)) and abs(a @ b - y) <= 1e-12 * (abs(y) + 1)
            ours = np.sum((a - v) ** 2) + np.sum((b + v) ** 2) + (y - y0) ** 2
            assert ours <= bilinear_oracle(v, -v, y0, np.random.default_rng(0), starts=6) * (1 + 1e-9) + 1e-12
        t = P.bilinear_root(jnp.array([0.0, 1e8, 0.0]), jnp.array([1.0, 0.0, 0.0]), jnp.array([100.0, 0.0, 0.0]))
        assert np.all(np.isfinite(np.asarray(t))) and np.all(np.abs(np.asarray(t)) < 1)


@settings(max_examples=150, **SETTINGS)
@given(st.floats(-8, 8), st.floats(-8, 8), st.floats(-9, 9), st.sampled_from([-1.0, 1.0]),
       st.sampled_from(["free", "zeroU", "zeroV", "nearpole"]))
def test_bilinear_root_equation(lu, lv, ly, sgn, kind):
    """The root solves g(t) = 0 to rounding (backward error ~ eps) over 16 decades."""
    U, V, y0 = 10.0**lu, 10.0**lv, sgn * 10.0**ly
    if kind == "zeroU":
        U = 0.0
    elif kind == "zeroV":
        V = 0.0
    elif kind == "nearpole":
        y0 = 1 - V / 8 + sgn * 10.0 ** (ly - 6)
    with x64():
        t, am, ap = np64(*P.bilinear_root_ab(U, V, y0))
        g = t + 0.5 * (U / am**2 - V / ap**2) - y0
        T = 1 + abs(y0) + 0.5 * (U / am**2 + V / ap**2)
        tiny = 2 * np.finfo(np.float64).eps ** 2
        floor = (am <= tiny and g < 0) or (ap <= tiny and g > 0)
        assert floor or abs(g) <= 16 * np.finfo(np.float64).eps * T
        assert abs(am - (1 - t)) <= 4e-16 * 2 and abs(ap - (1 + t)) <= 4e-16 * 2


# -------------------------------------------------------------------- generic properties (all ops)
def _mk(rng, scale, mode, shape=(5,), n=4):
    return dict(
        v=lambda s=shape: values(rng, s, scale, mode),
        y=lambda s=shape: target(rng, s, scale, mode),
        vec=lambda: values(rng, shape + (n,), scale, mode),
        yy=lambda: target(rng, shape, scale * scale * n, mode),
    )


def feas_gap(name, args, outs):
    """Max normalized constraint violation of the returned point (float64 numpy)."""
    o = np64(*outs)
    if name == "identity":
        return np.max(np.abs(o[0] - o[1]) / (np.abs(o[0]) + np.abs(o[1]) + 1e-30))
    if name in ("sum2", "sum3"):
        *a, y = o
        return np.max(np.abs(np.sum(a, 0) - y) / (np.sum(np.abs(a), 0) + np.abs(y) + 1e-30))
    if name == "sum_reduce":
        return np.max(np.abs(o[0].sum(-1) - o[1]) / (np.abs(o[0]).sum(-1) + np.abs(o[1]) + 1e-30))
    if name == "linear":
        c, w, y = o
        return np.max(np.abs((c * w).sum(-1) - y) / ((np.abs(c) * np.abs(w)).sum(-1) + np.abs(y) + 1e-30))
    if name == "bilinear":
        a, b, y = o
        return np.max(np.abs((a * b).sum(-1) - y) / ((np.abs(a) * np.abs(b)).sum(-1) + np.abs(y) + 1e-30))
    if name == "max":
        return np.max(np.abs(o[0].max(-1) - o[1]) / (np.abs(o[1]) + 1e-30))
    if name.startswith("pwl_"):
        *a, y = o
        tab = P.pwl.resolve(FNS[name[4:]])
        return 0.0 if pwl_feasible(tab, np.sum(a, 0), y, FEAS_TOL, np.sum(np.abs(a), 0)) else np.inf
    if name == "margin":
        x, lab = o[0], np.asarray(args[1])
        oh = np.eye(x.shape[-1])[lab] > 0
        return 0.0 if np.all(np.where(oh, x >= 1, x <= 0)) else np.inf
    return 0.0  # proximal losses: no constraint set


def op_cases(rng, scale, mode):
    m = _mk(rng, scale, mode)
    lab = rng.integers(0, 4, size=(5,))
    return {
        "identity": (P.identity, (m["v"](), m["y"]()), {}),
        "sum2": (P.sum, (m["v"](), m["v"](), m["y"]()), {}),
        "sum3": (P.sum, (m["v"](), m["v"](), m["v"](), m["y"]()), {}),
        "sum_reduce": (P.sum_reduce, (m["vec"](), m["y"]()), {}),
        "linear": (P.linear, (m["vec"](), m["vec"](), m["yy"]()), {}),
        "bilinear": (P.bilinear, (m["vec"](), m["vec"](), m["yy"]()), {}),
        "max": (P.max, (m["vec"](), m["y"]()), {}),
        "pwl_relu": (P.sum_pwl, (m["v"](), m["v"](), m["y"]()), dict(fn="relu")),
        "pwl_sign": (P.sum_pwl, (m["v"](), m["y"]()), dict(fn="sign")),
        "pwl_quantize": (P.sum_pwl, (m["v"](), m["v"](), m["y"]()), dict(fn=FNS["quantize"])),
        "pwl_table": (P.sum_pwl, (m["v"](), m["y"]()), dict(fn=FNS["table"])),
        "ce_newton": (P.cross_entropy_prox, (m["vec"](), lab), {}),
        "ce_fixed": (P.cross_entropy_prox, (m["vec"](), lab), dict(method="fixed-point")),
        "margin": (P.margin, (m["vec"](), lab), {}),
        "squared_error": (P.squared_error, (m["vec"](), m["vec"]()), dict(lam=2.0)),
    }


OPS = sorted(op_cases(np.random.default_rng(0), 1.0, "normal"))
_JIT: dict = {}


def jitted(name, fn, kw):
    if name not in _JIT:
        _JIT[name] = jax.jit(lambda *a: fn(*a, **kw))
    return _JIT[name]


def as_tuple(o):
    return o if isinstance(o, tuple) else (o,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=12, **SETTINGS)
@given(case())
def test_feasible_finite_both_dtypes(dtype, c):
    rng, scale, mode = c
    cases = op_cases(rng, scale, mode)
    with jax.enable_x64(dtype == "float64"):
        for name in OPS:
            fn, args, kw = cases[name]
            args = [jnp.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a)
                    for a in args]
            outs = as_tuple(jitted(name + dtype, fn, kw)(*args))
            for o in outs:
                assert o.dtype == jnp.dtype(dtype), (name, o.dtype)
                assert np.all(np.isfinite(np.asarray(o))), (name, scale, mode)
            tol = FEAS_TOL if dtype == "float32" else 1e-12
            assert feas_gap(name, args, outs) <= tol, (name, dtype, scale, mode, feas_gap(name, args, outs))


@pytest.mark.parametrize("name", [n for n in OPS if not n.startswith("ce_") and n != "squared_error"])
@settings(max_examples=10, **SETTINGS)
@given(case())
def test_idempotent(name, c):
    rng, scale, mode = c
    fn, args, kw = op_cases(rng, scale, mode)[name]
    with x64():
        first = as_tuple(fn(*args, **kw))
        if name == "margin":
            again = as_tuple(fn(first[0], args[1], **kw))
        else:
            again = as_tuple(fn(*first, **kw))
        for x, y in zip(first, again):
            x, y = np64(x, y)
            assert np.all(np.abs(x - y) <= 1e-12 * (np.abs(x) + 1) * max(1.0, scale)), name


@pytest.mark.parametrize("name", OPS)
def test_jit_vmap_match_eager(name):
    rng = np.random.default_rng(7)
    fn, args, kw = op_cases(rng, 1.0, "normal")[name]
    args = [jnp.asarray(a, jnp.float32) if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a)
            for a in args]
    eager = as_tuple(fn(*args, **kw))
    jit = as_tuple(jax.jit(lambda *a: fn(*a, **kw))(*args))
    vm = as_tuple(jax.vmap(lambda *a: fn(*a, **kw))(*args))
    for e, j, v in zip(eager, jit, vm):
        assert e.shape == j.shape == v.shape
        assert np.allclose(np.asarray(j), np.asarray(e), rtol=2e-5, atol=1e-6), name
        assert np.allclose(np.asarray(v), np.asarray(e), rtol=2e-5, atol=1e-6), name


def test_broadcasting():
    a = jnp.ones((3, 1))
    b = jnp.arange(4.0)
    out = P.sum(a, b, 0.0)
    assert all(o.shape == (3, 4) for o in out)
    c, w, y = P.linear(jnp.ones((3, 5)), jnp.zeros(5), jnp.zeros(3))
    assert w.shape == (3, 5) and y.shape == (3,) and c.shape == (3, 5)
    a, b, y = P.bilinear(jnp.ones((2, 3, 4)), jnp.ones(4), jnp.zeros(3))
    assert a.shape == b.shape == (2, 3, 4) and y.shape == (2, 3)
    a, y = P.max(jnp.ones((2, 7, 3)), jnp.zeros((2, 3)), axis=1)
    assert a.shape == (2, 7, 3) and y.shape == (2, 3)


@pytest.mark.parametrize("fname", sorted(FNS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_pwl_without_point_pieces_skips_the_snap_bit_for_bit(fname, dtype):
    """A table with no one-point piece leaves the exact-sum snap out: the same bits as running it."""
    tab = P.pwl.resolve(FNS[fname])
    rng = np.random.default_rng(3)
    with x64():
        args = [jnp.asarray(rng.normal(size=300) * 10.0 ** rng.uniform(-3, 3, 300), dtype) for _ in range(3)]
        for n in (1, 2):
            ops, y0 = args[:n], args[2]
            skipped = P.sum_pwl(*ops, y0, fn=FNS[fname])
            snapped = P.sum_pwl(*ops, y0, fn=FNS[fname], points=True)
            for a, b in zip(skipped, snapped):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert P.has_point_piece(tab) == bool(np.any(tab.lo == tab.hi))
    assert P.has_point_piece(P.Pieces(*(jnp.asarray(f) for f in tab)))   # traced tables: assume one
