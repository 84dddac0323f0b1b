"""The JAX side of projc's ``conv`` family: a Conv or a ConvTranspose as one convolution over the
(lhs-dilated, padded) input, and the patch view on which it is a dot per output position.

Every ``conv`` op (``projc.ir.constraints``; its geometry in ``projc.ir.conv_geometry``) is,
whatever ONNX op it came from,

    y = lax.conv_general_dilated(x, canonical_kernel(w), window_strides, padding, lhs_dilation,
                                 rhs_dilation, feature_group_count=group)

with the canonical kernel ``[OC, C/group, *k]``. A Conv's weight is already canonical; a
ConvTranspose's ``[C, OC/group, *k]`` is swapped per group and flipped spatially, and its strides
become the lhs dilation of a stride-1 convolution padded by ``(k-1)·d - pad`` (ONNX's
``output_padding`` widens the end). ``patch_view`` is the matching im2col: y[n, m, o] =
patch_view(x)[n, o, g(m), :] · canonical_kernel(w)[m].ravel(), the patch entries that fall on
padding or between dilated input pixels being zeros (the patch view's dummy entries).

The family is channels-last (x ``[N, *S, C]``, y ``[N, *O, OC]``): the lowering puts transposes
around it and the ``channels-last`` pass cancels them between convolutions.

**How it is computed** (``conv_last``): channels-last, in the forms XLA's CPU backend runs as fast
library convolutions also inside loops (a projection update's steps run in ``lax.scan``, where
other forms fall back to a naive loop nest, 50-500x slower, measured): one channel group as a
``NHWC``/``HWIO`` convolution; a depthwise conv (one input channel per group) as a sum over the
kernel offsets of shifted inputs times per-channel weights; other groups as one convolution with
the block-diagonal dense kernel (``group`` times the multiply-adds, the fast kernel). The same
functions serve the forward (``conv``) and the projections (``backends/jax/conv.py``).
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


def channels_last(x):
    """[N, C, *S] -> [N, *S, C]."""
    return jnp.moveaxis(x, 1, -1)


def channels_first(x):
    """[N, *S, C] -> [N, C, *S]."""
    return jnp.moveaxis(x, -1, 1)


def nhwc_numbers(n: int):
    """Channels-last activations, ``[*k, I, O]`` kernels: the layout of XLA's CPU library convs."""
    spatial = tuple(range(1, n + 1))
    return lax.ConvDimensionNumbers(lhs_spec=(0, n + 1) + spatial, rhs_spec=(n + 1, n) + tuple(range(n)),
                                    out_spec=(0, n + 1) + spatial)


def hwio(wc):
    """A canonical ``[O, I, *k]`` kernel as ``[*k, I, O]``."""
    n = wc.ndim - 2
    return jnp.transpose(wc, tuple(range(2, n + 2)) + (1, 0))


def block_diagonal(wc, group: int):
    """A grouped canonical kernel ``[OC, C/g, *k]`` as the dense ``[OC, C, *k]`` that is zero
    between groups."""
    if group == 1:
        return wc
    oc, cg = wc.shape[0], wc.shape[1]
    mg = oc // group
    blocks = jnp.reshape(wc, (group, mg, cg) + wc.shape[2:])
    eye = jnp.eye(group, dtype=wc.dtype)
    dense = jnp.einsum("gmc...,gh->gmhc...", blocks, eye)           # [G, Mg, G, Cg, *k]
    return jnp.reshape(dense, (oc, group * cg) + wc.shape[2:])


def dense_conv(xh, wd, geo: ConvGeometry, precision=None):
    """``[N, *S, C]`` with a dense canonical kernel ``[OC, C, *k]`` (no groups) -> ``[N, *O, OC]``."""
    return lax.conv_general_dilated(xh, hwio(wd), window_strides=geo.window_strides, padding=geo.padding,
                                    lhs_dilation=geo.lhs_dilation, rhs_dilation=geo.rhs_dilation,
                                    dimension_numbers=nhwc_numbers(geo.n), precision=precision)


def shifted(xh, geo: ConvGeometry) -> list:
    """The patch view one kernel offset at a time: per offset (row-major), the ``[N, *O, C]`` input
    pixels that offset meets (zeros on padding and between dilated pixels)."""
    n = geo.n
    cfg = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(geo.padding, geo.lhs_dilation)] + [(0, 0, 0)]
    xp = lax.pad(xh, jnp.zeros((), xh.dtype), cfg)
    out = geo.out_spatial(xh.shape[1:n + 1])
    views = []
    for offs in itertools.product(*[range(k) for k in geo.kernel]):
        index = [slice(None)]
        for i, o in enumerate(offs):
            start = o * geo.rhs_dilation[i]
            index.append(slice(start, start + (out[i] - 1) * geo.window_strides[i] + 1, geo.window_strides[i]))
        views.append(xp[tuple(index)])
    return views


