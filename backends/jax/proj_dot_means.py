"""The dot family's projection on edge means: what the consensus state layout stores for a dot.

A ``dot`` family z[r, m] = a[r, :]·b[:, m] whose slots all hold the operand values ("value form")
projects, in closed form per output element, to slots that are affine in the operand rows and
columns; their means over each edge are three GEMMs:

    P = a @ b;  U, V = ½(|a_r|² + |b_m|²) ± P;  t = root(U, V, y0)  (per output element)
    new a-slot[r, m] = ca·a_r + cb·b_m + cea·1,   new b-slot[r, m] = cb·a_r + ca·b_m + ceb·1
    mean over m of the a-slots = a ⊙ mean_m(ca) + (cb @ bᵀ)/M + mean_m(cea)
    mean over r of the b-slots = b ⊙ mean_r(ca) + (aᵀ @ cb)/R + mean_r(ceb)

(ca, cb, cea, ceb) per output element are the coefficients of the exact bilinear projection
(proj_bilinear.bilinear) in every one of its numerical branches (mid, pole, floor); the linear
projection is the same with ca = 1, cb = -r/(1+|c|²) on the fixed operand.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from projc.errors import ProjcError

from .proj_bilinear import default_iters
from .proj_root_near import root_parts_near

# (sg, ts, al, amin, Us, Vs, ys): the root's parts per output element, as _coeffs_all takes them
CoeffParts = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]


def _coeff_parts(nx, nw, p, y0, iters) -> CoeffParts:
    nx, nw, p, y0 = jnp.broadcast_arrays(nx, nw, p, y0)
    dt = nx.dtype
    iters = default_iters(dt) if iters is None else int(iters)
    half = 0.5 * (nx + nw)
    U = jnp.maximum(half + p, 0)  # = ½|a0 + b0|²
    V = jnp.maximum(half - p, 0)  # = ½|a0 - b0|²
    mirrored, ts, al, amin, Us, Vs, ys = root_parts_near(U, V, y0, iters, p=p)
    sg = jnp.where(mirrored, -1.0, 1.0).astype(dt)
    return sg, ts, al, amin, Us, Vs, ys


def _coeffs_nonfloor(sg, ts, al) -> tuple[jax.Array, jax.Array]:
    """(ca, cb) of branches (1) |t| <= ½ and (2) |t| > ½: a = (a0 + t b0)/(1 - t²), with the
    cancellation-free 1 - |t| = α."""
    inv = 1 / (al * (2 - al))
    cb = sg * jnp.where(al <= 0.5, 1 - al, ts) * inv
    return inv, cb


def _coeffs_all(sg, ts, al, amin, Us, Vs, ys, n) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(ca, cb, cea, ceb) in every branch, (3) α at its floor included."""
    q = 2 - al
    inv, cb_np = _coeffs_nonfloor(sg, ts, al)
    # (3) α at its floor: |P|² = E from the constraint, direction P0/|P0| (or uniform when P0 = 0)
    E = jnp.maximum(2 * (ys - 1 + al) + Vs / (q * q), 0)
    nP = jnp.sqrt(Us)
    has = nP > 0
    s = jnp.where(has, jnp.sqrt(E) / jnp.where(has, nP, 1), 0)
    c = jnp.sqrt(E / (2 * n))
    ca_floor = 0.5 * (s + 1 / q)
    cb_floor = sg * 0.5 * (s - 1 / q)
    cea_floor = jnp.where(has, 0, c)
    ceb_floor = jnp.where(has, 0, sg * c)
    floor = al <= 2 * amin
    zero = jnp.zeros_like(inv)
    ca = jnp.where(floor, ca_floor, inv)
    cb = jnp.where(floor, cb_floor, cb_np)
    cea = jnp.where(floor, cea_floor, zero)
    ceb = jnp.where(floor, ceb_floor, zero)
    return ca, cb, cea, ceb


