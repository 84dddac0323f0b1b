"""The sum_smooth projection of exp, square, sqrt, rsqrt and reciprocal without a grid: the same
global minimizer as proj_smooth.solve_sum, found from where φ' can change sign.

The projection is min_S φ(S) = (S - S0)²/n + (f(S) - y0)² over a branch's search domain (DESIGN.md §8,
proj_smooth, proj_smooth_domain). Its local minima are where g = φ'/2 = (S - S0)/n + (f - y0)f'
crosses zero upward, and g' = 1/n + f'² + (f - y0)f''. For these f the set where g' < 0 is one
interval (b1, b2) (possibly empty) known in closed form or as the two roots of a convex function:

    exp:        g' = 1/n + u(2u - y0), u = e^S: negative for u between (y0 ± √(y0² - 8/n))/4
    s^p (s > 0): g' = 1/n + p(2p-1)s^(2p-2) - p(p-1)y0 s^(p-2), so
      square (p = 2):       1/n + 6s² - 2y0: negative for s² < (2y0 - 1/n)/6
      sqrt (p = 1/2):       1/n + y0 s^(-3/2)/4: negative for s < (-n y0/4)^(2/3) (y0 < 0)
      reciprocal (p = -1):  sign of h(s) = s⁴/n - 2y0 s + 3, convex in s
      rsqrt (p = -1/2):     sign of h(w) = w⁶/n - (3/4)y0 w + 1, w = √s, convex in w

    sigmoid:    g' = 1/n + P(p), p = σ(S), P(p) = p(1-p)(-3p² + 2(1+y0)p - y0): a quartic with the
                four real roots 0, 1, p± = ((1+y0) ± √(1 - y0 + y0²))/3, negative on (0, p-) (when
                y0 > 0) and on (p+, 1) (when y0 < 1); between two roots a quartic with four real
                roots has one critical point, so on each of these pieces g' falls then rises: g
                falls on at most two intervals, found by bisection on the polynomial in p.
                (p+, 1) is the (0, p-) of 1 - y0 mirrored (σ(S) = 1 - σ(-S)).
    tanh:       tanh(S) = 2σ(2S) - 1, so g'_tanh(S) = 16·g'_σ(2S) with y0 -> (1+y0)/2, n -> 16n
    1 - sigmoid: σ(-S), so g' at S is sigmoid's at -S (same y0, n)

g is increasing between the intervals where it falls (and up to the search interval's ends), so each
such piece holds at most one upward crossing, and no local minimum lies inside an interval where g
falls. The candidates are therefore the root of g on
each increasing piece (bracketed, safeguarded Newton: proj_smooth._refine), the pieces' ends (the
search interval's ends included: a minimum at a domain's end) and S0 where f(S0) is defined; the
least cost wins. The search interval, the domains, their rounding margins and the branches (s < 0 by
the symmetry f(-s) = ±f(s)) are proj_smooth's own, so the result is the same point; tests compare
the two on random and adversarial inputs and against the float64 brute-force oracle
(tests/test_projections_fast.py).

Why: the grid search costs ~13 µs per element on the project's CPU, 0.26 s for the exp of one
batch of attention scores [256, 2, 8, 8], every projection step; this path is a few Newton loops.
For the gates of a GRU or LSTM (sigmoid, tanh, 1 - sigmoid: 24 families of [B, 32] per 8-step GRU)
the grid was ~90% of a projection step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from projc.ops.constraint import smooth as forward_smooth

from . import proj_smooth as PS
from .proj_common import as_floats

FAST_FNS = ("exp", "square", "sqrt", "rsqrt", "reciprocal", "sigmoid", "tanh", "one_minus_sigmoid")
CONVEX_NEWTON = 40  # Newton on a convex function from one side: monotone, quadratic at the end


def _convex_roots(h, dh, left, right):
    """The two roots of a convex h by Newton from ``left`` (h > 0, falling) and ``right`` (h > 0,
    rising): each sequence is monotone and stays on its side."""
    def body(_, st):
        a, b = st
        ha, da = h(a), dh(a)
        hb, db = h(b), dh(b)
        a = jnp.where(da < 0, a - ha / jnp.where(da < 0, da, -1), a)
        b = jnp.where(db > 0, b - hb / jnp.where(db > 0, db, 1), b)
        return a, b
    return jax.lax.fori_loop(0, CONVEX_NEWTON, body, (left, right))


CENTER_BISECTIONS = 14   # P's minimum c only splits (0, p-) in two: a rough c serves as well


def _bisect(right_of, a, b, iters: int):
    """[a, b] shrunk around the point where ``right_of(x)`` (true left of it) turns false:
    geometric midpoints while the bracket spans orders of magnitude above 0. ``right_of``, a and
    b may be tuples: several bisections in one loop."""
    def body(_, st):
        out = []
        for (a, b), pred in zip(st, right_of):
            mid = jnp.where((a > 0) & (b > 4 * a), jnp.sqrt(a) * jnp.sqrt(b), 0.5 * (a + b))
            go = pred(mid)
            out.append((jnp.where(go, mid, a), jnp.where(go, b, mid)))
        return tuple(out)
    return jax.lax.fori_loop(0, iters, body, tuple(zip(a, b)))


def _sigmoid_low(y0, n):
    """(S1, S2, falls): where g' < 0 on the sigmoid's lower piece p = σ(S) in (0, p-) (y0 > 0).
    P falls from 0 to its minimum at the root c of P' and rises back to 0 at p-; g' = 1/n + P
    is negative between the two roots of 1/n + P around c, when P(c) < -1/n."""
    iters = jnp.finfo(y0.dtype).nmant + 8
    valid = y0 > 0
    y = jnp.where(valid, y0, 1)
    p_minus = y / ((1 + y) + jnp.sqrt(1 - y + y * y))   # ((1+y) - √(1 - y + y²))/3, no cancellation

    def P(p):
        return p * (1 - p) * (-3 * p * p + 2 * (1 + y) * p - y)

    def dP(p):
        Q = -3 * p * p + 2 * (1 + y) * p - y
        return (1 - 2 * p) * Q + p * (1 - p) * (2 * (1 + y) - 6 * p)

    zero = jnp.zeros_like(y)
    ((c_lo, c_hi),) = _bisect((lambda p: dP(p) < 0,), (zero,), (p_minus,), CENTER_BISECTIONS)
    c = 0.5 * (c_lo + c_hi)
    falls = valid & (1 / n + P(c) < 0)
    # q = 1/n + P falls through 0 on (0, c) and rises through 0 on (c, p-)
    (_, r1), (r2, _) = _bisect((lambda p: 1 / n + P(p) > 0, lambda p: 1 / n + P(p) < 0),
                               (zero, c), (c, p_minus), iters)
    logit = lambda p: jnp.log(p) - jnp.log1p(-p)  # noqa: E731
    one = jnp.full_like(y, 0.5)
    return logit(jnp.where(falls, r1, one)), logit(jnp.where(falls, r2, one)), falls


def _sigmoid_breaks(y0, n):
    """The sigmoid's two intervals, ascending: (0, p-) of y0, and (p+, 1) as (0, p-) of 1 - y0
    mirrored; both solved at once, stacked."""
    s1, s2, falls = _sigmoid_low(jnp.stack([y0, 1 - y0]), n)
    return [(s1[0], s2[0], falls[0]), (-s2[1], -s1[1], falls[1])]


def _breaks(fn: str, S0, y0, n) -> list:
    """[(b1, b2, falls), ...], ascending and disjoint: g may decrease only on these (b1, b2), and
    only where ``falls``."""
    nn = jnp.asarray(n, S0.dtype)
    if fn == "sigmoid":
        return _sigmoid_breaks(y0, nn)
    if fn == "tanh":
        return [(b1 / 2, b2 / 2, f) for b1, b2, f in _sigmoid_breaks((1 + y0) / 2, 16 * nn)]
    if fn == "one_minus_sigmoid":
        return [(-b2, -b1, f) for b1, b2, f in _sigmoid_breaks(y0, nn)[::-1]]
    return [_one_break(fn, S0, y0, nn)]


def _one_break(fn: str, S0, y0, nn):
    """(b1, b2, falls) of the functions whose g falls on at most one interval."""
    if fn == "exp":
        disc = y0 * y0 - 8 / nn
        falls = (y0 > 0) & (disc > 0)
        r = jnp.sqrt(jnp.where(falls, disc, 0))
        lo = (y0 - r) / 4
        return (jnp.log(jnp.where(falls & (lo > 0), lo, 1)), jnp.log(jnp.where(falls, (y0 + r) / 4, 1)), falls)
    if fn == "square":
        q = (2 * y0 - 1 / nn) / 6
        falls = q > 0
        return jnp.zeros_like(S0), jnp.sqrt(jnp.where(falls, q, 0)), falls
    if fn == "sqrt":
        falls = y0 < 0
        return jnp.zeros_like(S0), jnp.where(falls, (-nn * y0 / 4) ** (2 / 3), 0), falls
    if fn == "reciprocal":   # h(s) = s⁴/n - 2 y0 s + 3, minimum at s* = (n y0 / 2)^(1/3)
        yp = jnp.maximum(y0, 0)
        s_star = (nn * yp / 2) ** (1 / 3)
        falls = (y0 > 0) & (3 - 1.5 * yp * s_star < 0)
        k = jnp.where(falls, yp, 1)
        a, b = _convex_roots(lambda s: s ** 4 / nn - 2 * k * s + 3, lambda s: 4 * s ** 3 / nn - 2 * k,
                             jnp.zeros_like(S0), (2 * nn * k) ** (1 / 3) * (1 + 1e-3))
        return a, b, falls
    if fn == "rsqrt":        # h(w) = w⁶/n - ¾ y0 w + 1 (w = √s), minimum at w* = (n y0 / 8)^(1/5)
        yp = jnp.maximum(y0, 0)
        w_star = (nn * yp / 8) ** 0.2
        falls = (y0 > 0) & (1 - 0.625 * yp * w_star < 0)
        k = jnp.where(falls, yp, 1)
        a, b = _convex_roots(lambda w: w ** 6 / nn - 0.75 * k * w + 1, lambda w: 6 * w ** 5 / nn - 0.75 * k,
                             jnp.zeros_like(S0), (0.75 * nn * k) ** 0.2 * (1 + 1e-3))
        return a * a, b * b, falls
    raise ValueError(f"no fast path for {fn!r}")


def _refine(sm, a, b, S0, y0, n, alpha):
    """proj_smooth._refine (the root of g in [a, b], g(a) <= 0 < g(b): Newton kept in the bracket,
    bisection otherwise; the iterate of least cost) as a while loop in which an element stops once
    its Newton step falls below rounding or its bracket collapses (once converged, the next step can
    fail the step-halving test and wander off by bisection), and the loop stops when every element
    has (at most proj_smooth.NEWTON_ITERS iterations)."""
    eps = jnp.finfo(S0.dtype).eps

    def body(st):
        a, b, x, dx_old, best, cbest, fin, it = st
        f, d1, d2 = sm.f(x, alpha)
        c = PS._finite_or_inf((x - S0) ** 2 / n + (f - y0) ** 2)
        best, cbest = jnp.where(c < cbest, x, best), jnp.minimum(c, cbest)
        g = (x - S0) / n + (f - y0) * d1
        h = 1 / n + d1 * d1 + (f - y0) * d2
        a = jnp.where(fin | (g > 0), a, x)
        b = jnp.where(fin | (g <= 0), b, x)
        dx = g / jnp.where(h > 0, h, 1)
        step = x - dx
        ok = (h > 0) & (step >= a) & (step <= b) & (2 * jnp.abs(dx) <= dx_old)
        wide = (a > 0) & (b > 4 * a) | (b < 0) & (a < 4 * b)
        mid = jnp.where(wide, jnp.sign(b) * jnp.sqrt(jnp.abs(a)) * jnp.sqrt(jnp.abs(b)), 0.5 * (a + b))
        small = jnp.abs(dx) <= 2 * eps * jnp.abs(x)
        done = (small | (b - a <= 4 * eps * jnp.maximum(jnp.abs(a), jnp.abs(b))) | (g == 0)
                | ~jnp.isfinite(x))
        x_new = jnp.where(ok, step, mid)
        # a converged element takes its last (sub-rounding) Newton step and then stays
        x = jnp.where(fin, x, jnp.where(done, jnp.where(ok & small, step, x), x_new))
        dx_old = jnp.where(fin | done, dx_old, jnp.where(ok, jnp.abs(dx), 0.5 * (b - a)))
        fin = fin | done
        return a, b, x, dx_old, best, cbest, fin, it + 1

    def cond(st):
        return ~jnp.all(st[6]) & (st[7] < PS.NEWTON_ITERS)

    x0 = 0.5 * (a + b)
    init = (a, b, x0, b - a, x0, jnp.full_like(x0, jnp.inf), jnp.zeros(x0.shape, bool), jnp.asarray(0))
    st = jax.lax.while_loop(cond, body, init)
    # the last iterate too: an element converged at its last step
    f = sm.f(st[2], alpha)[0]
    c = PS._finite_or_inf((st[2] - S0) ** 2 / n + (f - y0) ** 2)
    return jnp.where(c < st[5], st[2], st[4])


def _solve_branch(fn: str, sm, S0, y0, n, mag):
    """(S, φ(S)) on one branch: the candidates of the module docstring, the least cost."""
    alpha = jnp.ones((), S0.dtype)
    lo, hi = PS._search_domain(sm, S0.dtype, n, mag)
    Sc = jnp.clip(S0, lo, hi)
    L, U = PS._interval(sm, S0, y0, Sc, sm.f(Sc, alpha)[0], lo, hi, n, alpha)
    # the intervals where g falls, clipped into [L, U]; one where g does not fall collapses onto
    # the previous end, so the pieces between them stay ascending
    edges, prev = [], L
    for b1, b2, falls in _breaks(fn, S0, y0, n):
        b1 = jnp.where(falls, jnp.clip(b1, prev, U), prev)
        b2 = jnp.where(falls, jnp.clip(b2, b1, U), prev)
        edges += [b1, b2]
        prev = b2

    def cost(x):
        return PS._finite_or_inf((x - S0) ** 2 / n + (sm.f(x, alpha)[0] - y0) ** 2)

    def g(x):
        f, d1, _ = sm.f(x, alpha)
        return (x - S0) / n + (f - y0) * d1

    fS0 = sm.f(S0, alpha)[0]
    stay = (S0 >= sm.dom_lo) & jnp.isfinite(fS0)
    cands = [S0, L, U, *edges]
    costs = [jnp.where(stay, PS._finite_or_inf((fS0 - y0) ** 2), jnp.inf)] + [cost(x) for x in cands[1:]]
    # the increasing pieces [L, b1], [b2, b1'], ..., [b2'', U]: one root each where g crosses zero upward
    ends = [L, *edges, U]
    for k, (a, b) in enumerate(zip(ends[::2], ends[1::2])):
        bracket = (b > a) & (g(a) <= 0) & (g(b) > 0)

        def refine(bracket=bracket, a=a, b=b):
            x = _refine(sm, jnp.where(bracket, a, L), jnp.where(bracket, b, U), S0, y0, n, alpha)
            return jnp.where(bracket, x, L)
        # the pieces after the first exist only where g falls somewhere: mostly nowhere
        x = refine() if k == 0 else jax.lax.cond(jnp.any(bracket), refine, lambda: L)
        cands.append(x)
        costs.append(cost(x))
    big = jnp.finfo(S0.dtype).max
    costs = [costs[0]] + [jnp.minimum(c, big) for c in costs[1:]]
    C = jnp.stack(costs, -1)
    least = jnp.argmin(C, axis=-1)[..., None]
    return (jnp.take_along_axis(jnp.stack(cands, -1), least, -1)[..., 0],
            jnp.take_along_axis(C, least, -1)[..., 0])


def solve_sum(fn: str, S0, y0, n: int, mag=None):
    """argmin_S (S - S0)²/n + (f(S) - y0)² for f in FAST_FNS (elementwise): proj_smooth.solve_sum's.
    Branches on the same half-line (s < 0 by symmetry) are solved together, stacked."""
    spec = PS._lookup(fn)
    mag = jnp.abs(S0) if mag is None else mag
    (sm, _, _), *rest = spec.branches
    assert all(b[0] is sm for b in rest), fn
    sig = jnp.asarray([b[1] for b in spec.branches], S0.dtype).reshape((-1,) + (1,) * S0.ndim)
    tau = jnp.asarray([b[2] for b in spec.branches], S0.dtype).reshape(sig.shape)
    S, c = _solve_branch(fn, sm, sig * S0, tau * y0, n, jnp.broadcast_to(mag, sig.shape[:1] + mag.shape))
    k = jnp.argmin(c, axis=0)
    return jnp.take_along_axis(sig * S, k[None], 0)[0]


_solve_jit = jax.jit(solve_sum, static_argnames=("fn", "n"))


def sum_smooth(*args, fn: str, offset=0.0):
    """proj_smooth.sum_smooth for f in FAST_FNS: (a_1..a_n, target) -> (a_1', ..., a_n', y')."""
    *ops, y0, off = as_floats(*args, offset)
    shape = jnp.broadcast_shapes(*(x.shape for x in ops), y0.shape, off.shape)
    ops = [jnp.broadcast_to(x, shape) for x in ops]
    y0 = jnp.broadcast_to(y0, shape)
    n = len(ops)
    S0 = off + sum(ops[1:], ops[0])
    mag = jnp.abs(off) + sum((jnp.abs(x) for x in ops[1:]), jnp.abs(ops[0]))
    S = _solve_jit(fn, S0, y0, n, mag)
    shift = (S - S0) / n
    new = [x + shift for x in ops]
    return (*new, forward_smooth(off + sum(new[1:], new[0]), fn))


__all__ = ["FAST_FNS", "solve_sum", "sum_smooth"]
