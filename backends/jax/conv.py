"""The ``conv`` family: a Conv (grouped, depthwise) or ConvTranspose as a dot per output position on
the patch view, projected through ``lax.conv_general_dilated`` and its transposes.

A ``conv`` family y[n, m, o] = a[n, o, g(m), :] · wc[m, :] (``projc.ops.convolution``: ``a`` the
patch view of x, ``wc`` the canonical kernel, g(m) the group of output channel m) owns, like a
``dot``, one private copy of the patch vector and one of the kernel row per output element.

Copies layout (``slot_map``): the slots are materialized ``[N, OC, *O, C/g·K]`` (every solver).

Consensus layout (``ConvMeans``): the slots are never materialized. Projected from value form
(every copy holds its operand's value) they are affine in the patch and kernel rows, per output
element (``proj_dot_means``: a' = ca·a + cb·wc + cea, wc' = cb·a + ca·wc + ceb), and their means
over each edge need only convolutions, the three kernels of a gradient step:

    P = conv(x, w)                                       the output at the current values
    |a|² per (n, o, group) = conv(x², ones)              a one-output-channel-per-group conv
    mean of x's copies = [x ⊙ Lᵀ(mean_g ca) + convᵀ_x(cb) / M_g + Lᵀ(mean_g cea)] / count
    mean of w's copies = w ⊙ mean_r(ca) + convᵀ_w(cb) / R + mean_r(ceb)

where Lᵀ is the transpose of x ↦ conv(x, ones) (col2im of a per-position scalar: a transposed
convolution with a ones kernel), convᵀ_x and convᵀ_w the transposes of the convolution in x and in
w (its input and weight gradients), M_g = OC / group the copies of a patch entry per position, R
the number of output positions, and ``count`` (a constant of the compiled step) how many patch
entries hold each input pixel. The patch view's dummy entries (padding, the zeros between dilated
pixels of a ConvTranspose) are free slot entries whose copies are discarded, exactly as the
``patches`` + ``dot`` lowering treats them; the mean of x's copies is stored input-shaped (what the
``patches`` move's col2im averaging made of the patch-shaped mean), so no patch tensor is formed.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from projc.errors import ProjcError
from projc.ops.convolution import canonical_kernel, conv, conv_canonical, geometry, patch_view

from .proj_dot_means import _coeff_parts, _coeffs_all, _coeffs_nonfloor
from .slot_storage import EdgeMeans, static_eval

if TYPE_CHECKING:
    from .families import Family, ProjOptions


def geometry_of(fam: Family):
    return geometry(fam.op.params, fam.op.inputs[1].shape[2:])


# -- copies: materialized slots [N, OC, *O, C/g·K] --------------------------------------------------

def slot_map(fam: Family, i: int, out_shape):
    """operand value -> its slots ``[N, OC, *O, C/g·K]`` (the copies layout)."""
    geo = geometry_of(fam)
    out_shape = tuple(out_shape)
    oc, n = out_shape[1], geo.n

    if i == 0:
        def expand(x):
            pv = patch_view(x, geo)                               # [N, *O, G, K]
            g, k = pv.shape[-2], pv.shape[-1]
            pv = jnp.broadcast_to(pv[..., None, :], pv.shape[:-1] + (oc // g, k))
            pv = jnp.reshape(pv, pv.shape[:-3] + (oc, k))         # [N, *O, OC, K]
            return jnp.moveaxis(pv, n + 1, 1)
        return expand

    def expand_w(w):
        wc = canonical_kernel(w, geo)
        wm = jnp.reshape(wc, (oc,) + (1,) * n + (-1,))
        return jnp.broadcast_to(wm, out_shape + (wm.shape[-1],))
    return expand_w


# -- consensus: edge means, projected through convolutions -------------------------------------------

class ConvOps:
    """The linear maps of one conv family at one batch shape (everything static but the operands)."""

    def __init__(self, fam: Family, x_shape, w_shape, dtype):
        self.geo = geo = geometry_of(fam)
        self.x_shape, self.w_shape, self.dtype = tuple(x_shape), tuple(w_shape), dtype
        wc_shape = jax.eval_shape(lambda w: canonical_kernel(w, geo), jax.ShapeDtypeStruct(w_shape, dtype)).shape
        self.oc, self.cg = wc_shape[0], wc_shape[1]
        self.g = geo.group
        self.mg = self.oc // self.g
        self.k = int(self.cg * math.prod(geo.kernel))            # patch vector length
        self.out_spatial = geo.out_spatial(self.x_shape[2:])
        self.rows = int(self.x_shape[0] * math.prod(self.out_spatial))  # R: output positions
        ones = np.ones((self.g, self.cg) + geo.kernel, dtype)     # one output channel per group
        self._ones = ones

        def norms(x):  # Σ over each (position, group) patch of x: conv(x, ones) [N, G, *O]
            return conv_canonical(x, jnp.asarray(ones), geo)
        self.norms = norms
        self.count = static_eval(lambda: self._spread((1,) + self.x_shape[1:], jnp.ones(
            (1, self.g) + self.out_spatial, dtype)))              # [1, C, *S] patch entries per pixel
        self.covered = (self.count > 0).astype(dtype)

    def _spread(self, x_shape, s):
        """Lᵀ(s): the transpose of x ↦ conv(x, ones) (``x_shape``) at s ``[N, G, *O]``."""
        return jax.linear_transpose(self.norms, jax.ShapeDtypeStruct(tuple(x_shape), self.dtype))(s)[0]

    def spread(self, s):
        return self._spread(self.x_shape, s)

    def per_group(self, t):
        """[N, OC, *O] -> [N, G, *O]: the mean over each group's output channels."""
        n = t.shape[0]
        return jnp.mean(jnp.reshape(t, (n, self.g, self.mg) + t.shape[2:]), 2)

    def to_channels(self, t):
        """[N, G, *O] -> [N, OC, *O]: each group's value for its output channels."""
        if self.g == 1:
            return t
        n = t.shape[0]
        t = jnp.broadcast_to(t[:, :, None], (n, self.g, self.mg) + t.shape[2:])
        return jnp.reshape(t, (n, self.oc) + t.shape[3:])

    def per_channel_w(self, s, w):
        """A per-output-channel vector ``[OC]`` laid out like w (each entry its channel's value)."""
        geo = self.geo
        full = jnp.broadcast_to(jnp.reshape(s, (self.oc,) + (1,) * (geo.n + 1)),
                                (self.oc, self.cg) + geo.kernel)
        if not geo.transpose:
            return full
        back = jax.linear_transpose(lambda v: canonical_kernel(v, geo), jax.ShapeDtypeStruct(w.shape, w.dtype))
        return back(full)[0]  # canonical_kernel is a permutation: its transpose is its inverse

    def w_sq_norms(self, w):
        wc = canonical_kernel(w, self.geo)
        return jnp.sum(jnp.reshape(wc * wc, (self.oc, -1)), -1)   # [OC]

    def out_channel(self, v):
        """[OC] -> [1, OC, 1, ...]."""
        return jnp.reshape(v, (1, self.oc) + (1,) * self.geo.n)


