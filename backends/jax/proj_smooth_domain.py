"""The 1-D functions of sum_smooth as the scalar search sees them, and those with a restricted domain
or a pole: exp, log, sqrt, rsqrt, reciprocal, square and pow with a constant exponent.

A `Smooth` describes one monotone or smooth piece f with f', f'', an inverse where f is monotone,
and its *search domain* [lo, hi]: where f, f'² and (f - y)·f'' are finite in the dtype (all the
search evaluates).  An `Fn` is a sum_smooth fn: the union of the graphs of its branches
{(σ·s, τ·f(s))}, each (f, σ, τ) a Smooth on a half-line.  The projection is the best of the
branches' projections (proj_smooth.solve_sum); the returned y is the op's forward
(projc.ops.constraint.smooth) at the projected sum.

Domains (DESIGN.md §9; the graph projected onto is the graph on the search domain):

- exp: ℝ, but s ≤ ½·ln(max/1e4) (float32 39.7, float64 350): beyond it (f - y0)² overflows; powers
  e > 0 likewise |s| ≤ (max/1e4)^(1/2e) (float32 square: 1.4e8).  A point already there stays.
- log (s > 0), rsqrt (s > 0), reciprocal (s ≠ 0), pow with exponent e < 0: the open end at the pole
  0 is never reached: the search starts at a floor s₀ where f'² is still finite (float32 5e-18 for
  log, 3e-12 rsqrt, 7e-9 reciprocal; float64 ~1e-152, 1e-102, 1e-77), plus the rounding margin below.
- sqrt and pow with a non-integer e > 0 (s ≥ 0): closed at 0 but the sum must not round below it.
- The rounding margin (`guard`): the projected operands are a_i + (S - S0)/n, and their sum as the
  forward adds them differs from S by up to ~(n+1)·eps·(|offset| + Σ|a_i| + |S - S0|); a sum just
  below the domain would give NaN (sqrt, log of a negative) or jump across a pole.  So the search
  domain starts at lo + 8(n+2)·eps·(2·mag + |lo|), mag = |offset| + Σ|a_i|: a closed subset of the
  graph, like sign's margin (proj_pwl.SIGN_MARGIN), optimal up to that margin.  A finite upper bound
  gets the same margin (exp of a sum of float32 operands ~1e30 must not overflow); where the two
  margins leave no room, the lower end wins: y may overflow to inf, never NaN.  A point already on
  the graph never moves: S0 itself is a candidate whenever f(S0) is defined, margin or not.
- reciprocal and the negative integer powers: both branches s > 0 and s < 0 (the exact graph of ONNX
  Reciprocal / Pow), searched as two half-lines by the symmetry f(-s) = ±f(s).  Even positive
  integer powers (square) likewise, with no margin at 0 (f is defined there); odd positive ones are
  monotone on ℝ.  Non-integer exponents: s ≥ 0 (e > 0) or s > 0 (e < 0) only, as ONNX Pow gives NaN
  for a negative base.

The search interval for S0 outside the search domain (DESIGN.md §8 assumes f(S0) is defined): any
feasible S1 bounds every better S by |S - S0| ≤ R1 = √((S1 - S0)² + n(f(S1) - y0)²).  With Sc the
nearest point of the domain to S0 and D = |Sc - S0|, an S beyond Sc is within R1 - D =
(R1² - D²)/(R1 + D) of Sc, computed without cancellation (proj_smooth._interval); S1 ranges over a
few probes (Sc, Sc ± 10^k, f⁻¹(y0)), and for S0 inside the domain the bound is §8's.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

_INF = float("inf")
CUBIC_ITERS = 40  # Newton on a convex branch of a scaled cubic: monotone, quadratic near a simple root


class Smooth(NamedTuple):
    """f with its first two derivatives, an inverse for monotone f (None otherwise), kinks, domain."""

    f: Callable                        # (S, alpha) -> (f, f', f'')
    inverse: Callable | None = None    # (y, alpha) -> S with f(S) = y, for y strictly inside the range
    range_lo: Callable | None = None   # alpha -> inf f on the domain (monotone f only)
    range_hi: Callable | None = None   # alpha -> sup f
    kinks: tuple = ()                  # points where f' jumps (candidates on their own)
    mono: int = 0                      # +1 non-decreasing, -1 non-increasing (with an inverse), 0 neither
    dom_lo: float = -_INF              # f undefined below (and at dom_lo where f is not finite there)
    bounds: Callable | None = None     # dtype -> (lo, hi), the search domain; None: the real line
    guard: bool = False                # lo is a true end: keep the rounding margin above it
    exact: Callable | None = None      # (S0, y0, n, alpha) -> [S, ...]: closed-form stationary points
    complete: bool = False             # exact, the domain's ends and the kinks hold every local minimum


class Fn(NamedTuple):
    """A sum_smooth fn: its branches ((Smooth, σ, τ): the part {(σs, τf(s))} of the graph)."""

    branches: tuple


def single(sm: Smooth) -> Fn:
    return Fn(((sm, 1, 1),))


def _fmax(dt) -> float:
    return float(jnp.finfo(dt).max)


def floor_at(dt, k: float) -> float:
    """The least s > 0 with s^-k ≤ max/1e4 (k > 0): where a pole's powers stay finite."""
    return (1e4 / _fmax(dt)) ** (1.0 / k)


