"""The ``conv`` family: a Conv (grouped, depthwise) or ConvTranspose as a dot per output position on
the patch view, projected through ``lax.conv_general_dilated`` and its transposes.

A ``conv`` family y[n, m, o] = a[n, o, g(m), :] · wc[m, :] (``projc.ops.convolution``: ``a`` the
patch view of x, ``wc`` the canonical kernel, g(m) the group of output channel m) owns, like a
``dot``, one private copy of the patch vector and one of the kernel row per output element.

The family is channels-last: x ``[N, *S, C]``, y ``[N, *O, OC]``.

Copies layout (``slot_map``): the slots are materialized ``[N, *O, OC, C/g·K]`` (every solver).

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

import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.errors import ProjcError
from projc.ops.convolution import (
    block_diagonal,
    canonical_kernel,
    conv,
    conv_last,
    dense_conv,
    depthwise_conv,
    geometry,
    hwio,
    is_depthwise,
    nhwc_numbers,
    patch_view,
    shifted,
)

from .proj_dot_means import _coeff_parts, _coeffs_all, _coeffs_nonfloor
from .slot_storage import EdgeMeans, static_eval

if TYPE_CHECKING:
    from .families import Family, ProjOptions


def geometry_of(fam: Family):
    w = fam.op.inputs[1]
    assert w is not None  # a conv family's weight
    return geometry(fam.op.params, w.shape[2:])


# -- copies: materialized slots [N, *O, OC, C/g·K] --------------------------------------------------

def slot_map(fam: Family, i: int, out_shape):
    """operand value -> its slots ``[N, *O, OC, C/g·K]`` (the copies layout)."""
    geo = geometry_of(fam)
    out_shape = tuple(out_shape)
    oc = out_shape[-1]

    if i == 0:
        def expand(x):
            pv = patch_view(x, geo)                               # [N, *O, G, K]
            g, k = pv.shape[-2], pv.shape[-1]
            pv = jnp.broadcast_to(pv[..., None, :], pv.shape[:-1] + (oc // g, k))
            return jnp.reshape(pv, pv.shape[:-3] + (oc, k))       # [N, *O, OC, K]
        return expand

    def expand_w(w):
        wc = jnp.reshape(canonical_kernel(w, geo), (oc, -1))
        return jnp.broadcast_to(wc, out_shape + (wc.shape[-1],))
    return expand_w


# -- consensus: edge means, projected through convolutions -------------------------------------------

def _dilate(sizes, dilation) -> tuple:
    return tuple(0 if s == 0 else 1 + d * (s - 1) for s, d in zip(sizes, dilation))


class ConvOps:
    """The linear maps of one conv family at one batch shape: x ``[N, *S, C]``, outputs
    ``[N, *O, OC]``. Every convolution is in a form XLA's CPU backend runs as a library call
    inside loops (``projc.ops.convolution``): the transposes in x and in w (the input and weight
    gradients) are written as such convolutions here, not left to ``jax.linear_transpose``, whose
    convolutions have other dimension orders and fall back to naive loops inside ``lax.scan``."""

    def __init__(self, fam: Family, x_shape, w_shape, dtype):
        self.geo = geo = geometry_of(fam)
        self.w_shape, self.dtype = tuple(w_shape), dtype
        self.xh_shape = tuple(x_shape)                            # [N, *S, C]
        wc_shape = jax.eval_shape(lambda w: canonical_kernel(w, geo), jax.ShapeDtypeStruct(w_shape, dtype)).shape
        self.oc, self.cg = wc_shape[0], wc_shape[1]
        self.c = self.xh_shape[-1]
        self.g = geo.group
        self.mg = self.oc // self.g
        self.depthwise = is_depthwise(geo, wc_shape)
        self.k = int(self.cg * math.prod(geo.kernel))            # patch vector length
        self.out_spatial = geo.out_spatial(self.xh_shape[1:-1])
        self.rows = int(self.xh_shape[0] * math.prod(self.out_spatial))  # R: output positions
        # Σ of each (position, group) patch: a conv with a ones kernel, one output channel per group
        member = np.kron(np.eye(self.g, dtype=dtype), np.ones((1, self.cg), dtype))  # [G, C]
        self._ones = np.broadcast_to(member.reshape(member.shape + (1,) * geo.n), member.shape + geo.kernel)
        one_shape = (1,) + self.xh_shape[1:]
        self.count = static_eval(lambda: self._spread(one_shape, jnp.ones(
            (1,) + self.out_spatial + (self.g,), dtype)))          # [1, *S, C] patch entries per pixel

    # -- the convolution and its transposes --------------------------------------------------------
    def f(self, xh, w):
        """The convolution, channels-last."""
        return conv_last(xh, canonical_kernel(w, self.geo), self.geo)

    def _xgrad_dense(self, g, wd, x_spatial):
        """Transpose in x of ``dense_conv(·, wd)`` at g ``[N, *O, OC]`` -> ``[N, *S, C]``."""
        geo, n = self.geo, self.geo.n
        k = tuple(wd.shape[2:])
        kd, sd = _dilate(k, geo.rhs_dilation), _dilate(x_spatial, geo.lhs_dilation)
        od = _dilate(g.shape[1:n + 1], geo.window_strides)
        before = [kd[i] - geo.padding[i][0] - 1 for i in range(n)]
        pads = [(b, sd[i] + kd[i] - 1 - od[i] - b) for i, b in enumerate(before)]
        kern = jnp.flip(jnp.swapaxes(hwio(wd), -1, -2), tuple(range(n)))   # [*k, OC, C], flipped
        return lax.conv_general_dilated(g, kern, window_strides=geo.lhs_dilation, padding=pads,
                                        lhs_dilation=geo.window_strides, rhs_dilation=geo.rhs_dilation,
                                        dimension_numbers=nhwc_numbers(n))

    def _wgrad_dense(self, xh, g):
        """Transpose in the dense kernel of ``dense_conv(xh, ·)`` at g: ``[OC, C, *k]``."""
        geo, n = self.geo, self.geo.n
        kd, sd = _dilate(geo.kernel, geo.rhs_dilation), _dilate(xh.shape[1:n + 1], geo.lhs_dilation)
        od = _dilate(g.shape[1:n + 1], geo.window_strides)
        pads = [(lo, od[i] - sd[i] + kd[i] - lo - 1) for i, (lo, _) in enumerate(geo.padding)]
        lhs = jnp.transpose(xh, (n + 1,) + tuple(range(1, n + 1)) + (0,))   # [C, *S, N]: C the batch
        rhs = jnp.transpose(g, tuple(range(1, n + 1)) + (0, n + 1))          # [*O, N, OC]
        out = lax.conv_general_dilated(lhs, rhs, window_strides=geo.rhs_dilation, padding=pads,
                                       lhs_dilation=geo.lhs_dilation, rhs_dilation=geo.window_strides,
                                       dimension_numbers=nhwc_numbers(n))    # [C, *k, OC]
        return jnp.transpose(out, (n + 1, 0) + tuple(range(1, n + 1)))

    def _to_w(self, wc_like, w):
        """A canonical-kernel-shaped array laid out like w (canonical_kernel is a permutation: its
        transpose is its inverse)."""
        if not self.geo.transpose:
            return wc_like
        back = jax.linear_transpose(lambda v: canonical_kernel(v, self.geo), jax.ShapeDtypeStruct(w.shape, w.dtype))
        return back(wc_like)[0]

    def xgrad(self, g, w):
        """Σ_m g[r, m] · (the kernel row of m), back on x's pixels: ``[N, *S, C]``."""
        wc = canonical_kernel(w, self.geo)
        if self.depthwise:
            xs = jax.ShapeDtypeStruct(self.xh_shape, g.dtype)
            return jax.linear_transpose(lambda v: depthwise_conv(v, wc, self.geo), xs)(g)[0]
        return self._xgrad_dense(g, block_diagonal(wc, self.g), self.xh_shape[1:-1])

    def wgrad(self, xh, g, w, moving: bool = False):
        """Σ_r g[r, m] · (the patch of r), laid out like w. ``moving``: xh changes every step."""
        geo = self.geo
        if self.depthwise:
            wcs = jax.ShapeDtypeStruct((self.oc, 1) + geo.kernel, g.dtype)
            wc = jax.linear_transpose(lambda v: depthwise_conv(xh, v, geo), wcs)(g)[0]
        elif self.g == 1 and not moving:
            # Σ_r g[r, m] a_r as one GEMM on the patch view: for a data input the patches are
            # loop-invariant. A moving input takes the convolution below: forming its K-fold patch
            # view every step cost twice the convolution (cnn2_digits' second conv, in a scan)
            col = jnp.reshape(patch_view(xh, geo), (self.rows, self.k))
            wc = jnp.reshape(jnp.reshape(g, (self.rows, self.oc)).T @ col, (self.oc, self.cg) + geo.kernel)
        else:
            dense = self._wgrad_dense(xh, g)                                  # [OC, C, *k]
            if self.g == 1:
                wc = dense
            else:  # the diagonal blocks
                blocks = jnp.reshape(dense, (self.g, self.mg, self.g, self.cg) + geo.kernel)
                wc = jnp.reshape(jnp.einsum("gmgc...->gmc...", blocks), (self.oc, self.cg) + geo.kernel)
        return self._to_w(wc, w)

    def norms(self, xh):
        """Σ over each (position, group) patch of xh: ``[N, *O, G]``."""
        if self.depthwise:
            views = shifted(xh, self.geo)
            return functools.reduce(jnp.add, views)
        return dense_conv(xh, jnp.asarray(self._ones), self.geo)

    def _spread(self, xh_shape, s):
        """Lᵀ(s): the transpose of ``norms`` at s ``[N, *O, G]`` -> ``[N, *S, C]``."""
        if self.depthwise:
            return jax.linear_transpose(self.norms, jax.ShapeDtypeStruct(tuple(xh_shape), self.dtype))(s)[0]
        return self._xgrad_dense(s, jnp.asarray(self._ones, s.dtype), tuple(xh_shape[1:-1]))

    def spread(self, s):
        return self._spread(self.xh_shape, s)

    def per_group(self, t):
        """[N, *O, OC] -> [N, *O, G]: the mean over each group's output channels."""
        if self.g == 1:
            return jnp.mean(t, -1, keepdims=True)
        return jnp.mean(jnp.reshape(t, t.shape[:-1] + (self.g, self.mg)), -1)

    def to_channels(self, t):
        """[N, *O, G] -> [N, *O, OC]: each group's value for its output channels (G = 1: as is,
        it broadcasts)."""
        if self.g == 1:
            return t
        t = jnp.broadcast_to(t[..., None], t.shape + (self.mg,))
        return jnp.reshape(t, t.shape[:-2] + (self.oc,))

    def per_channel_w(self, s, w):
        """A per-output-channel vector ``[OC]`` laid out like w (each entry its channel's value)."""
        geo = self.geo
        full = jnp.broadcast_to(jnp.reshape(s, (self.oc,) + (1,) * (geo.n + 1)),
                                (self.oc, self.cg) + geo.kernel)
        return self._to_w(full, w)

    def w_sq_norms(self, w):
        wc = canonical_kernel(w, self.geo)
        return jnp.sum(jnp.reshape(wc * wc, (self.oc, -1)), -1)   # [OC]


