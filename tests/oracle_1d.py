"""A float64 brute-force oracle for the 1-D problems of sum_smooth / sum_pwl, and the shared harness
of tests/test_projections_exact.py and tests/test_projections_domain.py (a test helper).

minimize (S - S0)²/n + (f(S) - y0)² over S in a union of closed intervals, f given as a numpy-in,
numpy-out callable (the tests pass the op's forward, projc.ops.constraint.smooth), for a batch of
points at once.  It shares nothing with the projection's search but f and the intervals:

1. a bound: the least cost over a coarse set of feasible points (S0 clipped into each interval,
   S0 ± 10^k, each finite end + and - 10^k) gives R with every better S within R of S0;
2. a fine grid on [S0 - R, S0 + R] ∩ interval: uniform, log-spaced from both ends and around S0;
3. golden-section refinement around the best few local minima of the grid.
"""
from __future__ import annotations

import math
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

from projc.backends.jax import proj_smooth as PS
from projc.backends.jax import projections as P
from projc.backends.jax.families import pwl_preset
from projc.ops import constraint as C

_EXPS = np.arange(-16.0, 8.01, 0.25)          # 10^k offsets of the coarse probes
_LOGS = 10.0 ** -np.arange(0.5, 16.01, 0.125)  # fractions of an interval, log-spaced


def smooth_forward(fn: str, alpha: float = 1.0, exponent: float = 1.0):
    """f(s) in float64 as the op's forward computes it (NaN outside its domain)."""
    with jax.enable_x64(True):
        jf = jax.jit(lambda s: C.smooth(s, fn, alpha, exponent))

    def f(s):
        with jax.enable_x64(True):
            return np.asarray(jf(jnp.asarray(s, jnp.float64)))
    return f


def _cost(f, S, S0, y0, n):
    with np.errstate(over="ignore", invalid="ignore"):
        c = (S - S0[:, None]) ** 2 / n[:, None] + (f(S) - y0[:, None]) ** 2
    return np.where(np.isnan(c), np.inf, c)


def _golden(f, a, b, S0, y0, n, iters=90):
    """Golden-section minimization on [a, b] per row (unimodal near a grid-local minimum)."""
    r = (math.sqrt(5) - 1) / 2
    a, b = a[:, None], b[:, None]
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = _cost(f, c, S0, y0, n), _cost(f, d, S0, y0, n)
    for _ in range(iters):
        left = fc <= fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c2, d2 = b - r * (b - a), a + r * (b - a)
        c, d = np.where(left, c2, d), np.where(left, c, d2)
        new = _cost(f, np.where(left, c, d), S0, y0, n)
        fc, fd = np.where(left, new, fd), np.where(left, fc, new)
    return np.minimum(fc, fd)[:, 0], np.where(fc <= fd, c, d)[:, 0]


