"""The geometry of projc's ``conv`` family in ``lax.conv_general_dilated`` terms (pure Python: the
shape rule of ``projc.ir.constraints`` uses it; ``projc.ops.convolution`` has the JAX side)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ConvGeometry:
    """One ``conv`` op's convolution, in ``lax.conv_general_dilated`` terms."""

    kernel: tuple[int, ...]
    window_strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]     # of the lhs-dilated input (negative: a crop)
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    group: int
    transpose: bool                          # the weight is ConvTranspose's [C, OC/group, *k]

    @property
    def n(self) -> int:
        return len(self.kernel)

    def out_spatial(self, spatial) -> tuple:
        """Output spatial sizes from the input's (symbolic sizes pass through)."""
        out = []
        for i, size in enumerate(spatial):
            if not isinstance(size, int):
                out.append(size)
                continue
            lo, hi = self.padding[i]
            span = (size - 1) * self.lhs_dilation[i] + 1 + lo + hi
            eff = self.rhs_dilation[i] * (self.kernel[i] - 1) + 1
            out.append((span - eff) // self.window_strides[i] + 1)
        return tuple(out)


def geometry(params: dict, kernel) -> ConvGeometry:
    """The geometry of a ``conv`` op with these params and spatial kernel ``kernel``."""
    kernel = tuple(int(k) for k in kernel)
    n = len(kernel)
    strides = [int(s) for s in (params.get("strides") or [1] * n)]
    dilations = [int(d) for d in (params.get("dilations") or [1] * n)]
    pads = [int(p) for p in (params.get("pads") or [0] * (2 * n))]
    group = int(params.get("group") or 1)
    if params.get("transpose"):
        extra = [int(a) for a in (params.get("output_padding") or [0] * n)]
        padding = tuple(((k - 1) * d - pads[i], (k - 1) * d - pads[i + n] + extra[i])
                        for i, (k, d) in enumerate(zip(kernel, dilations)))
        return ConvGeometry(kernel, (1,) * n, padding, tuple(strides), tuple(dilations), group, True)
    padding = tuple((pads[i], pads[i + n]) for i in range(n))
    return ConvGeometry(kernel, tuple(strides), padding, (1,) * n, tuple(dilations), group, False)


def out_shape(x_shape, w_shape, params: dict) -> tuple:
    """``[N, *O, OC]`` of a ``conv`` op on a channels-last ``[N, *S, C]`` (dims may be symbolic)."""
    geo = geometry(params, w_shape[2:])
    oc = w_shape[1] * geo.group if geo.transpose else w_shape[0]
    return (x_shape[0],) + geo.out_spatial(tuple(x_shape[1:-1])) + (oc,)


def patch_length(w_shape, params: dict) -> int:
    """The length of one patch vector (C/group · prod(k))."""
    geo = geometry(params, w_shape[2:])
    per_group_in = w_shape[0] // geo.group if geo.transpose else w_shape[1]
    return int(per_group_in * math.prod(geo.kernel))


