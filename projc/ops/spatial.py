"""Spatial ONNX ops of image models beyond Conv and pooling: ConvTranspose, DepthToSpace,
SpaceToDepth (NCHW layout; Resize lives in ``resize.py``)."""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from projc.errors import UnsupportedModelError

from .checks import AUTO_PADS, flag, ints, rank_at_least
from .nn import PRECISION
from .registry import register


def _known(dim) -> bool:
    return isinstance(dim, int)


# -- ConvTranspose ------------------------------------------------------------------------------

def check_conv_transpose(inputs, params) -> None:
    """ConvTranspose: weight [C, M/group, k...] of the input's rank and channels; strides,
    dilations >= 1; pads, output_padding >= 0; output_padding below stride or dilation."""
    x, w = inputs[0], inputs[1] if len(inputs) > 1 else None
    b = inputs[2] if len(inputs) > 2 else None
    if w is None:
        raise ValueError("input 1 (the weight) is missing")
    rank_at_least(x, 3, "input 0 (X)")
    if x is not None and w.rank != x.rank:
        raise ValueError(f"the weight {w.type_str()} must have the rank of the input "
                         f"{x.type_str()}")
    n = w.rank - 2
    kernel = ints(params, "kernel_shape", n, minimum=1)
    if kernel is not None and all(map(_known, w.shape[2:])) and kernel != list(w.shape[2:]):
        raise ValueError(f"attribute kernel_shape={kernel} does not match the weight's spatial "
                         f"shape {list(w.shape[2:])}")
    strides = ints(params, "strides", n, minimum=1) or [1] * n
    dilations = ints(params, "dilations", n, minimum=1) or [1] * n
    ints(params, "pads", 2 * n, minimum=0)
    output_padding = ints(params, "output_padding", n, minimum=0) or [0] * n
    flag(params, "auto_pad", AUTO_PADS)
    for p, s, d in zip(output_padding, strides, dilations):
        if p >= max(s, d):
            raise ValueError(f"attribute output_padding={output_padding}: each entry must be "
                             f"smaller than its stride or dilation")
    shape = params.get("output_shape")
    if shape is not None and len(shape) not in (n, n + 2):
        raise ValueError(f"attribute output_shape={list(shape)} has {len(shape)} entries, "
                         f"expected {n}")
    group = params.get("group", 1)
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"attribute group={group!r} must be an integer >= 1")
    in_channels = w.shape[0]
    if _known(in_channels) and in_channels % group:
        raise ValueError(f"the weight's {in_channels} input channels are not divisible by "
                         f"group={group}")
    if x is not None and _known(x.shape[1]) and _known(in_channels) and x.shape[1] != in_channels:
        raise ValueError(f"the input has {x.shape[1]} channels, the weight {w.type_str()} "
                         f"expects {in_channels}")
    out_channels = w.shape[1] * group if _known(w.shape[1]) else None
    if b is not None and (b.rank != 1 or (_known(out_channels) and b.shape[0] != out_channels)):
        raise ValueError(f"the bias {b.type_str()} must be 1-D of the {out_channels} output "
                         "channels")


def _transpose_pads(in_sizes, kernel, strides, dilations, output_padding, pads, auto_pad,
                    output_shape) -> list[tuple[int, int]]:
    """(begin, end) pads of each spatial axis (the output crop of a transposed convolution)."""
    n = len(in_sizes)
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [size * s for size, s in zip(in_sizes, strides)]
    if output_shape is not None:
        result = []
        for size, k, s, d, a, out in zip(in_sizes, kernel, strides, dilations, output_padding,
                                         list(output_shape)[-n:]):
            total = s * (size - 1) + a + (k - 1) * d + 1 - out  # < 0: the output grows
            small, large = total // 2, total - total // 2
            result.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return result
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad not in ("NOTSET", "", None):
        raise UnsupportedModelError(f"auto_pad {auto_pad!r} is not supported")
    flat = list(pads) if pads else [0] * (2 * n)
    return list(zip(flat[:n], flat[n:]))


_CONV_TRANSPOSE_ATTRS = {"auto_pad": "NOTSET", "dilations": None, "group": 1,
                         "kernel_shape": None, "output_padding": None, "output_shape": None,
                         "pads": None, "strides": None}


