"""Exact projection onto the graph of the bilinear map y = a.b (both vectors free).

Math.  With u0 = (a0+b0)/√2, v0 = (a0-b0)/√2 we have a.b = (|u|²-|v|²)/2, U = |u0|²,
V = |v0|².  The nearest point is u = u0/(1-t), v = v0/(1+t), y = y0 - t, where t is the unique root in
(-1, 1) of the strictly increasing g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0.

Numerics.  By the symmetry g(t; U, V, y0) = -g(-t; V, U, -y0) we always solve for a root in [0, 1) and
iterate in α = 1 - t (full relative precision, so roots within 1e-30 of ±1 are resolved).  On (0, 1],
h(α) = 1 - α - y0 + U/(2α²) - V/(2(2-α)²) is decreasing, and bounding its two bounded terms gives the
bracket  U/(2y0+V) ≤ α*² ≤ U/(2y0-2+V/4),  within a factor 2 whenever the root is near the pole.  Each
iteration evaluates two Newton candidates — in α (good where the smooth terms dominate) and in
z = α⁻² (where the pole term U z/2 is linear) — replaces one that leaves the bracket by a geometric
bisection, keeps the better and shrinks the bracket; the loop stops when every element has
converged, after at most `iters` (default 16 in float32, 20 in float64: the worst case measured over
U, V in [1e-8, 1e8] and |y0| up to 1e9 needs 14 and 16).  Two Newton steps in t then restore t's
relative precision when |t| ≤ ½.  The output vectors are formed as per-row combinations of a0, b0 and
a0 ± b0 chosen so that nothing cancels near the poles.  When α sits at its floor α_min = eps² (U = 0,
i.e. a = -b exactly, with a large target, or a root closer to the pole than that), the pole-side
vector's length comes from the constraint |u|² = 2(y0 - t) + V/(1+t)² and its direction is u0/|u0|
or, when u0 = 0, the uniform 1/√n — any direction is optimal there.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .proj_common import as_floats

_SQRT_HALF = 0.7071067811865476


def default_iters(dtype) -> int:
    return 20 if jnp.finfo(dtype).bits > 32 else 16


def _solve_alpha(U, V, y0, iters, early: bool = True):
    """Root α ∈ (0, 1] of h(α) = 1 - α - y0 + U/(2α²) - V/(2(2-α)²), assuming h(1) ≤ 0.

    Returns (α, α_min); α is clamped to [α_min, 1] with α_min = eps² (the U = 0 limit).  Runs until
    every element has converged, at most `iters` iterations (each: two Newton candidates, two h);
    ``early=False`` runs all `iters` (same result: converged elements are frozen).
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

    def body(state):
        # the four per-element arrays travel stacked in one [4, ...] array: XLA then emits the
        # iteration as a single fused pass instead of one kernel per output (same arithmetic)
        S, _, it = state
        a, h, lo, hi = S[0], S[1], S[2], S[3]
        a2 = a * a
        a3 = a2 * a
        q = 2 - a
        dV = V / (q * q * q)
        # Newton in α (good when the smooth terms dominate) and in z = α⁻² (good near the pole)
        ha = -(1 + U / a3 + dV)  # dh/dα < 0
        # converged (Newton step below rounding, or bracket collapsed): freeze, so that rounding
        # cannot kick the iterate out again
        done = (h == 0) | (jnp.abs(h) <= 2 * eps * a * jnp.abs(ha)) | (hi - lo <= 4 * eps * hi)
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
        S = jnp.stack([jnp.where(done, a, an), jnp.where(done, h, hn), lo, hi])
        return S, jnp.all(done), it + 1

    def cond(state):
        return (~(state[1] & early)) & (state[2] < iters)

    # no root above the floor (U = 0, or a root within eps² of the pole): α = α_min
    h_floor = h_of(amin)
    floor = h_floor <= 0
    a0 = jnp.where(floor, amin, hi)
    h0 = jnp.where(floor, 0.0, h_of(hi))  # h = 0 marks the floor rows as converged
    state = (jnp.stack([a0, h0, lo, hi]), jnp.asarray(False), jnp.asarray(0))
    S, _, _ = jax.lax.while_loop(cond, body, state)
    a = S[0]
    return a, amin