def oracle(f, S0, y0, n, intervals, stay=None, uniform=8001, refine=6):
    """(least cost, its S) per point; `intervals` a list of (lo, hi) arrays, `stay` a boolean mask of
    points where S0 itself is feasible (f(S0) defined)."""
    S0, y0, n = (np.asarray(v, np.float64) for v in (S0, y0, n))
    M = S0.shape[0]
    best = np.full(M, np.inf)
    bestS = S0.copy()
    if stay is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            c0 = np.where(stay, (f(S0[:, None])[:, 0] - y0) ** 2, np.inf)
        best = np.where(np.isnan(c0), np.inf, c0)
    ivs = [(np.broadcast_to(np.asarray(lo, np.float64), (M,)), np.broadcast_to(np.asarray(hi, np.float64), (M,)))
           for lo, hi in intervals]
    offs = np.concatenate([-(10.0 ** _EXPS), [0.0], 10.0 ** _EXPS])
    for lo, hi in ivs:  # 1. the bound
        e = lambda x: x[:, None]  # noqa: E731
        pts = [e(S0) + offs]
        pts += [e(np.where(np.isfinite(lo), lo, S0)) + np.abs(offs)]
        pts += [e(np.where(np.isfinite(hi), hi, S0)) - np.abs(offs)]
        P = np.clip(np.concatenate(pts, 1), e(lo), e(hi))
        c = _cost(f, P, S0, y0, n)
        k = np.argmin(c, 1)
        take = c[np.arange(M), k] < best
        best, bestS = np.where(take, c[np.arange(M), k], best), np.where(take, P[np.arange(M), k], bestS)
    R = np.sqrt(n * best) * (1 + 1e-9) + 1e-300
    for lo, hi in ivs:  # 2. the fine grid, 3. refinement
        a, b = np.maximum(S0 - R, lo), np.minimum(S0 + R, hi)
        ok = a <= b
        a, b = np.where(ok, a, lo), np.where(ok, b, lo)
        with np.errstate(invalid="ignore"):  # inf - inf where a branch is out of reach (masked by ok)
            w = (b - a)[:, None]
        s0 = np.clip(S0, a, b)[:, None]
        G = np.concatenate([a[:, None] + w * np.linspace(0, 1, uniform), a[:, None] + w * _LOGS,
                            b[:, None] - w * _LOGS, np.clip(s0 + w * _LOGS, a[:, None], b[:, None]),
                            np.clip(s0 - w * _LOGS, a[:, None], b[:, None])], 1)
        G = np.sort(G, 1)
        c = _cost(f, G, S0, y0, n)
        c[~ok] = np.inf
        k = np.argmin(c, 1)
        take = c[np.arange(M), k] < best
        best, bestS = np.where(take, c[np.arange(M), k], best), np.where(take, G[np.arange(M), k], bestS)
        # grid-local minima, the `refine` best
        loc = np.full(c.shape, np.inf)
        interior = (c[:, 1:-1] <= c[:, :-2]) & (c[:, 1:-1] <= c[:, 2:])
        loc[:, 1:-1] = np.where(interior, c[:, 1:-1], np.inf)
        loc[:, 0], loc[:, -1] = c[:, 0], c[:, -1]
        for j in np.argsort(loc, 1)[:, :refine].T:
            lo_j = G[np.arange(M), np.maximum(j - 1, 0)]
            hi_j = G[np.arange(M), np.minimum(j + 1, G.shape[1] - 1)]
            cj, Sj = _golden(f, lo_j, hi_j, S0, y0, n)
            cj = np.where(ok & np.isfinite(loc[np.arange(M), j]), cj, np.inf)
            take = cj < best
            best, bestS = np.where(take, cj, best), np.where(take, Sj, bestS)
    return best, bestS


# ------------------------------------------------------------------------------ shared harness
EXACT = ("sign", "round", "floor", "ceil", "fake_quant")  # y is a level: equal to the forward's, not close


def project(kind, params, ops, y0, offset):
    """The family's projection as the backend calls it (families._project_activation / _sum_pwl)."""
    if P.activation_handles(kind, params):
        return P.sum_activation(kind, params, *ops, y0, offset=offset)
    table = pwl_preset(params)
    c = offset[..., None]
    lo, hi, sl, ic = (jnp.asarray(f, offset.dtype) for f in table)
    table = P.Pieces(lo - c, hi - c, jnp.broadcast_to(sl, c.shape[:-1] + sl.shape), ic + sl * c)
    return P.sum_pwl(*ops, y0, fn=table)


def cases(rng, B, n, dt, staircase=False, extreme=False):
    """Operands and targets: ordinary, large (|S| ~ 1e3), tiny, on a staircase's ties and levels;
    `extreme`: a quarter of the rows at |a| ~ 1e30 (float32's edge; their mask comes third) or
    targets ±1e6."""
    scale = 10.0 ** rng.uniform(-2, 3, (B, 1)) * (rng.random((B, 1)) < 0.9) + 1e-9 * rng.random((B, 1))
    ops = rng.normal(size=(B, n)) * scale
    y0 = rng.normal(size=B) * 10.0 ** rng.uniform(-2, 3, B)
    if staircase:  # sums exactly on a jump, targets exactly on a level
        tie = rng.random(B) < 0.4
        S = np.round(rng.normal(size=B) * 5) + rng.choice([0.5, 0.0, 0.25], B)
        ops[tie] = (S[tie] / n)[:, None] * np.ones(n)
        y0[tie] = np.round(y0[tie])
    far = np.zeros(B, bool)
    if extreme:
        far = rng.random(B) < 0.25
        ops[far] *= 1e30 / scale[far]
        y0[rng.random(B) < 0.25] = rng.choice([-1e6, 1e6])
    return [jnp.asarray(ops[:, i], dt) for i in range(n)], jnp.asarray(y0, dt), far