@register("ConvTranspose", since=11, attrs=_CONV_TRANSPOSE_ATTRS, check=check_conv_transpose)
@register("ConvTranspose", since=22, attrs=_CONV_TRANSPOSE_ATTRS, check=check_conv_transpose)
def conv_transpose(x, w, b=None, *, auto_pad, dilations, group, kernel_shape, output_padding,
                   output_shape, pads, strides):
    """N-D transposed convolution (the gradient of Conv), NCHW, weights [C, M/group, k...];
    output size stride*(in-1) + output_padding + (k-1)*dilation + 1 - pads (or output_shape)."""
    n = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    output_padding = list(output_padding or [0] * n)
    crop = _transpose_pads(x.shape[2:], kernel, strides, dilations, output_padding, pads,
                           auto_pad, output_shape)
    padding = [((k - 1) * d - lo, (k - 1) * d - hi + a)
               for k, d, (lo, hi), a in zip(kernel, dilations, crop, output_padding)]
    # [C, M/g, k...] -> [M, C/g, k...], spatially flipped: a Conv over the dilated input
    c_in, m_per_group = w.shape[0], w.shape[1]
    kernel_dims = tuple(w.shape[2:])
    grouped = jnp.reshape(w, (group, c_in // group, m_per_group) + kernel_dims)
    grouped = jnp.swapaxes(grouped, 1, 2)
    flipped = jnp.flip(jnp.reshape(grouped, (group * m_per_group, c_in // group) + kernel_dims),
                       axis=tuple(range(2, 2 + n)))
    y = lax.conv_general_dilated(x, flipped, window_strides=[1] * n, padding=padding,
                                 lhs_dilation=strides, rhs_dilation=dilations,
                                 feature_group_count=group, precision=PRECISION)
    if b is not None:
        y = y + jnp.reshape(b, (1, -1) + (1,) * n)
    return y


# -- DepthToSpace / SpaceToDepth ------------------------------------------------------------------

def _check_blocks(inputs, params, *, to_space: bool) -> None:
    x = inputs[0]
    if x is not None and x.rank != 4:
        raise ValueError(f"input 0 {x.type_str()} must be 4-D (N, C, H, W)")
    block = params.get("blocksize")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"attribute blocksize={block!r} must be an integer >= 1")
    flag(params, "mode", ("DCR", "CRD"))
    if x is None:
        return
    if to_space and _known(x.shape[1]) and x.shape[1] % (block * block):
        raise ValueError(f"the input's {x.shape[1]} channels are not divisible by blocksize^2 "
                         f"= {block * block}")
    if not to_space and any(_known(d) and d % block for d in x.shape[2:]):
        raise ValueError(f"the input's spatial sizes {list(x.shape[2:])} are not divisible by "
                         f"blocksize={block}")


def check_depth_to_space(inputs, params) -> None:
    """DepthToSpace: 4-D input, blocksize >= 1 whose square divides the channels, mode DCR/CRD."""
    _check_blocks(inputs, params, to_space=True)


def check_space_to_depth(inputs, params) -> None:
    """SpaceToDepth: 4-D input, blocksize >= 1 dividing the height and width."""
    _check_blocks(inputs, params, to_space=False)


@register("DepthToSpace", since=13, attrs={"blocksize": None, "mode": "DCR"},
          check=check_depth_to_space)
@register("DepthToSpace", since=28, attrs={"blocksize": None, "mode": "DCR"},
          check=check_depth_to_space)
def depth_to_space(x, *, blocksize, mode):
    """Channels moved into blocksize x blocksize spatial blocks (mode DCR: depth-column-row,
    CRD: column-row-depth)."""
    n, c, h, w = x.shape
    b = blocksize
    if mode == "CRD":
        y = jnp.transpose(jnp.reshape(x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    else:
        y = jnp.transpose(jnp.reshape(x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    return jnp.reshape(y, (n, c // (b * b), h * b, w * b))


@register("SpaceToDepth", since=13, attrs={"blocksize": None}, check=check_space_to_depth)
@register("SpaceToDepth", since=28, attrs={"blocksize": None, "mode": "DCR"},
          check=check_space_to_depth)
def space_to_depth(x, *, blocksize, mode="DCR"):
    """Spatial blocksize x blocksize blocks moved into channels, ordered depth-column-row (DCR,
    the inverse of DepthToSpace DCR) or column-row-depth (CRD)."""
    n, c, h, w = x.shape
    b = blocksize
    blocks = jnp.reshape(x, (n, c, h // b, b, w // b, b))
    perm = (0, 1, 3, 5, 2, 4) if mode == "CRD" else (0, 3, 5, 1, 2, 4)
    return jnp.reshape(jnp.transpose(blocks, perm), (n, c * b * b, h // b, w // b))