def _ops(fam: Family, ctx) -> ConvOps:
    x_shape, dtype = ctx.shapes[fam.op.inputs[0]]
    w_shape, _ = ctx.shapes[fam.op.inputs[1]]
    return ConvOps(fam, x_shape, w_shape, dtype)


def conv_project_means(ops: ConvOps, x, w, y0, free: tuple[bool, bool], mode: str,
                       iters: int | None = None, P=None):
    """Project a conv family whose slots hold the operand values (x, w) onto its graph with target
    ``y0`` ``[N, OC, *O]``, and average the projected slots over each edge: returns (mean of x's
    copies, input-shaped, where a pixel has copies; mean of w's copies; the projected output).
    ``mode``: "linear" (the fixed operand is data) or "bilinear" (both treated as free, a fixed
    operand's new slots discarded: the reference's reset). The same numbers as ``dot_project_means``
    on the patch view followed by the ``patches`` move's col2im averaging."""
    geo = ops.geo

    def f(xx, ww):
        return conv(xx, ww, geo)

    p = f(x, w) if P is None else P
    x_t = jax.linear_transpose(lambda xx: f(xx, w), jax.ShapeDtypeStruct(x.shape, x.dtype))
    w_t = jax.linear_transpose(lambda ww: f(x, ww), jax.ShapeDtypeStruct(w.shape, w.dtype))
    count = np.maximum(ops.count, 1)
    R, M = ops.rows, ops.mg
    nx = ops.to_channels(ops.norms(x * x)) if (free[1] or mode == "bilinear") else None
    if mode == "linear":
        if free[1] and not free[0]:   # x data, w free: w_m -= Σ_r r_rm a_r / R
            r = (p - y0) / (1 + nx)
            return x, w - w_t(r)[0] / R, y0 + r
        if free[0] and not free[1]:   # w fixed: a_r -= Σ_m r_rm wc_m / M, then col2im / count
            r = (p - y0) / (1 + ops.out_channel(ops.w_sq_norms(w)))
            return x - x_t(r)[0] / (M * count), w, y0 + r
        raise ProjcError("linear conv projection needs exactly one free operand")
    nw = ops.out_channel(ops.w_sq_norms(w))
    parts = _coeff_parts(nx, nw, p, y0, iters)
    sg, ts, al, amin = parts[:4]
    reduce_rows = (0,) + tuple(range(2, 2 + geo.n))

    def means(ca, cb, cea, ceb):
        mx = mw = None
        if free[0]:
            mx = x * ops.spread(ops.per_group(ca)) + x_t(cb)[0] / M
            if cea is not None:
                mx = mx + ops.spread(ops.per_group(cea))
            mx = mx / count
        if free[1]:
            mw = w * ops.per_channel_w(jnp.mean(ca, reduce_rows), w) + w_t(cb)[0] / R
            if ceb is not None:
                mw = mw + ops.per_channel_w(jnp.mean(ceb, reduce_rows), w)
        return mx, mw

    # the floor branch (rare) only runs when some element needs it (as in dot_project_means)
    mx, mw = jax.lax.cond(jnp.any(al <= 2 * amin),
                          lambda: means(*_coeffs_all(*parts, ops.k)),
                          lambda: means(*_coeffs_nonfloor(sg, ts, al), None, None))
    return mx, mw, y0 - sg * ts


