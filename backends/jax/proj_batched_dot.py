"""A batch of dot families on edge means: what the consensus layout stores for a batched dot.

A ``dot`` whose right operand has batch dims, z[..., r, m] = a[..., r, :]·b[..., :, m] (attention's
q·kᵀ and p·v on [B, H, T, d]), is one independent dot family per batch index. Each projects on its
edge means exactly as ``proj_dot_means.dot_project_means`` does for a single one (DESIGN.md §4):
the same three GEMMs, batched,

    P = a @ b;  U, V = ½(|a_r|² + |b_m|²) ± P;  t = root(U, V, y0)       (per output element)
    mean over m of the a-slots = a ⊙ mean_m(ca) + (cb @ bᵀ)/M + mean_m(cea)
    mean over r of the b-slots = b ⊙ mean_r(ca) + (aᵀ @ cb)/R + mean_r(ceb)

with the coefficients (ca, cb, cea, ceb) of the exact bilinear projection in each of its numerical
branches (``proj_dot_means``), or the linear projection's when one operand never moves. An operand
broadcast over some batch dims (size 1 there) has copies in every batch index it is broadcast to:
its edge mean is the mean over those too.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from projc.errors import ProjcError

from .proj_dot_means import _coeff_parts, _coeffs_all, _coeffs_nonfloor
from .slot_storage import EdgeMeans


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


def _mean_to(x, shape):
    """x averaged over the leading dims where ``shape`` (an operand's, right-aligned) has size 1."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape[:-2]) if d == 1 and x.shape[lead + i] != 1)
    return jnp.mean(x, axis=axes, keepdims=True).reshape(shape) if axes else x


def batched_dot_project_means(a, b, y0, free: tuple[bool, bool], mode: str, iters: int | None = None,
                              P=None):
    """Project the dots z[..., r, m] = a[..., r, :]·b[..., :, m] (a ``[..., R, K]``, b ``[..., K, M]``,
    batch dims broadcasting) whose slots hold the operand values onto their graphs with target y0
    ``[..., R, M]``; returns (mean over m of the a-slots, mean over r of the b-slots, each shaped as
    its operand (None for a fixed one), projected output). ``mode``: "linear" (the fixed operand is
    data) or "bilinear" (both treated as free). ``P``: a @ b when already known."""
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    A = jnp.broadcast_to(a, batch + a.shape[-2:])
    B = jnp.broadcast_to(b, batch + b.shape[-2:])
    R, M = A.shape[-2], B.shape[-1]
    y = jnp.broadcast_to(y0, batch + (R, M))
    p = A @ B if P is None else jnp.broadcast_to(P, batch + (R, M))
    if mode == "linear":
        if free[1] and not free[0]:    # a is data: b's column m, copied per row r, moves along a_r
            d = 1 / (1 + jnp.sum(A * A, -1, keepdims=True))          # [..., R, 1]
            r = (p - y) * d
            return None, _mean_to(B - (_mT(A) @ r) / R, b.shape), y + r
        if free[0] and not free[1]:
            d = 1 / (1 + jnp.sum(B * B, -2, keepdims=True))          # [..., 1, M]
            r = (p - y) * d
            return _mean_to(A - (r @ _mT(B)) / M, a.shape), None, y + r
        raise ProjcError("linear dot projection needs exactly one free operand")
    nx = jnp.sum(A * A, -1, keepdims=True)   # [..., R, 1]
    nw = jnp.sum(B * B, -2, keepdims=True)   # [..., 1, M]
    parts = _coeff_parts(nx, nw, p, y, iters)
    sg, ts, al, amin = parts[:4]
    K = A.shape[-1]

    def means(ca, cb, cea, ceb):
        ma = mb = None
        if free[0]:
            ma = A * jnp.mean(ca, -1, keepdims=True) + (cb @ _mT(B)) / M
            if cea is not None:
                ma = ma + jnp.mean(cea, -1, keepdims=True)
            ma = _mean_to(ma, a.shape)
        if free[1]:
            mb = B * jnp.mean(ca, -2, keepdims=True) + (_mT(A) @ cb) / R
            if ceb is not None:
                mb = mb + jnp.mean(ceb, -2, keepdims=True)
            mb = _mean_to(mb, b.shape)
        return ma, mb

    # the floor branch (α at eps², rare) only runs when some element needs it (proj_dot_means)
    ma, mb = jax.lax.cond(jnp.any(al <= 2 * amin),
                          lambda: means(*_coeffs_all(*parts, K)),
                          lambda: means(*_coeffs_nonfloor(sg, ts, al), None, None))
    return ma, mb, y - sg * ts


class BatchedEdgeMeans(EdgeMeans):
    """``EdgeMeans`` for a dot with batch dims: per free operand the mean of its slots (operand-shaped)
    and the last projected output; the projection is ``batched_dot_project_means``."""

    def project(self, fam, slots, ctx, target, opts):
        a, b = self.operands(fam, slots, ctx)
        p = a @ b
        y0 = target(lambda: p)
        mode = "bilinear" if fam.mode in ("bilinear", "bilinear_reset") else "linear"
        ma, mb, y = batched_dot_project_means(a, b, y0, tuple(fam.free), mode, opts.bilinear_iters, P=p)
        means = {0: ma, 1: mb}
        return tuple(means[i] for i in fam.free_idx) + (y,), y

    def copies_per_element(self, fam, i: int, ctx) -> int:
        """M (for a) or R (for b) per batch index, times the batch indices it is broadcast over."""
        out = ctx.shapes[fam.out][0]
        shape = ctx.shapes[fam.op.inputs[i]][0]
        batch = math.prod(int(d) for d in out[:-2])
        own = math.prod(int(d) for d in shape[:-2])
        return int(out[-1] if i == 0 else out[-2]) * batch // max(own, 1)


BATCHED_EDGE_MEANS = BatchedEdgeMeans()

__all__ = ["BATCHED_EDGE_MEANS", "BatchedEdgeMeans", "batched_dot_project_means"]