def ceil_at(dt, k: float) -> float:
    """The largest s with s^k ≤ max/1e4 (and s ≤ max/1e4)."""
    top = math.log(_fmax(dt) / 1e4)
    return math.exp(top / max(k, 1.0))


# ------------------------------------------------------------------------- closed-form cubic roots
def cubic_minima(p, q, iters: int = CUBIC_ITERS):
    """The least and the greatest real root of u³ + p·u + q (the same root when there is one).

    Where φ' is a positive multiple of this cubic, these are the only interior local minima of φ
    (the middle root of three is a maximum).  Scaled by B = 2·max(√|p|, ∛(|q|/2)) every root lies in
    [-1, 1] (Fujiwara) and no power overflows; the greatest root lies on the convex increasing branch
    [r, 1], r = √(max(-P/3, 0)), when g(r) ≤ 0 (else the cubic's only root is the least), and Newton
    from 1 descends to it monotonically (clamped to the branch); the least root mirrors this from -1.
    """
    B = 2 * jnp.maximum(jnp.sqrt(jnp.abs(p)), jnp.cbrt(jnp.abs(q) / 2))
    B = jnp.where(B > 0, B, 1)  # p = q = 0: the triple root 0
    P, Q = p / B / B, q / B / B / B
    r = jnp.sqrt(jnp.maximum(-P / 3, 0))
    g = lambda v: v * (v * v + P) + Q  # noqa: E731

    def newton(v, side):
        d = 3 * v * v + P
        step = v - g(v) / jnp.where(d > 0, d, 1)
        return jnp.maximum(step, r) if side > 0 else jnp.minimum(step, -r)

    one = jnp.ones_like(P)
    hi, lo = lax.fori_loop(0, iters, lambda _, v: (newton(v[0], 1), newton(v[1], -1)), (one, -one))
    has_hi, has_lo = g(r) <= 0, g(-r) >= 0
    return B * jnp.where(has_lo, lo, hi), B * jnp.where(has_hi, hi, lo)


# ------------------------------------------------------------------------------------- exp and log
def _exp(s, alpha):
    e = jnp.exp(s)
    return e, e, e


def _log(s, alpha):
    r = 1 / s
    return jnp.log(s), r, -r * r


EXP = Smooth(_exp, lambda y, a: jnp.log(y), lambda a: 0.0, lambda a: _INF, mono=1,
             bounds=lambda dt: (-_INF, 0.5 * math.log(_fmax(dt) / 1e4)))
LOG = Smooth(_log, lambda y, a: jnp.exp(y), lambda a: -_INF, lambda a: _INF, mono=1, dom_lo=0.0,
             bounds=lambda dt: (floor_at(dt, 2.0), _INF), guard=True)