def root_parts(U, V, y0, iters, early: bool = True, p=None):
    """Solve in the orientation with a root in [0, 1): returns (mirrored, ts, α, α_min, U', V', y0').

    The root of the original problem is t = ts (not mirrored) or -ts (mirrored); α = 1 - ts.  Both ts
    and α carry full relative precision: α from the pole-side solve, ts (when ≤ ½, where 1 - α would
    lose it) from two Newton steps in t itself, where g' ≥ 1 and g'' is bounded.

    ``p``: a0·b0 (= ½(U - V)) when the caller has it. The orientation is then the comparison p > y0,
    which involves no arithmetic: XLA recomputes an elementwise predicate inside every fusion that
    reads it, and on CPU it contracts ``x·x - v`` into an FMA in some fusions and not in others, so
    ``½(U - V) - y0 > 0`` can come out True in one and False in another where g(0) is within rounding
    of 0 (y0 = a0·b0 with a0 ≈ b0: a LayerNorm's unit scale at its init). U', V' and y0' then mix the
    two orientations and the root is wrong (measured: 4769 for a root t ≈ 1e-7).
    """
    # g(0) > 0: the root is negative
    mirrored = (0.5 * (U - V) > y0) if p is None else (p > y0)
    Us = jnp.where(mirrored, V, U)
    Vs = jnp.where(mirrored, U, V)
    ys = jnp.where(mirrored, -y0, y0)
    a, amin = _solve_alpha(Us, Vs, ys, iters, early)
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
    near the poles).  U, V ≥ 0 and y0 broadcast elementwise; `iters` caps the Newton/bisection steps.
    """
    U, V, y0 = jnp.broadcast_arrays(*as_floats(U, V, y0))
    iters = default_iters(U.dtype) if iters is None else int(iters)
    mirrored, ts, a, _, _, _, _ = root_parts(U, V, y0, iters)
    t = jnp.where(mirrored, -ts, ts)
    return t, jnp.where(mirrored, 2 - a, a), jnp.where(mirrored, a, 2 - a)


@partial(jax.jit, static_argnames=("iters",))
def bilinear_root(U, V, y0, iters: int | None = None):
    """Root t ∈ (-1, 1) of g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0 (g strictly increasing).

    Bracketed, safeguarded Newton (at most `iters` steps, see the module notes).  The result is clamped
    so that 1 - |t| ≥ eps (finite 1/(1-t²)); `bilinear_root_ab` gives exact 1∓t near the poles.
    """
    t, _, _ = bilinear_root_ab(U, V, y0, iters)
    eps = jnp.finfo(t.dtype).eps
    return jnp.clip(t, -1 + eps, 1 - eps)


@partial(jax.jit, static_argnames=("iters",))
def bilinear(a, b, target, iters: int | None = None):
    """Project (a0, b0, y0) onto {(a, b, y): y = a·b} (dot over the last axis, both free).

    a = (a0 + t b0)/(1-t²), b = (b0 + t a0)/(1-t²), y = y0 - t (returned as a·b) with t the root in
    (-1, 1) of g(t) = t + ½(U/(1-t)² - V/(1+t)²) - y0, U = ½|a0+b0|², V = ½|a0-b0|².  Returns (a, b, y).
    """
    a, b, y0 = as_floats(a, b, target)
    lead = jnp.broadcast_shapes(a.shape[:-1], b.shape[:-1], y0.shape)
    n = jnp.broadcast_shapes(a.shape[-1:], b.shape[-1:])
    a = jnp.broadcast_to(a, lead + n)
    b = jnp.broadcast_to(b, lead + n)
    y0 = jnp.broadcast_to(y0, lead)
    dt = a.dtype
    iters = default_iters(dt) if iters is None else int(iters)
    u0 = (a + b) * _SQRT_HALF
    v0 = (a - b) * _SQRT_HALF
    U = jnp.sum(u0 * u0, axis=-1)
    V = jnp.sum(v0 * v0, axis=-1)
    mirrored, ts, al, amin, Us, Vs, ys = root_parts(U, V, y0, iters, p=jnp.sum(a * b, axis=-1))
    # Every case is a = A1 a0 + A2 b0 + A3 s + A4, b = B1 a0 + B2 b0 + B3 s + B4 with s = a0 ± b0
    # (+ when not mirrored, computed exactly) and per-row scalars — one fused pass over the vectors.
    sg = jnp.where(mirrored, -1.0, 1.0).astype(dt)
    q = 2 - al  # the far-side factor: 1+t (not mirrored) or 1-t (mirrored)
    inv = 1 / (al * q)  # 1/(1-t²)
    t = sg * ts
    zero = jnp.zeros_like(al)
    # (1) |t| ≤ ½: a = (a0 + t b0)/(1-t²), b = (b0 + t a0)/(1-t²) with the precise t
    mid = (inv, t * inv, zero, zero, t * inv, inv, zero, zero)
    # (2) |t| > ½: a0 + t b0 = s - sg α b0 and b0 + t a0 = sg (s - α a0): no cancellation in 1 - |t|
    pole = (zero, -sg * al * inv, inv, zero, -sg * al * inv, zero, sg * inv, zero)
    # (3) α at its floor (U' = 0 or a root within eps² of the pole): the pole-side vector P has
    # |P|² = E from the constraint and direction s/|s| (any direction when s = 0); far side Q =
    # (a0 - sg b0)/(√2 q); a = (P + Q)/√2, b = sg (P - Q)/√2
    E = jnp.maximum(2 * (ys - 1 + al) + Vs / (q * q), 0)
    nP = jnp.sqrt(2 * Us)  # = |s|
    has = nP > 0
    k = jnp.where(has, jnp.sqrt(E) / jnp.where(has, nP, 1), 0) * _SQRT_HALF
    w = jnp.where(has, 0, jnp.sqrt(E / a.shape[-1]) * _SQRT_HALF)
    h2 = 0.5 / q
    flo = (h2, -sg * h2, k, w, -sg * h2, h2, sg * k, sg * w)
    is_floor = al <= 2 * amin
    is_pole = al <= 0.5
    c = [jnp.where(is_floor, f, jnp.where(is_pole, p, m_))[..., None] for f, p, m_ in zip(flo, pole, mid)]
    s_ab = a + sg[..., None] * b
    a_new = c[0] * a + c[1] * b + c[2] * s_ab + c[3]
    b_new = c[4] * a + c[5] * b + c[6] * s_ab + c[7]
    # y = y0 - t mathematically; the dot of the returned vectors is exactly on the graph even
    # where y0 - t cancels
    return a_new, b_new, jnp.sum(a_new * b_new, axis=-1)