def depthwise_conv(xh, wc, geo: ConvGeometry):
    """One input channel per group (``wc`` ``[C·mult, 1, *k]``): Σ over kernel offsets of the shifted
    input times per-channel weights ``[N, *O, C·mult]``."""
    c = xh.shape[-1]
    mult = wc.shape[0] // c
    wk = jnp.reshape(wc, (c, mult, -1))                                # [C, mult, K]
    out = None
    for k, view in enumerate(shifted(xh, geo)):
        term = view[..., None] * wk[:, :, k]
        out = term if out is None else out + term
    assert out is not None  # a kernel has at least one offset
    return jnp.reshape(out, out.shape[:-2] + (c * mult,))


def is_depthwise(geo: ConvGeometry, wc_shape) -> bool:
    return geo.group > 1 and wc_shape[1] == 1


def conv_last(xh, wc, geo: ConvGeometry, precision=None):
    """The convolution of a channels-last ``xh`` ``[N, *S, C]`` with a canonical kernel ``wc``:
    channels-last ``[N, *O, OC]`` (the forms of the module docstring)."""
    if is_depthwise(geo, wc.shape):
        return depthwise_conv(xh, wc, geo)
    return dense_conv(xh, block_diagonal(wc, geo.group), geo, precision)


def conv(xh, w, geo: ConvGeometry, precision=None):
    """y = the ``conv`` op's forward: channels-last ``[N, *S, C]`` -> ``[N, *O, OC]``."""
    return conv_last(xh, canonical_kernel(w, geo), geo, precision)


def is_tiling(geo: ConvGeometry) -> bool:
    """Windows that tile the input: strides equal to the kernel, no padding or dilation (a 2x2
    pooling of stride 2, a ViT's patch convolution). Each pixel then lies in at most one patch."""
    return (tuple(geo.window_strides) == tuple(geo.kernel) and set(geo.rhs_dilation) <= {1}
            and set(geo.lhs_dilation) <= {1} and all(p == (0, 0) for p in geo.padding))


def patch_stack(xh, geo: ConvGeometry):
    """The patch view ``[N, *O, C, K]`` (kernel offsets row-major, last). Tiling windows take a
    reshape and one transpose: the stack of K strided slices costs K gathers forward and K padded
    scatters in its transpose, which a consensus layout runs every step."""
    xh = jnp.asarray(xh)
    if not is_tiling(geo):
        return jnp.stack(shifted(xh, geo), axis=-1)
    n, k = geo.n, geo.kernel
    out = geo.out_spatial(xh.shape[1:n + 1])
    xh = xh[(slice(None),) + tuple(slice(0, o * ki) for o, ki in zip(out, k))]  # drop a ragged edge
    split = [xh.shape[0]] + [d for o, ki in zip(out, k) for d in (o, ki)] + [xh.shape[-1]]
    tiles = jnp.reshape(xh, split)                                     # [N, O1, k1, O2, k2, ..., C]
    perm = [0] + [1 + 2 * i for i in range(n)] + [2 * n + 1] + [2 + 2 * i for i in range(n)]
    t = jnp.transpose(tiles, perm)                                     # [N, *O, C, *k]
    return jnp.reshape(t, t.shape[:n + 2] + (-1,))


def patch_view(xh, geo: ConvGeometry):
    """im2col of the lhs-dilated, padded channels-last input ``[N, *S, C]``: ``[N, *O, group,
    C/group · prod(k)]``, channel-major within a patch (the order of ``canonical_kernel(w)[m].ravel()``)."""
    col = patch_stack(xh, geo)                                         # [N, *O, C, K]
    c, kk = col.shape[-2], col.shape[-1]
    return jnp.reshape(col, col.shape[:-2] + (geo.group, c // geo.group * kk))


__all__ = ["ConvGeometry", "block_diagonal", "canonical_kernel", "channels_first", "channels_last", "conv",
           "conv_last", "dense_conv", "depthwise_conv", "geometry", "hwio", "is_depthwise", "is_tiling", "nhwc_numbers",
           "out_shape", "patch_length", "patch_stack", "patch_view", "shifted"]
