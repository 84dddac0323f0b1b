"""A convolution's dot family projected on edge means, with convolutions instead of im2col patches.

A conv lowers to ``z = patches(h) @ b`` (``passes/lower.py``): the dot's left operand is the im2col
matrix ``a = patches(h)`` ``[R, K]`` (R = batch x output pixels, K = C x kernel taps) of the image
``h`` ``[B, C, *S]``, and ``b`` ``[K, M]`` is the reshaped kernel. ``proj_dot_means`` projects such a
family with three GEMMs on ``a``, which the consensus layout then maps back to ``h`` by col2im
(the transpose of ``patches``) and a division by each pixel's number of copies. Every one of those
steps is a convolution or its transpose applied to ``h``, so ``a`` is never built:

    P = a @ b                       = conv(h, Wk)                      (Wk: b as an [M, C, *kernel] kernel)
    |a_r|²                          = conv(Σ_c h², ones kernel)
    col2im(a ⊙ s), s per row        = h ⊙ T1(s)                        (T1: transpose of conv(·, ones))
    col2im(cb @ bᵀ)                 = T2(cb)                           (T2: transpose of conv(·, Wk) in h)
    aᵀ @ cb                         = the kernel transpose of conv(h, ·) applied to cb

The result is the same mean of the h-copies the patches route gives (``dot_project_means`` then
col2im / count), up to rounding: the same formula, summed in another order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .proj_dot_means import _coeff_parts, _coeffs_all, _coeffs_nonfloor


class ConvGeometry:
    """The window of one ``patches`` move (kernel, strides, pads, dilations) as convolutions."""

    def __init__(self, params: dict):
        kernel = [int(k) for k in params["kernel"]]
        n = len(kernel)
        self.kernel = tuple(kernel)
        self.strides = tuple(int(s) for s in (params.get("strides") or [1] * n))
        pads = [int(p) for p in (params.get("pads") or [0] * (2 * n))]
        self.padding = tuple((pads[i], pads[i + n]) for i in range(n))
        self.dilations = tuple(int(d) for d in (params.get("dilations") or [1] * n))

    def conv(self, h, wk):
        """``patches(h) @ wk.reshape(M, -1).T`` as ``[B, M, *O]``."""
        return jax.lax.conv_general_dilated(h, wk, self.strides, self.padding, rhs_dilation=self.dilations)

    def kernel_of(self, b, channels: int):
        """The dot's right operand ``[C*taps, M]`` as a conv kernel ``[M, C, *kernel]``."""
        return b.T.reshape((b.shape[1], channels) + self.kernel)

    def tap_sum_transpose(self, s, image_shape, dtype):
        """T1: per pixel, the sum of ``s`` ``[B, 1, *O]`` over the windows that contain the pixel."""
        ones = jnp.ones((1, 1) + self.kernel, dtype)
        prim = jax.ShapeDtypeStruct((image_shape[0], 1) + tuple(image_shape[2:]), dtype)
        (out,) = jax.linear_transpose(lambda u: self.conv(u, ones), prim)(s)
        return out

    def copies(self, image_shape, dtype) -> np.ndarray:
        """How many patch entries copy each pixel (``[1, 1, *S]``, numpy: it depends on shapes only)."""
        shape = (1, 1) + tuple(image_shape[2:])
        out = jax.eval_shape(self.conv, jax.ShapeDtypeStruct(shape, dtype),
                             jax.ShapeDtypeStruct((1, 1) + self.kernel, dtype)).shape
        with jax.ensure_compile_time_eval():
            return np.asarray(self.tap_sum_transpose(jnp.ones(out, dtype), shape, dtype))


def conv_project_means(h, b, y0, geom: ConvGeometry, cnt, iters: int | None = None):
    """Project the dot family ``z = patches(h) @ b`` (both operands free, slots in value form) onto
    its graph with target ``y0`` ``[B, *O, M]`` and average the projected slots: returns (the mean of
    the h-copies, operand-shaped ``[B, C, *S]``, with ``cnt`` the copies per pixel; the mean over rows
    of the b-slots ``[K, M]``; the projected output ``[B, *O, M]``)."""
    C, M = h.shape[1], b.shape[1]
    wk = geom.kernel_of(b, C)
    out = jnp.moveaxis(geom.conv(h, wk), 1, -1)          # [B, *O, M]
    lead = out.shape[:-1]
    R = int(np.prod(lead))
    p = out.reshape(R, M)
    y = y0.reshape(R, M)
    ones = jnp.ones((1, 1) + geom.kernel, h.dtype)
    nx = geom.conv(jnp.sum(h * h, 1, keepdims=True), ones).reshape(R, 1)
    nw = jnp.sum(b * b, 0, keepdims=True)
    parts = _coeff_parts(nx, nw, p, y, iters)
    sg, ts, al, amin = parts[:4]
    K = b.shape[0]
    to_image = jax.linear_transpose(lambda u: geom.conv(u, wk), jax.ShapeDtypeStruct(h.shape, h.dtype))
    to_kernel = jax.linear_transpose(lambda k: geom.conv(h, k), jax.ShapeDtypeStruct(wk.shape, wk.dtype))
    row_shape = (lead[0], 1) + lead[1:]                 # a per-row scalar as a 1-channel image
    safe = np.maximum(cnt, 1).astype(h.dtype)

    def means(ca, cb, cea, ceb):
        cb_img = jnp.moveaxis(cb.reshape(lead + (M,)), -1, 1)   # [B, M, *O]
        s = jnp.mean(ca, -1).reshape(row_shape)
        (back,) = to_image(cb_img)
        total = h * geom.tap_sum_transpose(s, h.shape, h.dtype) + back / M
        (kb,) = to_kernel(cb_img)                                # [M, C, *kernel] = (aᵀ @ cb)ᵀ
        mb = b * jnp.mean(ca, 0, keepdims=True) + kb.reshape(M, K).T / R
        if cea is not None:
            total = total + geom.tap_sum_transpose(jnp.mean(cea, -1).reshape(row_shape), h.shape, h.dtype)
            mb = mb + jnp.mean(ceb, 0, keepdims=True)
        return total / safe, mb

    # the floor branch only where some element needs it (as in dot_project_means)
    mh, mb = jax.lax.cond(jnp.any(al <= 2 * amin),
                          lambda: means(*_coeffs_all(*parts, K)),
                          lambda: means(*_coeffs_nonfloor(sg, ts, al), None, None))
    return mh, mb, (y - sg * ts).reshape(lead + (M,))


__all__ = ["ConvGeometry", "conv_project_means"]