class ConvMeans(EdgeMeans):
    """A conv family in the consensus layout: the mean of x's copies (input-shaped), of w's, and the
    last projected output. Exact under the same value-form plan as a dot's ``EdgeMeans``."""

    def output(self, fam: Family, slots, ctx, form: str = "value"):
        if form == "proj":
            return slots[-1]
        x, w = self.operands(fam, slots, ctx)
        return conv(x, w, geometry_of(fam))

    def edge_mean(self, fam: Family, i: int, j: int, slots, ctx):
        v_shape, dtype = ctx.shapes[fam.op.inputs[i]]
        if i == 1:
            return slots[j], np.ones(v_shape, dtype)
        return slots[j], np.broadcast_to(_ops(fam, ctx).covered, v_shape)

    def project(self, fam: Family, slots, ctx, target, opts: ProjOptions):
        x, w = self.operands(fam, slots, ctx)
        ops = _ops(fam, ctx)
        p = conv(x, w, ops.geo)
        y0 = target(lambda: p)
        mode = "bilinear" if fam.mode in ("bilinear", "bilinear_reset") else "linear"
        mx, mw, y = conv_project_means(ops, x, w, y0, tuple(fam.free), mode, opts.bilinear_iters, P=p)
        means = {0: mx, 1: mw}
        return tuple(means[i] for i in fam.free_idx) + (y,), y

    def sq_dist(self, fam: Family, a, b, ctx, num):
        """Over the edge means, each entry weighted by its copies (see ``EdgeMeans.sq_dist``)."""
        ops = _ops(fam, ctx)
        den = 0
        for j, i in enumerate(fam.free_idx):
            d = a[j] - b[j]
            if i == 0:
                weight = ops.count * ops.mg
                num = num + jnp.sum(weight * d * d)
                den += int(np.sum(weight)) * d.shape[0]
            else:
                num = num + ops.rows * jnp.sum(d * d)
                den += ops.rows * d.size
        return num, den


CONV_MEANS = ConvMeans()

__all__ = ["CONV_MEANS", "ConvMeans", "ConvOps", "conv_project_means", "slot_map"]