# ------------------------------------------------------------------------------------------ powers
def pow_value(s, e: float):
    """s**e with the primitives the forward uses (projc.ops.constraint._power): sqrt, rsqrt, 1/s,
    s·s and integer powers by their own."""
    e = float(e)
    if e == 0:
        return jnp.ones_like(s)
    if e == 1:
        return s
    if e == 2:
        return s * s
    if e == 0.5:
        return jnp.sqrt(s)
    if e == -0.5:
        return lax.rsqrt(s)
    if e == -1:
        return 1 / s
    if e.is_integer():
        return lax.integer_pow(s, int(e))
    return jnp.power(s, e)


def _pow_f(e: float):
    def f(s, alpha):
        d1 = e * pow_value(s, e - 1) if e != 0 else jnp.zeros_like(s)
        d2 = e * (e - 1) * pow_value(s, e - 2) if e not in (0, 1) else jnp.zeros_like(s)
        return pow_value(s, e), d1, d2
    return f


def _square_exact(S0, y0, n, alpha):
    """f = s² on s ≥ 0: φ'/2 = 2s³ + (1/n - 2y0)s - S0/n, a depressed cubic."""
    return list(cubic_minima((1 / n - 2 * y0) / 2, -S0 / (2 * n)))


def _sqrt_exact(S0, y0, n, alpha):
    """f = √s, s = u² (u ≥ 0): φ = (u² - S0)²/n + (u - y0)², dφ/du ∝ u³ + (n/2 - S0)u - n·y0/2."""
    return [u * u for u in cubic_minima(n / 2 - S0, -n * y0 / 2)]


@cache
def power(e: float) -> Fn:
    """pow with a constant exponent e (see the module docstring for the domains)."""
    e = float(e)
    if not math.isfinite(e):
        raise ValueError(f"pow needs a finite exponent, got {e}")
    f = _pow_f(e)
    if e in (0.0, 1.0):  # constant 1, identity: the real line, nothing to guard
        return single(Smooth(f, mono=int(e)) if e == 0 else
                      Smooth(f, lambda y, a: y, lambda a: -_INF, lambda a: _INF, mono=1))
    inv = lambda y, a: jnp.power(y, 1 / e)  # noqa: E731  (y > 0: the half-line branch)
    if e.is_integer() and e > 0 and int(e) % 2:  # odd: increasing on ℝ
        odd_inv = lambda y, a: jnp.sign(y) * jnp.power(jnp.abs(y), 1 / e)  # noqa: E731
        big = lambda dt: ceil_at(dt, 2 * e)  # noqa: E731
        return single(Smooth(f, odd_inv, lambda a: -_INF, lambda a: _INF, mono=1,
                             bounds=lambda dt: (-big(dt), big(dt))))
    if e > 0:  # [0, ∞): a true end for non-integer e, the symmetry axis for even e
        even = e.is_integer()
        lo = 0.0 if even or e >= 2 else None  # f'' ~ s^(e-2) has a pole at 0 for 0 < e < 2
        half = Smooth(f, inv, lambda a: 0.0, lambda a: _INF, mono=1, dom_lo=0.0,
                      bounds=lambda dt: (floor_at(dt, 2 - e) if lo is None else lo, ceil_at(dt, 2 * e)),
                      guard=not even, exact=_square_exact if e == 2 else _sqrt_exact if e == 0.5 else None,
                      complete=e in (2.0, 0.5))
        return Fn(((half, 1, 1), (half, -1, 1)) if even else ((half, 1, 1),))
    # e < 0: decreasing on (0, ∞), a pole at 0
    half = Smooth(f, inv, lambda a: 0.0, lambda a: _INF, mono=-1, dom_lo=0.0,
                  bounds=lambda dt: (floor_at(dt, 2 - 2 * e), _INF), guard=True)
    if not e.is_integer():
        return Fn(((half, 1, 1),))
    return Fn(((half, 1, 1), (half, -1, 1 if int(e) % 2 == 0 else -1)))


DOMAIN_FNS: dict[str, Fn] = {
    "exp": single(EXP),
    "log": single(LOG),
    "sqrt": power(0.5),
    "rsqrt": power(-0.5),
    "reciprocal": power(-1.0),
    "square": power(2.0),
    "pow": power(1.0),  # the default exponent; sum_smooth(..., exponent=e) builds power(e)
}
