"""proj_bilinear's root solve with an early exit, for the consensus layout.

``root_parts`` is ``proj_bilinear._root_parts`` with one change: the fixed-count safeguarded-Newton
loop becomes a ``while_loop`` that also stops after an iteration whose own freeze test found every
element frozen (such an iteration changes nothing, nor would any later one): the result is the same
bits as running all ``iters`` iterations of this loop (``early=False``; tested). Against
``proj_bilinear`` itself it agrees to rounding (a few ulps on ~0.1% of elements: XLA compiles the
two loops' arithmetic differently, as it may any two programs). On typical
dense-layer inputs the roots converge in 2–4 of the 16 (float32) iterations, and the root solve is
the largest elementwise cost of a consensus AP step. Keep in sync with proj_bilinear.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _solve_alpha_early(U, V, y0, iters, early=True):
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
        return jnp.where(done, a, an), jnp.where(done, h, hn), lo, hi, jnp.all(done)

    # Stop after an iteration whose own freeze test found every element frozen: it changed
    # nothing, and neither would any later one (same a, h; lo/hi only feed unfrozen elements).
    def cond(state):
        i, stop, *_ = state
        return (i < iters) & ~(stop & early)

    def step(state):
        i, _, a, h, lo, hi = state
        a2, h2, lo2, hi2, all_done = body(i, (a, h, lo, hi))
        return i + 1, all_done, a2, h2, lo2, hi2

    _, _, a, _, _, _ = jax.lax.while_loop(cond, step, (0, jnp.asarray(False), hi, h_of(hi), lo, hi))
    return a, amin


def root_parts(U, V, y0, iters, early: bool = True):
    """Solve in the orientation with a root in [0, 1): returns (mirrored, ts, α, α_min, U', V', y0').

    The root of the original problem is t = ts (not mirrored) or -ts (mirrored); α = 1 - ts.  Both ts
    and α carry full relative precision: α from the pole-side solve, ts (when ≤ ½, where 1 - α would
    lose it) from two Newton steps in t itself, where g' ≥ 1 and g'' is bounded.
    """
    mirrored = 0.5 * (U - V) - y0 > 0  # g(0) > 0: the root is negative
    Us = jnp.where(mirrored, V, U)
    Vs = jnp.where(mirrored, U, V)
    ys = jnp.where(mirrored, -y0, y0)
    a, amin = _solve_alpha_early(Us, Vs, ys, iters, early)
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