def bilinear_coeffs(nx, nw, p, y0, n: int, iters: int | None = None):
    """Coefficients of the exact bilinear projection of (a0, b0, y0) onto {y = a·b}.

    Inputs per pair: nx = |a0|², nw = |b0|², p = a0·b0 (broadcasting), n = the vector length.
    Returns (ca, cb, cea, ceb, t): a = ca a0 + cb b0 + cea 1, b = cb a0 + ca b0 + ceb 1, and the
    projected output is y0 - t. Mirrors ``proj_bilinear.bilinear`` branch by branch.
    """
    sg, ts, al, amin, Us, Vs, ys = _coeff_parts(nx, nw, p, y0, iters)
    return _coeffs_all(sg, ts, al, amin, Us, Vs, ys, n) + (sg * ts,)


def dot_project_means(a, b, y0, free: tuple[bool, bool], mode: str, iters: int | None = None,
                      P=None):
    """Project a dot family z[r, m] = a[r, :]·b[:, m] (a ``[..., K]``, b ``[K, M]``) whose slots hold
    the operand values, onto its graph with target ``y0`` (``[..., M]``), and average the projected
    slots: returns (mean over m of the a-slots ``[..., K]``, mean over r of the b-slots ``[K, M]``,
    projected output ``[..., M]``). ``mode``: "linear" (the fixed operand is data) or "bilinear"
    (both treated as free; a fixed operand's new slots are discarded: the reference's reset).
    ``P``: a @ b when already known."""
    lead = a.shape[:-1]
    K = a.shape[-1]
    M = b.shape[-1]
    a2 = a.reshape(-1, K)
    R = a2.shape[0]
    y = y0.reshape(R, M)
    p = (a2 @ b) if P is None else P.reshape(R, M)
    if mode == "linear":
        if free[1] and not free[0]:   # c = a fixed, w = b free: w_m -= r_rm c_r / (1 + |c_r|²)
            d = 1 / (1 + jnp.sum(a2 * a2, -1, keepdims=True))
            r = (p - y) * d
            mb = b - (a2.T @ r) / R
            ma = a2
        elif free[0] and not free[1]:  # c = b fixed: a_r -= r_rm b_m / (1 + |b_m|²)
            d = 1 / (1 + jnp.sum(b * b, 0, keepdims=True))
            r = (p - y) * d
            ma = a2 - (r @ b.T) / M
            mb = b
        else:
            raise ProjcError("linear dot projection needs exactly one free operand")
        return ma.reshape(lead + (K,)), mb, (y + r).reshape(lead + (M,))
    nx = jnp.sum(a2 * a2, -1, keepdims=True)
    nw = jnp.sum(b * b, 0, keepdims=True)
    parts = _coeff_parts(nx, nw, p, y, iters)
    sg, ts, al, amin = parts[:4]

    def means(ca, cb, cea, ceb):
        ma = mb = None
        if free[0]:
            ma = a2 * jnp.mean(ca, -1, keepdims=True) + (cb @ b.T) / M
            if cea is not None:
                ma = ma + jnp.mean(cea, -1, keepdims=True)
        if free[1]:
            mb = b * jnp.mean(ca, 0, keepdims=True) + (a2.T @ cb) / R
            if ceb is not None:
                mb = mb + jnp.mean(ceb, 0, keepdims=True)
        return ma, mb

    # α at its floor (U = 0 with a large target, or a root within eps² of the pole) is rare: the
    # floor branch and its constant terms only run when some element needs them (where none does,
    # both paths give the same values: cea = ceb = 0 and ca, cb from the other branches)
    ma, mb = jax.lax.cond(jnp.any(al <= 2 * amin),
                          lambda: means(*_coeffs_all(*parts, K)),
                          lambda: means(*_coeffs_nonfloor(sg, ts, al), None, None))
    if ma is not None:
        ma = ma.reshape(lead + (K,))
    return ma, mb, (y - sg * ts).reshape(lead + (M,))


__all__ = ["bilinear_coeffs", "dot_project_means"]