def rounding_allowance(fwd, params, S, delta):
    """How far f can move when its sum moves by up to delta (the rounding of the spread and of a
    different summation order): the larger finite one-sided float64 change of the forward over delta
    (kinks count; past a domain's end the other side)."""
    with jax.enable_x64(True):
        S, delta = jnp.asarray(S, jnp.float64), jnp.asarray(delta, jnp.float64)
        f0 = fwd(S, **params)
        d = [jnp.abs(fwd(S + delta, **params) - f0), jnp.abs(f0 - fwd(S - delta, **params))]
        return np.asarray(jnp.maximum(*(jnp.where(jnp.isnan(x), 0.0, x) for x in d)))


def check_feasible(kind, plist, dt, n, seed, extreme=False, extra=None):
    """For each params dict in plist (one jit for all): y against the forward of the returned
    operands, summed in the forward's order with a constant operand first and last.  The
    discontinuous fns must match exactly; a continuous f may differ by 1e-5 relative plus its change
    over the rounding of the spread and of two summation orders, ~(n+2)·eps·Σ|a|."""
    rng = np.random.default_rng(seed)
    fwd = C.sum_pwl if kind == "sum_pwl" else C.sum_smooth
    eps = float(jnp.finfo(dt).eps)
    stair = any(p["fn"] in EXACT for p in plist)
    ops, y0, far = cases(rng, 256, n, dt, staircase=stair, extreme=extreme)
    const = jnp.asarray(rng.normal(size=256) * 3 * (rng.random(256) < 0.7), dt)
    if extra is not None:  # rows (S0, y0, far) appended: the operands S0/n each, no constant
        S0x, y0x, farx = (np.asarray(v) for v in extra)
        ops = [jnp.concatenate([x, jnp.asarray(S0x / n, dt)]) for x in ops]
        y0, const = jnp.concatenate([y0, jnp.asarray(y0x, dt)]), jnp.concatenate([const, jnp.zeros(len(S0x), dt)])
        far = np.r_[far, farx]
    outs = jax.jit(lambda c, t, *a: [project(kind, p, list(a), t, c) for p in plist])(const, y0, *ops)
    a0 = [np.asarray(x, np.float64) for x in ops]
    t0 = np.asarray(y0, np.float64)
    for params, (*new, y) in zip(plist, outs):
        fn = params["fn"]
        y = np.asarray(y, np.float64)
        # never worse than staying where f(S0) is defined (S0 is a candidate; not for sign, whose
        # margin leaves the graph's points with 0 < |S| < SIGN_MARGIN out on purpose)
        f0 = np.asarray(fwd(const, *ops, **params), np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            stay = np.where(np.isfinite(f0), (f0 - t0) ** 2, np.inf)
            cost = sum((np.asarray(x, np.float64) - x0) ** 2 for x, x0 in zip(new, a0)) + (y - t0) ** 2
        worse = (cost > stay * (1 + 1e-4) + 1e-4 * eps * (1 + t0 ** 2)) & (stay < np.inf)
        assert fn == "sign" or not np.any(worse), (params, n)
        # never NaN; finite unless the operands are too large for f's values in the dtype (square,
        # pow of a float32 sum of operands ~1e30 overflows wherever the rounding puts it)
        assert all(x.dtype == dt for x in new) and not np.any(np.isnan(y)), (params, n)
        assert np.all(np.isfinite(y[~far])), (params, n)
        for operands in ([const] + new, new + [const]):
            ref = np.asarray(fwd(*operands, **params), np.float64)
            assert not np.any(np.isnan(ref)), (params, n)  # the sum is in the domain as the forward adds it
            assert np.all(np.isfinite(ref[~far])), (params, n)
            with np.errstate(invalid="ignore"):
                err = np.where(y == ref, 0, np.abs(y - ref))  # inf == inf: both overflowed
            mag = sum(np.abs(np.asarray(x, np.float64)) for x in operands + ops)  # the spread rounds at |a0|
            S = np.asarray(C.sum_(*operands), np.float64)
            if fn == "sign" and n > 1:  # sign's 0 with a constant: see proj_pwl._onto_point
                err = np.where((y == 0) & (np.abs(S) <= 4 * (n + 2) * eps * mag), 0, err)
            if fn in EXACT:
                assert np.all(err == 0), (params, n, np.max(err))
                continue
            tol = 1e-5 * (1 + np.abs(ref)) + rounding_allowance(fwd, params, S, 4 * (n + 2) * eps * mag)
            assert np.all(err <= tol), (params, n, np.max(err - tol))


@cache
def _solver(fn, alpha, exponent):
    with jax.enable_x64(True):
        return jax.jit(jax.vmap(lambda a, b, c, d: PS.solve_sum(fn, a, b, c, alpha, exponent, d)))


def solve_batch(fn, S0, y0, n, mag, alpha=1.0, exponent=1.0):
    """solve_sum per element (n varies: vmap), float64, one compile per fn."""
    with jax.enable_x64(True):
        return np.asarray(_solver(fn, alpha, exponent)(*(jnp.asarray(v, jnp.float64) for v in (S0, y0, n, mag))))


def oracle_costs(fn, S0, y0, n, mag=None, alpha=1.0, exponent=1.0):
    """(our S, our cost, the oracle's cost, |z0|²) per point, float64.  Ours must be feasible: f(S)
    finite and S in a search domain (or S0 itself, left where it was)."""
    S0, y0, n = (np.asarray(v, np.float64) for v in (S0, y0, n))
    mag = np.abs(S0) if mag is None else np.asarray(mag, np.float64)
    S = solve_batch(fn, S0, y0, n, mag, alpha, exponent)
    f = smooth_forward(fn, alpha, exponent)
    fS, fS0 = f(S), f(S0)
    assert np.all(np.isfinite(fS)), (fn, exponent, S[~np.isfinite(fS)])
    with jax.enable_x64(True):
        ivs = [(np.asarray(a), np.asarray(b))
               for a, b in PS.search_domains(fn, jnp.float64, jnp.asarray(n), jnp.asarray(mag), exponent)]
    inside = np.zeros(S.shape, bool)
    for a, b in ivs:
        inside |= (S >= a) & (S <= b)
    assert np.all(inside | (S == S0)), (fn, exponent, S[~inside])
    best, _ = oracle(f, S0, y0, n, ivs, stay=np.isfinite(fS0))
    with np.errstate(over="ignore"):  # points on the graph next to a pole: y0 ~ 1e300
        return S, (S - S0) ** 2 / n + (fS - y0) ** 2, best, S0 ** 2 / n + y0 ** 2


def random_points(rng, M, far=True):
    """S0 and y0 over many scales (|S0| up to 1e3, targets outside the range, ±1e4), n = 1..6, and
    the operands' magnitude (they may cancel: mag up to 4|S0|)."""
    k = rng.integers(0, 4, M)
    S0 = np.select([k == 0, k == 1, k == 2],
                   [rng.uniform(-8, 8, M), rng.choice([-1, 1], M) * 10 ** rng.uniform(-3, 3, M),
                    rng.choice([-1e3, 1e3, 0.0, 3.0, -3.0], M)], rng.normal(size=M))
    j = rng.integers(0, 4, M)
    y0 = np.select([j == 0, j == 1, j == 2],
                   [rng.uniform(-10, 10, M), rng.choice([-1, 1], M) * 10 ** rng.uniform(-3, 4 if far else 1, M),
                    rng.normal(size=M) * 0.3], rng.uniform(-2, 2, M))
    n = rng.integers(1, 7, M).astype(np.float64)
    mag = np.abs(S0) * (1 + rng.uniform(0, 3, M) * (rng.random(M) < 0.5))
    return S0, y0, n, mag
