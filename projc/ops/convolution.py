"""The geometry of projc's ``conv`` family: a Conv or a ConvTranspose as one convolution over the
(lhs-dilated, padded) input, and the patch view on which it is a dot per output position.

Every ``conv`` op (``projc.ir.constraints``) is, whatever ONNX op it came from,

    y = lax.conv_general_dilated(x, canonical_kernel(w), window_strides, padding, lhs_dilation,
                                 rhs_dilation, feature_group_count=group)

with the canonical kernel ``[OC, C/group, *k]``. A Conv's weight is already canonical; a
ConvTranspose's ``[C, OC/group, *k]`` is swapped per group and flipped spatially, and its strides
become the lhs dilation of a stride-1 convolution padded by ``(k-1)·d - pad`` (ONNX's
``output_padding`` widens the end). ``patch_view`` is the matching im2col: y[n, m, o] =
patch_view(x)[n, o, g(m), :] · canonical_kernel(w)[m].ravel(), the patch entries that fall on
padding or between dilated input pixels being zeros (the patch view's dummy entries).
"""
from __future__ import annotations

import itertools

import jax.numpy as jnp
from jax import lax

from projc.ir.conv_geometry import ConvGeometry, geometry, out_shape, patch_length  # noqa: F401


def canonical_kernel(w, geo: ConvGeometry):
    """The weight as a Conv kernel ``[OC, C/group, *k]`` (a permutation of w's entries)."""
    if not geo.transpose:
        return w
    c_in, per_group = w.shape[0], w.shape[1]
    g = geo.group
    k = tuple(w.shape[2:])
    grouped = jnp.swapaxes(jnp.reshape(w, (g, c_in // g, per_group) + k), 1, 2)
    return jnp.flip(jnp.reshape(grouped, (g * per_group, c_in // g) + k), axis=tuple(range(2, 2 + geo.n)))


def conv_canonical(x, wc, geo: ConvGeometry, precision=None, group: int | None = None):
    """The convolution of x with a canonical kernel ``wc``."""
    return lax.conv_general_dilated(x, wc, window_strides=geo.window_strides, padding=geo.padding,
                                    lhs_dilation=geo.lhs_dilation, rhs_dilation=geo.rhs_dilation,
                                    feature_group_count=geo.group if group is None else group,
                                    precision=precision)


def conv(x, w, geo: ConvGeometry, precision=None):
    """y = the ``conv`` op's forward ``[N, OC, *O]``."""
    return conv_canonical(x, canonical_kernel(w, geo), geo, precision)


def patch_view(x, geo: ConvGeometry):
    """im2col of the lhs-dilated, padded input: ``[N, *O, group, C/group * prod(k)]``, channel-major
    within a patch (the order of ``canonical_kernel(w)[m].ravel()``)."""
    cfg = [(0, 0, 0), (0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(geo.padding, geo.lhs_dilation)]
    x = jnp.asarray(x)
    xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    out = geo.out_spatial(x.shape[2:])
    cols = []
    for offs in itertools.product(*[range(k) for k in geo.kernel]):
        index = [slice(None), slice(None)]
        for i, o in enumerate(offs):
            start = o * geo.rhs_dilation[i]
            index.append(slice(start, start + (out[i] - 1) * geo.window_strides[i] + 1, geo.window_strides[i]))
        cols.append(xp[tuple(index)])
    col = jnp.moveaxis(jnp.stack(cols, axis=-1), 1, -2)  # [N, *O, C, K]
    c, kk = col.shape[-2], col.shape[-1]
    return jnp.reshape(col, col.shape[:-2] + (geo.group, c // geo.group * kk))


__all__ = ["ConvGeometry", "canonical_kernel", "conv", "conv_canonical", "geometry", "out_shape",
           "patch_length", "patch_view"]
