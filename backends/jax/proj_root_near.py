"""The bilinear root when it is away from the pole: safeguarded Newton in t on [0, ½].

``proj_bilinear.root_parts`` finds the root t of g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0 for every
case, the pole included: Newton in α = 1 - t and in α⁻² with a bracket from square roots, then two
Newton steps in t. In training nearly every root is small (a conv family's 500k roots per
projection, cnn2_digits: none above ½ in the first 200 CP steps, measured), where plain Newton in t
converges in a few passes of two reciprocals each. ``root_parts_near`` runs that when every root
lies in [0, ½] (g(½) ≥ 0 after mirroring, checked first) and falls back to ``root_parts`` otherwise
(one ``lax.cond`` over the whole array); it returns the same tuple, with the same precision (the
Newton steps in t run until g is within its rounding noise, as root_parts' final steps leave it; the
bracket [lo, hi] keeps every iterate inside and takes the midpoint when a Newton step leaves it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .proj_bilinear import default_iters, root_parts


def _newton_t(Us, Vs, ys, cap: int):
    """The root in [0, ½] of the mirrored g (g(0) ≤ 0 ≤ g(½) assumed), every element at once."""
    dt = Us.dtype
    eps = jnp.finfo(dt).eps
    tiny = jnp.finfo(dt).tiny

    def parts(t):
        """g, g' and the size of g's largest terms (its rounding scale), from two reciprocals."""
        iom = 1 / (1 - t)
        iop = 1 / (1 + t)
        a, b = Us * iom * iom, Vs * iop * iop
        return t + 0.5 * (a - b) - ys, 1 + a * iom + b * iop, t + 0.5 * (a + b) + jnp.abs(ys)

    def body(st):
        # t, lo, hi and "not done" travel stacked in one [4, ...] array: XLA then emits the
        # iteration as one fused pass instead of one kernel per output (as proj_bilinear's solve
        # does); the loop's test reduces the stored flag row, so no fusion recomputes g to decide
        S, it = st
        t, lo, hi = S[0], S[1], S[2]
        g, gp, scale = parts(t)
        lo = jnp.where(g <= 0, t, lo)
        hi = jnp.where(g >= 0, t, hi)
        tn = t - g / gp
        tn = jnp.where((tn >= lo) & (tn <= hi), tn, 0.5 * (lo + hi))
        # converged: g within its rounding noise (a few ulps of its largest term), a Newton step
        # below rounding, or the bracket collapsed; a converged element keeps its t
        done = ((jnp.abs(g) <= 8 * eps * scale) | (jnp.abs(tn - t) <= 4 * eps * jnp.maximum(t, tiny))
                | (hi - lo <= 4 * eps * jnp.maximum(hi, tiny)))
        S = jnp.stack([jnp.where(done, t, tn), lo, hi, jnp.where(done, 0.0, 1.0).astype(dt)])
        return S, it + 1

    def cond(st):
        return jnp.any(st[0][3] != 0) & (st[1] < cap)

    zero = jnp.zeros_like(Us)
    g0, gp0, _ = parts(zero)
    t0 = jnp.clip(-g0 / gp0, 0.0, 0.5)  # the first Newton step from 0 (g(0) ≤ 0)
    st = (jnp.stack([t0, zero, jnp.full_like(Us, 0.5), jnp.ones_like(Us)]), jnp.asarray(0))
    # the first pass runs outside the loop, fused with the start: most elements converge in it,
    # and the loop's first pass (often its only one) then just confirms them; the same iterates
    S, _ = jax.lax.while_loop(cond, body, body(st))
    return S[0]


def root_parts_near(U, V, y0, iters: int | None = None, early: bool = True, p=None):
    """``proj_bilinear.root_parts`` (same outputs), by Newton in t when every root is within ½.
    ``p``: a0·b0, which orients the root by a comparison, as in root_parts."""
    iters = default_iters(U.dtype) if iters is None else int(iters)
    mirrored = (0.5 * (U - V) - y0 > 0) if p is None else (p > y0)
    Us = jnp.where(mirrored, V, U)
    Vs = jnp.where(mirrored, U, V)
    ys = jnp.where(mirrored, -y0, y0)
    near = jnp.all(0.5 + 2 * Us - (2 / 9) * Vs - ys >= 0)  # g(½) ≥ 0: every root in [0, ½]

    def small():
        ts = _newton_t(Us, Vs, ys, 2 * jnp.finfo(U.dtype).nmant + 8)
        amin = jnp.asarray(jnp.finfo(U.dtype).eps ** 2, U.dtype)
        return mirrored, ts, 1 - ts, amin, Us, Vs, ys

    def full():
        return root_parts(U, V, y0, iters, early, p=p)
    return jax.lax.cond(near, small, full)


__all__ = ["root_parts_near"]
