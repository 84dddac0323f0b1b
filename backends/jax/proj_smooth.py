"""Exact projection onto the graph of y = f(Σ_i a_i) for smooth (and piecewise-quadratic) f.

Only the sum S moves, spread evenly over the operands (a_i = a0_i + (S - S0)/n), so the projection is
the 1-D problem  min_S  φ(S) = (S - S0)²/n + (f(S) - y0)²  (DESIGN.md §8).  φ(S0) = (f(S0) - y0)², so
every better S lies within R = √n·|f(S0) - y0| of S0; for non-decreasing f it also lies between S0
and f⁻¹(y0) (clipped to R when y0 is outside f's range).  φ may have several local minima (tanh or
sigmoid with a target outside the range; silu and gelu are not monotone), so the search is global on
that interval:

1. a fixed grid (uniform over the interval, geometric around S0, f's active region, its kinks),
   in segments each sorted by construction;
2. the cells where φ' changes sign from ≤ 0 to > 0 bracket the local minima; the two most promising
   (least cost at an end) are refined by Newton safeguarded by bisection, a fixed iteration count;
3. the candidate of least cost wins (grid points and kinks included, so a minimum at a kink of a
   piecewise f, e.g. hardswish at ±3, is found exactly).

Everything is elementwise, jit-able, NaN-free at saturation (|S| of 1e3 and beyond) in float32 and
float64.  `offset` is a constant added to the sum (a bias that is data): y = f(offset + Σ a_i).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import erf

from . import proj_pwl as pwl
from .proj_common import as_floats

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715

UNIFORM_POINTS = 17        # uniform grid over the search interval
GEOMETRIC_POINTS = 12      # per side: S0 ± R·2^-k, k = 1..12 (resolves structure near S0)
ACTIVE_POINTS = 25         # f's active region [-6, 6] (where tanh/sigmoid/gelu bend)
REFINED_BRACKETS = 2       # sign-change cells refined by safeguarded Newton
NEWTON_ITERS = 24          # per bracket: quadratic near the root; bisection alone shrinks a cell by 2^-24


class Smooth(NamedTuple):
    """f with its first two derivatives, an inverse for monotone f (None otherwise), and kinks."""

    f: Callable          # (S, alpha) -> (f, f', f'')
    inverse: Callable | None   # (y, alpha) -> S with f(S) = y, for y inside the range
    range_lo: Callable   # alpha -> inf f (monotone f only)
    range_hi: Callable   # alpha -> sup f
    kinks: tuple = ()    # points where f' jumps (candidates on their own)


def _tanh(s, alpha):
    t = jnp.tanh(s)
    d = 1 - t * t
    return t, d, -2 * t * d


def _sigmoid(s, alpha):
    p = 1 / (1 + jnp.exp(-jnp.clip(s, -80, 80)))  # clip: exp overflow is harmless but noisy
    d = p * (1 - p)
    return p, d, d * (1 - 2 * p)


def _one_minus_sigmoid(s, alpha):
    """1 - sigmoid(s) = sigmoid(-s): a GRU's (1 - z) gate as a family of its own (passes/unroll.py).
    Decreasing, so it has no entry in the monotone narrowing of the search interval."""
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


_INF = float("inf")
SMOOTH_FNS: dict[str, Smooth] = {
    "tanh": Smooth(_tanh, lambda y, a: jnp.arctanh(y), lambda a: -1.0, lambda a: 1.0),
    "sigmoid": Smooth(_sigmoid, lambda y, a: jnp.log(y) - jnp.log1p(-y), lambda a: 0.0, lambda a: 1.0),
    "one_minus_sigmoid": Smooth(_one_minus_sigmoid, None, None, None),
    "softplus": Smooth(_softplus, lambda y, a: y + jnp.log(-jnp.expm1(-y)), lambda a: 0.0, lambda a: _INF),
    "elu": Smooth(_elu, _inv_elu, lambda a: -a, lambda a: _INF, kinks=(0.0,)),
    "silu": Smooth(_silu, None, None, None),
    "gelu": Smooth(_gelu, None, None, None),
    "gelu_tanh": Smooth(_gelu_tanh, None, None, None),
    "hardswish": Smooth(_hardswish, None, None, None, kinks=(-3.0, 3.0)),
}


def smooth_eval(fn: str, s, alpha: float = 1.0):
    """f(s) elementwise for a sum_smooth fn."""
    (s,) = as_floats(s)
    return _lookup(fn).f(s, jnp.asarray(alpha, s.dtype))[0]


def _lookup(fn: str) -> Smooth:
    if fn not in SMOOTH_FNS:
        raise ValueError(f"unknown smooth activation {fn!r}; known: {sorted(SMOOTH_FNS)}")
    return SMOOTH_FNS[fn]


def _interval(sm: Smooth, S0, y0, fS0, n, alpha):
    """[L, U] holding every S at least as good as S0 (see the module docstring)."""
    R = math.sqrt(n) * jnp.abs(fS0 - y0)
    L, U = S0 - R, S0 + R
    if sm.inverse is None:
        return L, U
    up = y0 >= fS0  # non-decreasing f: move toward f⁻¹(y0), never away from it
    inside = (y0 > sm.range_lo(alpha)) & (y0 < sm.range_hi(alpha))
    T = sm.inverse(jnp.where(inside, y0, fS0), alpha)  # fS0: any value the inverse accepts
    T = jnp.where(inside & jnp.isfinite(T), T, jnp.where(up, U, L))
    return (jnp.where(up, S0, jnp.maximum(L, jnp.minimum(T, S0))),
            jnp.where(up, jnp.minimum(U, jnp.maximum(T, S0)), S0))


def _grid(sm: Smooth, S0, L, U, dt):
    """Candidate grid over [L, U]: uniform, geometric around S0, f's active region, kinks.

    Concatenated segments, each sorted by construction (a sort costs more than all the rest);
    returns (grid, cell) with cell[j] false where points j and j+1 belong to different segments.
    """
    e = lambda x: x[..., None]
    u = jnp.linspace(0.0, 1.0, UNIFORM_POINTS, dtype=dt)
    g = jnp.asarray([2.0 ** -k for k in range(1, GEOMETRIC_POINTS + 1)], dt)
    # a kink and both its sides: φ' jumps there, so a sign change next to it must not be hidden
    eps = 64 * float(jnp.finfo(dt).eps)
    kinks = [k + d * eps * (1 + abs(k)) for k in sorted(sm.kinks) for d in (-1, 0, 1)]
    fixed = list(np.linspace(-6.0, 6.0, ACTIVE_POINTS)) + kinks
    segments = [e(L) + (e(U) - e(L)) * u,                                  # increasing
                jnp.concatenate([e(S0) - (e(S0) - e(L)) * g, e(S0)], -1),   # increasing toward S0
                jnp.concatenate([e(S0), e(S0) + (e(U) - e(S0)) * g[::-1]], -1),
                jnp.clip(jnp.asarray(fixed, dt), e(L), e(U))]               # sorted, then clipped
    grid = jnp.concatenate([jnp.broadcast_to(p, S0.shape + p.shape[-1:]) for p in segments], -1)
    cell = np.concatenate([np.r_[np.ones(p.shape[-1] - 1, bool), False] for p in segments])[:-1]
    return grid, jnp.asarray(cell)


def _refine(sm: Smooth, a, b, S0, y0, n, alpha):
    """A root of φ'/2 = (S-S0)/n + (f-y0)f' in [a, b] with φ'(a) ≤ 0 < φ'(b): Newton, kept inside the
    bracket (bisection whenever the step leaves it or the curvature is not positive)."""

    def body(_, st):
        a, b, x = st
        f, d1, d2 = sm.f(x, alpha)
        g = (x - S0) / n + (f - y0) * d1
        h = 1 / n + d1 * d1 + (f - y0) * d2
        a = jnp.where(g <= 0, x, a)
        b = jnp.where(g <= 0, b, x)
        step = x - g / jnp.where(h > 0, h, 1)
        ok = (h > 0) & (step > a) & (step < b)
        return a, b, jnp.where(ok, step, 0.5 * (a + b))

    _, _, x = lax.fori_loop(0, NEWTON_ITERS, body, (a, b, 0.5 * (a + b)))
    return x


def solve_sum(fn: str, S0, y0, n: int, alpha=1.0):
    """argmin_S (S - S0)²/n + (f(S) - y0)², elementwise (S0, y0 broadcast arrays of one dtype)."""
    sm = _lookup(fn)
    dt = S0.dtype
    alpha = jnp.asarray(alpha, dt)
    fS0 = sm.f(S0, alpha)[0]
    L, U = _interval(sm, S0, y0, fS0, n, alpha)
    grid, cell = _grid(sm, S0, L, U, dt)
    e = lambda x: x[..., None]
    f, d1, _ = sm.f(grid, alpha)
    cost = (grid - e(S0)) ** 2 / n + (f - e(y0)) ** 2
    g = (grid - e(S0)) / n + (f - e(y0)) * d1
    brackets = cell & (g[..., :-1] <= 0) & (g[..., 1:] > 0) & (grid[..., 1:] > grid[..., :-1])
    score = jnp.where(brackets, jnp.minimum(cost[..., :-1], cost[..., 1:]), jnp.inf)
    cands, ccost = [grid], [cost]
    for _ in range(REFINED_BRACKETS):
        j = jnp.argmin(score, axis=-1)[..., None]
        a = jnp.take_along_axis(grid[..., :-1], j, -1)[..., 0]
        b = jnp.take_along_axis(grid[..., 1:], j, -1)[..., 0]
        valid = jnp.take_along_axis(score, j, -1)[..., 0] < jnp.inf
        x = jnp.where(valid, _refine(sm, a, b, S0, y0, n, alpha), S0)
        cands.append(e(x))
        ccost.append(e((x - S0) ** 2 / n + (sm.f(x, alpha)[0] - y0) ** 2))
        score = jnp.where(jnp.arange(score.shape[-1]) == j, jnp.inf, score)
    cands.append(e(S0))  # S0 itself: the search never returns a worse point
    ccost.append(e(jnp.zeros_like(S0) + (fS0 - y0) ** 2))
    cands, ccost = jnp.concatenate(cands, -1), jnp.concatenate(ccost, -1)
    k = jnp.argmin(ccost, axis=-1)[..., None]
    return jnp.take_along_axis(cands, k, -1)[..., 0]


def sum_smooth(*args, fn: str = "tanh", alpha: float = 1.0, offset=0.0):
    """Project onto {(a_1..a_n, y): y = f(offset + Σ a_i)}; returns (a_1', ..., a_n', y').

    fn: tanh, sigmoid, softplus, silu, gelu (erf form), gelu_tanh, elu (alpha), hardswish.
    The operands move by the same amount; y' = f(offset + Σ a_i') exactly.
    """
    if len(args) < 2:
        raise TypeError("sum_smooth(*operands, target, fn=...) needs at least one operand and a target")
    *ops, y0, off = as_floats(*args, offset)
    dt = ops[0].dtype
    shape = jnp.broadcast_shapes(*(x.shape for x in ops), y0.shape, off.shape)
    ops = [jnp.broadcast_to(x, shape) for x in ops]
    y0 = jnp.broadcast_to(y0, shape)
    n = len(ops)
    S0 = off + sum(ops[1:], ops[0])
    S = solve_sum(fn, S0, y0, n, alpha)
    shift = (S - S0) / n
    new = [x + shift for x in ops]
    return (*new, smooth_eval(fn, off + sum(new[1:], new[0]), jnp.asarray(alpha, dt)))


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


def sum_activation(kind: str, params: dict, *args, offset=0.0):
    """Project a sum_smooth / sum_pwl family given its IR params: (*free operands, target) in,
    (*free operands', y') out, with `offset` the sum of its constant operands (never moved)."""
    if kind == "sum_smooth":
        return sum_smooth(*args, fn=params["fn"], alpha=params.get("alpha", 1.0), offset=offset)
    fn = pwl_fn(params)
    if isinstance(fn, pwl.Staircase):
        return pwl.sum_staircase(*args, fn=fn, offset=offset)
    # a piece table: fold the constant into the first operand (the sum and n are unchanged)
    first, *rest = args
    res = pwl.sum_pwl(first + offset, *rest, fn=fn)
    return (res[0] - offset, *res[1:])
