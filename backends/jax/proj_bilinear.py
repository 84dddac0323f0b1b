"""Exact projection onto the graph of the bilinear map y = a.b (both vectors free).

Math (DESIGN.md §3).  With u0 = (a0+b0)/√2, v0 = (a0-b0)/√2 we have a.b = (|u|²-|v|²)/2, U = |u0|²,
V = |v0|².  The nearest point is u = u0/(1-t), v = v0/(1+t), y = y0 - t, where t is the unique root in
(-1, 1) of the strictly increasing g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0.

Numerics.  By the symmetry g(t; U, V, y0) = -g(-t; V, U, -y0) we always solve for a root in [0, 1) and
iterate in α = 1 - t (kept with full relative precision, so roots within 1e-30 of ±1 are resolved).
On (0, 1], h(α) = 1 - α - y0 + U/(2α²) - V/(2(2-α)²) is decreasing, and bounding the two bounded terms
gives the bracket  U/(2y0+V) ≤ α*² ≤ U/(2y0-2+V/4),  which is within a factor 2 whenever the root is
close to the pole.  Newton runs in z = α⁻² (where the dominant term U z/2 is linear), safeguarded by
the bracket with geometric bisection, for a fixed number of iterations.  The pole-side vector is
rebuilt from the equation |u|² = 2(y0 - t) + V/(1+t)² when α is at its floor (U = 0 or a root closer to
the pole than α_min = eps²: a = -b exactly with a large target), choosing the direction u0/|u0| or,
when u0 = 0, the uniform direction 1/√n — any direction is optimal there.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .proj_common import as_floats

_SQRT_HALF = 0.7071067811865476


def _default_iters(dtype) -> int:
    return 20 if jnp.finfo(dtype).bits > 32 else 16


def _solve_alpha(U, V, y0, iters):
    """Root α ∈ (0, 1] of h(α) = 1 - α - y0 + U/(2α²) - V/(2(2-α)²), assuming h(1) ≤ 0.

    Returns (α, α_min); α is clamped to [α_min, 1] with α_min = eps² (the U = 0 limit).
    """
    dt = U.dtype
    eps = jnp.finfo(dt).eps
    amin = jnp.asarray(eps * eps, dt)
    one = jnp.asarray(1.0, dt)
    # bracket from  y0 - 1 + V/8 <= U/(2 α²) <= y0 + V/2
    d_lo = 2 * y0 + V
    lo = jnp.sqrt(U / jnp.where(d_lo > 0, d_lo, one))
    lo = jnp.where(d_lo > 0, lo, amin)
    lo = jnp.clip(lo, amin, one)
    d_hi = 2 * (y0 - 1) + V / 4
    hi = jnp.sqrt(U / jnp.where(d_hi > 0, d_hi, one))
    hi = jnp.where(d_hi > 0, hi, one)
    hi = jnp.clip(hi, lo, one)

    def h_of(a):
        q = 2 - a
        return (1 - a - y0) + 0.5 * U / (a * a) - 0.5 * V / (q * q)

    def pick(c, lo, hi):
        inside = (c >= lo) & (c <= hi)  # NaN-safe: NaN is never inside
        return jnp.where(inside, c, jnp.sqrt(lo) * jnp.sqrt(hi))

    def body(_, state):
        a, h, lo, hi = state
        a2 = a * a
        a3 = a2 * a
        q = 2 - a
        dV = V / (q * q * q)
        # Newton in α (good when the smooth terms dominate) and in z = α⁻² (good near the pole)
        ha = -(1 + U / a3 + dV)  # dh/dα < 0
        c1 = pick(a - h / ha, lo, hi)
        hz = 0.5 * (a3 + U + a3 * dV)  # dh/dz > 0
        zn = 1 / a2 - h / hz
        c2 = pick(jax.lax.rsqrt(jnp.where(zn > 0, zn, 0.0)), lo, hi)
        h1 = h_of(c1)
        h2 = h_of(c2)
        lo = jnp.maximum(lo, jnp.maximum(jnp.where(h1 > 0, c1, lo), jnp.where(h2 > 0, c2, lo)))
        hi = jnp.minimum(hi, jnp.minimum(jnp.where(h1 < 0, c1, hi), jnp.where(h2 < 0, c2, hi)))
        use1 = jnp.abs(h1) <= jnp.abs(h2)
        an = jnp.where(use1, c1, c2)
        hn = jnp.where(use1, h1, h2)
        # converged (a Newton step below rounding): freeze, so rounding cannot kick us out
        done = (h == 0) | (jnp.abs(h) <= 2 * eps * a * jnp.abs(ha))
        return jnp.where(done, a, an), jnp.where(done, h, hn), lo, hi

    a, _, _, _ = jax.lax.fori_loop(0, iters, body, (hi, h_of(hi), lo, hi))
    return a, amin


def _root_parts(U, V, y0, iters):
    """Solve in the orientation with a root in [0, 1): returns (mirrored, ts, α, α_min, U', V', y0').

    The root of the original problem is t = ts (not mirrored) or -ts (mirrored); α = 1 - ts.  Both ts
    and α carry full relative precision: α from the pole-side solve, ts (when ≤ ½, where 1 - α would
    lose it) from two Newton steps in t itself, where g' ≥ 1 and g'' is bounded.
    """
    mirrored = 0.5 * (U - V) - y0 > 0  # g(0) > 0: the root is negative
    Us = jnp.where(mirrored, V, U)
    Vs = jnp.where(mirrored, U, V)
    ys = jnp.where(mirrored, -y0, y0)
    a, amin = _solve_alpha(Us, Vs, ys, iters)
    far = a > 0.5
    ts = jnp.where(far, 1 - a, 0.0)
    for _ in range(2):
        om, op = 1 - ts, 1 + ts
        g = ts + 0.5 * (Us / (om * om) - Vs / (op * op)) - ys
        gp = 1 + Us / (om * om * om) + Vs / (op * op * op)
        ts = jnp.where(far, jnp.clip(ts - g / gp, 0.0, 0.5), ts)
    ts = jnp.where(far, ts, 1 - a)
    a = jnp.where(far, 1 - ts, a)
    return mirrored, ts, a, amin, Us, Vs, ys


@partial(jax.jit, static_argnames=("iters",))
def bilinear_root_ab(U, V, y0, iters: int | None = None):
    """Root t of g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0 in (-1, 1), with 1-t and 1+t.

    Returns (t, 1-t, 1+t), the last two computed with full relative precision (use them, not 1∓t,
    near the poles).  U, V ≥ 0 and y0 broadcast elementwise; `iters` Newton/bisection steps.
    """
    U, V, y0 = jnp.broadcast_arrays(*as_floats(U, V, y0))
    iters = _default_iters(U.dtype) if iters is None else int(iters)
    mirrored, ts, a, _, _, _, _ = _root_parts(U, V, y0, iters)
    t = jnp.where(mirrored, -ts, ts)
    return t, jnp.where(mirrored, 2 - a, a), jnp.where(mirrored, a, 2 - a)


@partial(jax.jit, static_argnames=("iters",))
def bilinear_root(U, V, y0, iters: int | None = None):
    """Root t ∈ (-1, 1) of g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0 (g strictly increasing).

    Safeguarded Newton in a bracketed transformed variable, fixed count.  The result is clamped so
    that 1 - |t| ≥ eps (finite 1/(1-t²)); see `bilinear_root_ab` for exact 1∓t near the poles.
    """
    t, _, _ = bilinear_root_ab(U, V, y0, iters)
    eps = jnp.finfo(t.dtype).eps
    return jnp.clip(t, -1 + eps, 1 - eps)


@partial(jax.jit, static_argnames=("iters",))
def bilinear(a, b, target, iters: int | None = None):
    """Project (a0, b0, y0) onto {(a, b, y): y = a·b} (dot over the last axis, both free).

    a = (a0 + t b0)/(1-t²), b = (b0 + t a0)/(1-t²), y = y0 - t with t the root in (-1, 1) of
    g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0, U = ½|a0+b0|², V = ½|a0-b0|².  Returns (a, b, y).
    """
    a, b, y0 = as_floats(a, b, target)
    lead = jnp.broadcast_shapes(a.shape[:-1], b.shape[:-1], y0.shape)
    n = jnp.broadcast_shapes(a.shape[-1:], b.shape[-1:])
    a = jnp.broadcast_to(a, lead + n)
    b = jnp.broadcast_to(b, lead + n)
    y0 = jnp.broadcast_to(y0, lead)
    dt = a.dtype
    iters = _default_iters(dt) if iters is None else int(iters)
    u0 = (a + b) * _SQRT_HALF
    v0 = (a - b) * _SQRT_HALF
    U = jnp.sum(u0 * u0, axis=-1)
    V = jnp.sum(v0 * v0, axis=-1)
    mirrored, ts, al, amin, Us, Vs, ys = _root_parts(U, V, y0, iters)
    m = mirrored[..., None]
    sg = jnp.where(m, -1.0, 1.0).astype(dt)
    q = 2 - al  # the far-side factor: 1+t (not mirrored) or 1-t (mirrored)
    # (1) |t| ≤ ½: a = (a0 + t b0)/(1-t²), b = (b0 + t a0)/(1-t²) with the precise t
    t = (sg[..., 0] * ts)[..., None]
    den = (al * q)[..., None]
    a_mid = (a + t * b) / den
    b_mid = (b + t * a) / den
    # (2) |t| > ½: with s = a0 ± b0 (exact), a0 + t b0 = s ∓ α b0 etc. — no cancellation in 1 - |t|
    s_ab = jnp.where(m, a - b, a + b)
    alx = al[..., None]
    a_pole = (s_ab - sg * alx * b) / den
    b_pole = sg * (s_ab - alx * a) / den
    # (3) α at its floor (U' = 0 or a root within eps² of the pole): |P|² from the constraint
    P0 = jnp.where(m, v0, u0)
    Q0 = jnp.where(m, u0, v0)
    E = jnp.maximum(2 * (ys - 1 + al) + Vs / (q * q), 0)
    nP = jnp.sqrt(Us)
    unit = jnp.where(
        (nP > 0)[..., None],
        P0 / jnp.where(nP > 0, nP, 1)[..., None],
        jnp.asarray(1.0 / (a.shape[-1] ** 0.5), dt),
    )
    P = unit * jnp.sqrt(E)[..., None]
    Q = Q0 / q[..., None]
    u = jnp.where(m, Q, P)
    v = jnp.where(m, P, Q)
    a_floor = (u + v) * _SQRT_HALF
    b_floor = (u - v) * _SQRT_HALF
    floor = (al <= 2 * amin)[..., None]
    pole = (al <= 0.5)[..., None]
    a_new = jnp.where(floor, a_floor, jnp.where(pole, a_pole, a_mid))
    b_new = jnp.where(floor, b_floor, jnp.where(pole, b_pole, b_mid))
    # y = y0 - t mathematically; the dot of the returned vectors is exactly on the graph even
    # where y0 - t cancels
    return a_new, b_new, jnp.sum(a_new * b_new, axis=-1)