def _ops(fam: Family, ctx) -> ConvOps:
    x_shape, dtype = ctx.shapes[fam.op.inputs[0]]
    w_shape, _ = ctx.shapes[fam.op.inputs[1]]
    return ConvOps(fam, x_shape, w_shape, dtype)


def conv_project_means(ops: ConvOps, x, w, y0, free: tuple[bool, bool], mode: str,
                       iters: int | None = None, P=None):
    """Project a conv family whose slots hold the operand values (x, w) onto its graph with target
    ``y0`` ``[N, *O, OC]``, and average the projected slots over each edge: returns (mean of x's
    copies, input-shaped, where a pixel has copies; mean of w's copies; the projected output).
    ``mode``: "linear" (the fixed operand is data) or "bilinear" (both treated as free, a fixed
    operand's new slots discarded: the reference's reset). ``P``: conv(x, w) when known. The same
    numbers as ``dot_project_means`` on the patch view followed by the ``patches`` move's col2im
    averaging."""
    xh = x
    p = ops.f(xh, w) if P is None else P
    count = np.maximum(ops.count, 1)
    R, M = ops.rows, ops.mg
    nx = ops.to_channels(ops.norms(xh * xh)) if (free[1] or mode == "bilinear") else None
    if mode == "linear":
        if free[1] and not free[0]:   # x data, w free: w_m -= Σ_r r_rm a_r / R
            assert nx is not None  # computed when w is free
            r = (p - y0) / (1 + nx)
            return x, w - ops.wgrad(xh, r, w) / R, y0 + r
        if free[0] and not free[1]:   # w fixed: a_r -= Σ_m r_rm wc_m / M, then col2im / count
            r = (p - y0) / (1 + ops.w_sq_norms(w))
            return xh - ops.xgrad(r, w) / (M * count), w, y0 + r
        raise ProjcError("linear conv projection needs exactly one free operand")
    sg, ts, al, amin, Us, Vs, ys = _coeff_parts(nx, ops.w_sq_norms(w), p, y0, iters)
    rows = tuple(range(ops.geo.n + 1))

    def means(ca, cb, cea, ceb):
        mx = mw = None
        if free[0]:
            mx = xh * ops.spread(ops.per_group(ca)) + ops.xgrad(cb, w) / M
            if cea is not None:
                mx = mx + ops.spread(ops.per_group(cea))
            mx = mx / count
        if free[1]:
            mw = w * ops.per_channel_w(jnp.mean(ca, rows), w) + ops.wgrad(xh, cb, w, moving=free[0]) / R
            if ceb is not None:
                mw = mw + ops.per_channel_w(jnp.mean(ceb, rows), w)
        return mx, mw

    def with_floor():
        ca, cb, cea, ceb = _coeffs_all(sg, ts, al, amin, Us, Vs, ys, ops.k)
        return means(ca, cb, cea, ceb)

    def without_floor():
        ca, cb = _coeffs_nonfloor(sg, ts, al)
        return means(ca, cb, None, None)

    # the floor branch (rare) only runs when some element needs it (as in dot_project_means)
    mx, mw = jax.lax.cond(jnp.any(al <= 2 * amin), with_floor, without_floor)
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
        return slots[j], np.broadcast_to((_ops(fam, ctx).count > 0).astype(dtype), v_shape)

    def project(self, fam: Family, slots, ctx, target, opts: ProjOptions):
        x, w = self.operands(fam, slots, ctx)
        ops = _ops(fam, ctx)
        p = ops.f(x, w)
        y0 = target(lambda: p)
        mode = "bilinear" if fam.mode in ("bilinear", "bilinear_reset") else "linear"
        free_x, free_w = fam.free  # two operands
        mx, mw, y = conv_project_means(ops, x, w, y0, (free_x, free_w), mode, opts.bilinear_iters, P=p)
        means = {0: mx, 1: mw}
        return tuple(means[i] for i in fam.free_idx) + (y,), y

    def sq_dist(self, fam: Family, a, b, ctx, num):
        """Over the edge means, each entry weighted by its copies (see ``EdgeMeans.sq_dist``); the
        count of slot entries includes the patch view's dummy entries, as the copies layout's does
        (in value form they hold zeros in both states, so the sum is exact there)."""
        ops = _ops(fam, ctx)
        den = 0
        for j, i in enumerate(fam.free_idx):
            d = a[j] - b[j]
            weight = ops.count * ops.mg if i == 0 else ops.rows
            num = num + jnp.sum(weight * d * d)
            den += ops.rows * ops.oc * ops.k
        return num, den


CONV_MEANS = ConvMeans()

__all__ = ["CONV_MEANS", "ConvMeans", "ConvOps", "conv_project_means", "slot_map"]
