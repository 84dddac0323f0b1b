"""Exact projection onto the graph of y = f(Σ_i a_i) for smooth (and piecewise-quadratic) f.

Only the sum S moves, spread evenly over the operands (a_i = a0_i + (S - S0)/n), so the projection is
the 1-D problem  min_S  φ(S) = (S - S0)²/n + (f(S) - y0)²  (DESIGN.md §8).  φ(S0) = (f(S0) - y0)², so
every better S lies within R = √n·|f(S0) - y0| of S0 (any feasible probe point gives such a bound;
the least of a few is used, which also covers S0 outside f's domain, see proj_smooth_domain); for
monotone f it also lies between S0 and f⁻¹(y0) (clipped to R when y0 is outside f's range).  φ may
have several local minima (tanh or sigmoid with a target outside the range; silu and gelu are not
monotone), so the search is global on that interval:

1. a fixed grid (uniform over the interval, geometric toward S0 and toward both ends, f's active
   region, its kinks), in segments each sorted by construction;
2. the cells where φ' changes sign from ≤ 0 to > 0 bracket the local minima; the most promising
   (least cost at an end) are refined by Newton safeguarded by bisection, a fixed iteration count,
   each refined root retiring every other segment's bracket that holds it (the same minimum is
   bracketed once per segment that covers it, and must not use up the refinements);
3. closed-form stationary points where φ' is a cubic: hardswish's quadratic piece and its linear
   pieces, square (s²), sqrt (s = u²) (proj_smooth_domain.cubic_minima); these are `complete` (with
   the domain's ends and the kinks they hold every local minimum), so they skip steps 1-2;
4. the candidate of least cost wins (grid points and kinks included, so a minimum at a kink of a
   piecewise f is found exactly; S0 itself whenever f(S0) is defined, so a point on the graph never
   moves).

Functions with a restricted domain or a pole (exp, log, sqrt, rsqrt, reciprocal, square, pow) are
described in proj_smooth_domain: each fn is a union of branches, each a Smooth on a search domain
kept off the domain's ends by a rounding margin where needed; the best branch wins.

Everything is elementwise, jit-able, NaN-free at saturation (|S| of 1e3 and beyond) in float32 and
float64.  `offset` is a constant added to the sum (a bias that is data): y = f(offset + Σ a_i).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import erf

from projc.ops.constraint import smooth as forward_smooth

from . import proj_pwl as pwl
from .proj_common import as_floats
from .proj_smooth_domain import DOMAIN_FNS, Fn, Smooth, cubic_minima, power, single

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715

UNIFORM_POINTS = 17        # uniform grid over the search interval
GEOMETRIC_POINTS = 12      # per side: S0 ± R·2^-k, k = 1..12 (near S0), or from each end (monotone f)
ACTIVE_POINTS = 25         # f's active region [-6, 6] (where tanh/sigmoid/gelu bend), and its tails:
TAIL_POINTS = (7.0, 8.0, 9.0, 10.0, 12.0, 14.0, 17.0, 20.0, 25.0, 30.0, 40.0, 50.0, 70.0, 100.0)
# (a far target y0 puts a minimum where |y0|·f'(S) ~ |S - S0|/n: at S ~ ±ln|y0| on an exponential tail)
REFINED_BRACKETS = 2       # distinct sign-change cells refined by safeguarded Newton
NEWTON_ITERS = 40          # per bracket: quadratic near the root; bisection alone shrinks a cell by 2^-40
PROBES = tuple(10.0 ** k for k in range(-4, 5))  # Sc ± these: feasible points bounding the interval
GUARD_ULPS = 8             # rounding margin off a domain's end: GUARD_ULPS·(n+2)·eps·(2·mag + |end|)


def _tanh(s, alpha):
    t = jnp.tanh(s)
    d = 1 - t * t
    return t, d, -2 * t * d


def _sigmoid(s, alpha):
    p = lax.logistic(s)
    d = p * (1 - p)
    return p, d, d * (1 - 2 * p)


def _one_minus_sigmoid(s, alpha):
    """1 - sigmoid(s) = sigmoid(-s): a GRU's (1 - z) gate as a family of its own (passes/unroll.py).
    Decreasing (mono -1): the minimizer lies between S0 and f⁻¹(y0) as for the increasing ones."""
    p, d, _ = _sigmoid(-s, alpha)
    return p, -d, d * (1 - 2 * p)


def _softplus(s, alpha):
    p, d, _ = _sigmoid(s, alpha)
    return jnp.logaddexp(s, 0), p, d


def _silu(s, alpha):
    p, d, _ = _sigmoid(s, alpha)
    sc = jnp.clip(s, -80, 80)  # where p(1-p) underflows to 0 the clip changes nothing
    return s * p, p + sc * d, d * (2 + sc * (1 - 2 * p))


def _gelu(s, alpha):
    cdf = 0.5 * (1 + erf(s / math.sqrt(2.0)))
    sc = jnp.clip(s, -40, 40)
    pdf = jnp.exp(-0.5 * sc * sc) / _SQRT_2PI
    return s * cdf, cdf + sc * pdf, pdf * (2 - sc * sc)


def _gelu_tanh(s, alpha):
    sc = jnp.clip(s, -30, 30)  # tanh(u) is ±1 to any precision beyond; keeps u³ finite
    u = _GELU_C * (sc + _GELU_K * sc ** 3)
    du = _GELU_C * (1 + 3 * _GELU_K * sc * sc)
    d2u = _GELU_C * 6 * _GELU_K * sc
    t = jnp.tanh(u)
    sech2 = 1 - t * t
    f = 0.5 * s * (1 + t)
    d1 = 0.5 * (1 + t) + 0.5 * sc * sech2 * du
    d2 = sech2 * du + 0.5 * sc * (sech2 * d2u - 2 * t * sech2 * du * du)
    return f, d1, d2


def _elu(s, alpha):
    e = alpha * jnp.exp(jnp.minimum(s, 0))
    pos = s > 0
    return jnp.where(pos, s, e - alpha), jnp.where(pos, 1, e), jnp.where(pos, 0, e)


def _hardswish(s, alpha):
    """ONNX HardSwish: x·clip(x/6 + 1/2, 0, 1): 0 below -3, x(x+3)/6 on [-3, 3], x above 3."""
    mid = (s > -3) & (s < 3)
    hi = s >= 3
    f = jnp.where(mid, s * (s + 3) / 6, jnp.where(hi, s, 0))
    return f, jnp.where(mid, (2 * s + 3) / 6, jnp.where(hi, 1, 0)), jnp.where(mid, 1 / 3, 0)


def _inv_elu(y, alpha):
    return jnp.where(y > 0, y, jnp.log1p(jnp.maximum(y / alpha, -1 + 1e-7)))


def _hardswish_exact(S0, y0, n, alpha):
    """Every piece's minimizer: s ≤ -3 (f = 0): min(S0, -3); s ≥ 3 (f = s): max((S0 + n·y0)/(1 + n), 3);
    on [-3, 3], with u = s + 3/2 (f = (u² - 9/4)/6, f' = u/3), 18·φ'/2 = u³ + (18/n - 9/4 - 6y0)u
    - 18(S0 + 3/2)/n: a depressed cubic, whose least and greatest roots (clipped) are the candidates."""
    lo, hi = cubic_minima(18 / n - 2.25 - 6 * y0, -18 * (S0 + 1.5) / n)
    return [jnp.minimum(S0, -3.0), jnp.maximum((S0 + n * y0) / (1 + n), 3.0),
            jnp.clip(lo - 1.5, -3.0, 3.0), jnp.clip(hi - 1.5, -3.0, 3.0)]


def _inv_one_minus_sigmoid(y, alpha):
    return jnp.log1p(-y) - jnp.log(y)


_INF = float("inf")
SMOOTH_FNS: dict[str, Fn] = {
    "tanh": single(Smooth(_tanh, lambda y, a: jnp.arctanh(y), lambda a: -1.0, lambda a: 1.0, mono=1)),
    "sigmoid": single(Smooth(_sigmoid, lambda y, a: jnp.log(y) - jnp.log1p(-y), lambda a: 0.0, lambda a: 1.0,
                             mono=1)),
    "one_minus_sigmoid": single(Smooth(_one_minus_sigmoid, _inv_one_minus_sigmoid, lambda a: 0.0, lambda a: 1.0,
                                       mono=-1)),
    "softplus": single(Smooth(_softplus, lambda y, a: y + jnp.log(-jnp.expm1(-y)), lambda a: 0.0,
                              lambda a: _INF, mono=1)),
    "elu": single(Smooth(_elu, _inv_elu, lambda a: -a, lambda a: _INF, kinks=(0.0,), mono=1)),
    "silu": single(Smooth(_silu)),
    "gelu": single(Smooth(_gelu)),
    "gelu_tanh": single(Smooth(_gelu_tanh)),
    "hardswish": single(Smooth(_hardswish, kinks=(-3.0, 3.0), exact=_hardswish_exact, complete=True)),
    **DOMAIN_FNS,
}


def smooth_eval(fn: str, s, alpha: float = 1.0, exponent: float = 1.0):
    """f(s) elementwise for a sum_smooth fn (pow: `exponent`), as the op's forward computes it."""
    (s,) = as_floats(s)
    _lookup(fn, exponent)
    return forward_smooth(s, fn, alpha, exponent)


def _lookup(fn: str, exponent: float = 1.0) -> Fn:
    if fn not in SMOOTH_FNS:
        raise ValueError(f"unknown smooth activation {fn!r}; known: {sorted(SMOOTH_FNS)}")
    return power(exponent) if fn == "pow" else SMOOTH_FNS[fn]


def _finite_or_inf(x):
    return jnp.where(jnp.isnan(x), jnp.inf, x)


def _search_domain(sm: Smooth, dt, n, mag):
    """[lo, hi] of the search (arrays shaped as mag): the Smooth's bounds, kept GUARD_ULPS·(n+2)·eps·
    (2·mag + |end|) inside where the sum must not round past an end: lo when `guard`, and a finite
    hi always (past it f overflows: exp of a sum of float32 operands ~1e30 stays far below 88)."""
    lo, hi = sm.bounds(dt) if sm.bounds is not None else (-_INF, _INF)
    unit = GUARD_ULPS * (n + 2) * float(jnp.finfo(dt).eps)
    if sm.guard:
        lo = lo + unit * (2 * mag + abs(lo))
    if math.isfinite(hi):
        hi = hi - unit * (2 * mag + abs(hi))
    lo = jnp.asarray(lo, dt) + jnp.zeros_like(mag)
    # operands too large for the dtype to resolve [lo, hi] (float32 at ~1e30): keep the end that
    # avoids NaN (lo: a sum below a domain's end), let f overflow rather
    return lo, jnp.maximum(jnp.asarray(hi, dt) + jnp.zeros_like(mag), lo)


def _interval(sm: Smooth, S0, y0, Sc, fSc, lo, hi, n, alpha):
    """[L, U] holding every S of the search domain [lo, hi] at least as good as the best probe.

    Sc = clip(S0, lo, hi), D = |Sc - S0|.  A feasible probe P bounds every better S by
    |S - S0|² ≤ E_P + D², E_P = (P - Sc)(P - Sc + 2(Sc - S0)) + n(f(P) - y0)² (= (P - S0)² - D² +
    n(f(P) - y0)², free of cancellation); on the domain's side of S0 that is |S - Sc| ≤ W =
    E/(√(D² + E) + D), E the least E_P.  For S0 inside the domain (D = 0), W = √E ≤ √n|f(S0) - y0|.
    """
    e = lambda x: x[..., None]  # noqa: E731
    steps = jnp.asarray(PROBES, S0.dtype)
    probes = [e(Sc), e(Sc) + steps, e(Sc) - steps]
    T = None
    if sm.mono and sm.inverse is not None and sm.range_lo is not None and sm.range_hi is not None:
        # monotone f: the minimizer lies between Sc and f⁻¹(y0) (past it both terms grow)
        up = (y0 >= fSc) if sm.mono > 0 else (y0 <= fSc)  # a larger S brings f toward y0
        inside = (y0 > sm.range_lo(alpha)) & (y0 < sm.range_hi(alpha))
        T = sm.inverse(jnp.where(inside, y0, fSc), alpha)  # fSc: any value the inverse accepts
        T = jnp.where(inside & jnp.isfinite(T), T, jnp.nan)
        probes.append(e(jnp.where(jnp.isnan(T), Sc, T)))
    P = jnp.clip(jnp.concatenate(probes, -1), e(lo), e(hi))
    dP = P - e(Sc)
    EP = dP * (dP + 2 * e(Sc - S0)) + n * (sm.f(P, alpha)[0] - e(y0)) ** 2
    E = jnp.maximum(jnp.min(_finite_or_inf(EP), axis=-1), 0)
    D = jnp.abs(Sc - S0)
    W = jnp.where(E > 0, E / (jnp.hypot(D, jnp.sqrt(E)) + D), 0)
    # slack for rounding: the best probe (f⁻¹(y0) when the minimum sits next to it) stays inside
    eps = float(jnp.finfo(S0.dtype).eps)
    W = _finite_or_inf(W * (1 + 16 * eps) + 4 * eps * jnp.abs(Sc))
    L, U = jnp.maximum(Sc - W, lo), jnp.minimum(Sc + W, hi)
    if T is None:
        return L, U
    T = jnp.where(jnp.isnan(T), jnp.where(up, U, L), T)
    return (jnp.where(up, Sc, jnp.maximum(L, jnp.minimum(T, Sc))),
            jnp.where(up, jnp.minimum(U, jnp.maximum(T, Sc)), Sc))


_ACTIVE = np.concatenate([-np.asarray(TAIL_POINTS[::-1]), np.linspace(-6.0, 6.0, ACTIVE_POINTS), TAIL_POINTS])


def _grid(sm: Smooth, Sc, L, U, dt):
    """Candidate grid over [L, U]: uniform, geometric (from both ends for monotone f, toward Sc = S0
    otherwise), f's active region and tails, kinks.

    Concatenated segments, each sorted by construction (a sort costs more than all the rest);
    returns (grid, cell) with cell[j] false where points j and j+1 belong to different segments.
    """
    e = lambda x: x[..., None]  # noqa: E731
    u = jnp.linspace(0.0, 1.0, UNIFORM_POINTS, dtype=dt)
    g = jnp.asarray([2.0 ** -k for k in range(1, GEOMETRIC_POINTS + 1)], dt)
    W = e(U) - e(L)
    if sm.mono:  # Sc is an end of [L, U], f⁻¹(y0) often the other: geometric from both ends
        near = [jnp.concatenate([e(L), e(L) + W * g[::-1]], -1),               # from L
                jnp.concatenate([e(U) - W * g, e(U)], -1)]                     # toward U
    else:  # Sc = S0 in the middle: geometric toward it from both sides
        near = [jnp.concatenate([e(Sc) - (e(Sc) - e(L)) * g, e(Sc)], -1),     # increasing toward Sc
                jnp.concatenate([e(Sc), e(Sc) + (e(U) - e(Sc)) * g[::-1]], -1)]
    segments = [e(L) + W * u, *near, jnp.clip(jnp.asarray(_ACTIVE, dt), e(L), e(U))]
    # a kink, both its sides, and geometric points away from it on each side: φ' jumps there (a
    # local maximum when it falls), so each side's sign change must be bracketed on its own
    eps = 64 * float(jnp.finfo(dt).eps)
    for k in sorted(float(k) for k in sm.kinks):
        side = jnp.asarray([k - eps * (1 + abs(k)), k, k + eps * (1 + abs(k))], dt)
        segments.append(jnp.clip(jnp.concatenate([k - (k - e(L)) * g, jnp.broadcast_to(side, Sc.shape + (3,)),
                                                  k + (e(U) - k) * g[::-1]], -1), e(L), e(U)))
    shape = Sc.shape
    grid = jnp.concatenate([jnp.broadcast_to(p, shape + p.shape[-1:]) for p in segments], -1)
    cell = np.concatenate([np.r_[np.ones(p.shape[-1] - 1, bool), False] for p in segments])[:-1]
    return grid, jnp.asarray(cell)


def _refine(sm: Smooth, a, b, S0, y0, n, alpha):
    """A root of φ'/2 = (S-S0)/n + (f-y0)f' in [a, b] with φ'(a) ≤ 0 < φ'(b): Newton, kept inside the
    bracket, with bisection whenever the step leaves it, the curvature is not positive, or the step
    is not at most half the one before (Newton crawls down an exponential's side by ~½ per step;
    bisection halves the bracket, or its log-width where it spans orders of magnitude).  Returns
    the iterate of least cost: once converged, rounding can send the next step back to bisection,
    away from the root."""

    def body(_, st):
        a, b, x, dx_old, best, cbest = st
        f, d1, d2 = sm.f(x, alpha)
        c = _finite_or_inf((x - S0) ** 2 / n + (f - y0) ** 2)
        best, cbest = jnp.where(c < cbest, x, best), jnp.minimum(c, cbest)
        g = (x - S0) / n + (f - y0) * d1
        h = 1 / n + d1 * d1 + (f - y0) * d2
        a = jnp.where(g <= 0, x, a)
        b = jnp.where(g <= 0, b, x)
        dx = g / jnp.where(h > 0, h, 1)
        step = x - dx
        ok = (h > 0) & (step >= a) & (step <= b) & (2 * jnp.abs(dx) <= dx_old)
        # bisection in log scale while the bracket spans orders of magnitude on one side of 0 (a
        # root next to a pole or a domain end, e.g. rsqrt's at 1e-11 in a bracket of width 1e-3)
        wide = (a > 0) & (b > 4 * a) | (b < 0) & (a < 4 * b)
        mid = jnp.where(wide, jnp.sign(b) * jnp.sqrt(jnp.abs(a)) * jnp.sqrt(jnp.abs(b)), 0.5 * (a + b))
        return a, b, jnp.where(ok, step, mid), jnp.where(ok, jnp.abs(dx), 0.5 * (b - a)), best, cbest

    x0 = 0.5 * (a + b)
    st = lax.fori_loop(0, NEWTON_ITERS, body, (a, b, x0, b - a, x0, jnp.full_like(x0, jnp.inf)))
    return st[4]


def _solve_branch(sm: Smooth, S0, y0, n, alpha, mag):
    """(S, φ(S)): the least-cost candidate over the Smooth's search domain (and S0 where defined)."""
    dt = S0.dtype
    e = lambda x: x[..., None]  # noqa: E731
    cost_at = lambda x: (x - S0) ** 2 / n + (sm.f(x, alpha)[0] - y0) ** 2  # noqa: E731
    lo, hi = _search_domain(sm, dt, n, mag)
    Sc = jnp.clip(S0, lo, hi)
    # S0 first: it wins ties, so a point on the graph (or one where every cost overflows) stays put
    fS0 = sm.f(S0, alpha)[0]
    stay = (S0 >= sm.dom_lo) & jnp.isfinite(fS0)
    cands, ccost = [e(S0)], [e(jnp.where(stay, (fS0 - y0) ** 2, jnp.inf))]
    if sm.complete and sm.exact is not None:  # closed forms: every local minimum but the ends and kinks
        ends = [lo, hi] if sm.bounds is not None else []
        for x in ends + [jnp.full_like(S0, k) for k in sm.kinks] + list(sm.exact(S0, y0, n, alpha)):
            x = jnp.clip(jnp.broadcast_to(x, S0.shape), lo, hi)
            cands.append(e(x))
            ccost.append(e(cost_at(x)))
        return _least(cands, ccost, stay, dt)
    fSc = sm.f(Sc, alpha)[0]
    L, U = _interval(sm, S0, y0, Sc, fSc, lo, hi, n, alpha)
    grid, cell = _grid(sm, Sc, L, U, dt)
    f, d1, _ = sm.f(grid, alpha)
    cost = _finite_or_inf((grid - e(S0)) ** 2 / n + (f - e(y0)) ** 2)
    g = (grid - e(S0)) / n + (f - e(y0)) * d1
    brackets = cell & (g[..., :-1] <= 0) & (g[..., 1:] > 0) & (grid[..., 1:] > grid[..., :-1])
    score = jnp.where(brackets, jnp.minimum(cost[..., :-1], cost[..., 1:]), jnp.inf)
    cands.append(grid)
    ccost.append(cost)
    lo_end, hi_end = grid[..., :-1], grid[..., 1:]
    for _ in range(REFINED_BRACKETS):
        # the least score; of equal ones (brackets sharing their best end) the narrowest
        best = jnp.min(score, axis=-1, keepdims=True)
        j = jnp.argmin(jnp.where(score == best, hi_end - lo_end, jnp.inf), axis=-1)[..., None]
        a = jnp.take_along_axis(grid, j, -1)[..., 0]
        b = jnp.take_along_axis(grid, j + 1, -1)[..., 0]
        x = jnp.where(best[..., 0] < jnp.inf, _refine(sm, a, b, S0, y0, n, alpha), Sc)
        cands.append(e(x))
        ccost.append(e(cost_at(x)))
        # retire every bracket around this root (the same minimum, bracketed by other segments)
        score = jnp.where((lo_end <= e(x)) & (e(x) <= hi_end), jnp.inf, score)
    for x in sm.exact(S0, y0, n, alpha) if sm.exact is not None else ():
        x = jnp.clip(jnp.broadcast_to(x, S0.shape), lo, hi)
        cands.append(e(x))
        ccost.append(e(cost_at(x)))
    return _least(cands, ccost, stay, dt)


def _least(cands, ccost, stay, dt):
    """The candidate of least cost (the first of equal ones); an overflowed cost (float32,
    |S - S0| ~ 1e30) still beats S0 where f(S0) is undefined."""
    big = jnp.finfo(dt).max
    ccost[0] = jnp.where(stay[..., None], jnp.minimum(_finite_or_inf(ccost[0]), big), jnp.inf)
    ccost[1:] = [jnp.minimum(_finite_or_inf(c), big) for c in ccost[1:]]
    cands, ccost = jnp.concatenate(cands, -1), jnp.concatenate(ccost, -1)
    k = jnp.argmin(ccost, axis=-1)[..., None]
    return jnp.take_along_axis(cands, k, -1)[..., 0], jnp.take_along_axis(ccost, k, -1)[..., 0]


def search_domains(fn: str, dt, n, mag, exponent: float = 1.0):
    """The closed intervals [lo, hi] of S (one per branch, arrays shaped as mag) that the projection
    searches: the graph it projects onto is f over their union, plus (S0, f(S0)) where defined."""
    out = []
    for sm, sig, _ in _lookup(fn, exponent).branches:
        lo, hi = _search_domain(sm, dt, n, jnp.asarray(mag, dt))
        out.append((lo, hi) if sig > 0 else (-hi, -lo))
    return out


def solve_sum(fn: str, S0, y0, n: int, alpha=1.0, exponent: float = 1.0, mag=None):
    """argmin_S (S - S0)²/n + (f(S) - y0)², elementwise (S0, y0 broadcast arrays of one dtype).

    mag: the operands' magnitude |offset| + Σ|a_i| (default |S0|), which sets the rounding margin
    off a domain's end (proj_smooth_domain).
    """
    spec = _lookup(fn, exponent)
    dt = S0.dtype
    alpha = jnp.asarray(alpha, dt)
    mag = jnp.abs(S0) if mag is None else mag
    (sm, sig, tau), *others = spec.branches
    S, c = _solve_branch(sm, sig * S0, tau * y0, n, alpha, mag)
    S = sig * S
    for sm, sig, tau in others:  # the first of equal costs wins
        Sb, cb = _solve_branch(sm, sig * S0, tau * y0, n, alpha, mag)
        take = cb < c
        S, c = jnp.where(take, sig * Sb, S), jnp.where(take, cb, c)
    return S


# compiled once per (fn, n, exponent, shape, dtype): eager calls (tests, scripts) would otherwise
# retrace the search's loops every time; inside a jitted update it is inlined
_solve_jit = jax.jit(solve_sum, static_argnames=("fn", "n", "exponent"))


def sum_smooth(*args, fn: str = "tanh", alpha: float = 1.0, offset=0.0, exponent: float = 1.0):
    """Project onto {(a_1..a_n, y): y = f(offset + Σ a_i)}; returns (a_1', ..., a_n', y').

    fn: tanh, sigmoid, one_minus_sigmoid, softplus, silu, gelu (erf form), gelu_tanh, elu (alpha),
    hardswish, exp, log, sqrt, rsqrt, reciprocal, square, pow (a constant `exponent`).
    The operands move by the same amount; y' = f(offset + Σ a_i') exactly, and that sum lies in f's
    domain (proj_smooth_domain).
    """
    if len(args) < 2:
        raise TypeError("sum_smooth(*operands, target, fn=...) needs at least one operand and a target")
    *ops, y0, off = as_floats(*args, offset)
    shape = jnp.broadcast_shapes(*(x.shape for x in ops), y0.shape, off.shape)
    ops = [jnp.broadcast_to(x, shape) for x in ops]
    y0 = jnp.broadcast_to(y0, shape)
    n = len(ops)
    S0 = off + sum(ops[1:], ops[0])
    mag = jnp.abs(off) + sum((jnp.abs(x) for x in ops[1:]), jnp.abs(ops[0]))
    S = _solve_jit(fn, S0, y0, n, alpha, exponent, mag)
    shift = (S - S0) / n
    new = [x + shift for x in ops]
    return (*new, forward_smooth(off + sum(new[1:], new[0]), fn, alpha, exponent))


# ------------------------------------------------------------------ the backend's entry point
# sum_pwl fns added with sum_smooth (issue 11); the older ones keep the backend's own path.
ACTIVATION_PWL_FNS = ("hardsigmoid", "relu6", "round", "floor", "ceil", "fake_quant")


def handles(kind: str, params: dict) -> bool:
    """Does `sum_activation` project this family (sum_smooth, or sum_pwl with a new fn)?"""
    return kind == "sum_smooth" or (kind == "sum_pwl" and params.get("fn") in ACTIVATION_PWL_FNS)


def pwl_fn(params: dict):
    """The Pieces table or Staircase of a sum_pwl op's fn (ACTIVATION_PWL_FNS) and its params."""
    fn = params["fn"]
    if fn == "hardsigmoid":
        return pwl.hardsigmoid(params.get("alpha", 0.2), params.get("beta", 0.5))
    if fn == "fake_quant":
        return pwl.fake_quant(params["scale"], params.get("zero_point", 0.0),
                              params.get("qmin", -math.inf), params.get("qmax", math.inf))
    return pwl.resolve(fn)


def sum_activation(kind: str, params: dict, *args, offset=0.0, staircase: str = "exact"):
    """Project a sum_smooth / sum_pwl family given its IR params: (*free operands, target) in,
    (*free operands', y') out, with `offset` the sum of its constant operands (never moved).
    ``staircase="ramp"``: a staircase bounded on a side projects onto its ramp (pwl.stair_ramp)."""
    if kind == "sum_smooth":
        return sum_smooth(*args, fn=params["fn"], alpha=params.get("alpha", 1.0), offset=offset,
                          exponent=params.get("exponent", 1.0))
    fn = pwl_fn(params)
    if isinstance(fn, pwl.Staircase):
        ramp = pwl.stair_ramp(fn) if staircase == "ramp" else None
        if ramp is None:
            return pwl.sum_staircase(*args, fn=fn, offset=offset)
        fn = ramp
    # a piece table: fold the constant into the first operand (the sum and n are unchanged)
    first, *rest = args
    res = pwl.sum_pwl(first + offset, *rest, fn=fn)
    return (res[0] - offset, *res[1:])
