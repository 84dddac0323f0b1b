"""Indexing and scanning ONNX ops: CumSum, TopK, GatherElements, ScatterND, ScatterElements.

Indices that select data are runtime values (negative ones count from the end); the scan axis,
TopK's K and CumSum's axis are compile-time operands (``static``).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.errors import UnsupportedModelError

from .checks import flag
from .dtypes import jax_dtype
from .layout import ints, normalize_axis
from .registry import register


def _wrap(indices, dim):
    indices = jnp.asarray(indices)
    return jnp.where(indices < 0, indices + dim, indices)


def _check_axis_attr(inputs, params) -> None:
    x = inputs[0]
    axis = params.get("axis", 0)
    if x is not None and not -x.rank <= axis < max(x.rank, 1):
        raise ValueError(f"attribute axis={axis} is out of range for input {x.type_str()}")


# -- CumSum -----------------------------------------------------------------------------------

def check_cumsum(inputs, params) -> None:
    """CumSum: exclusive and reverse are 0 or 1."""
    flag(params, "exclusive")
    flag(params, "reverse")


@register("CumSum", since=11, attrs={"exclusive": 0, "reverse": 0}, static=(1,),
          check=check_cumsum)
@register("CumSum", since=14, attrs={"exclusive": 0, "reverse": 0}, static=(1,),
          check=check_cumsum)
def cumsum(x, axis, *, exclusive, reverse):
    """Running sums along the static ``axis`` (from the end if reverse; each element left out
    of its own sum if exclusive)."""
    axis = normalize_axis(ints(axis)[0], x.ndim)
    if reverse:
        x = jnp.flip(x, axis)
    if exclusive:  # shift by one: each sum leaves its own element out
        widths = [(0, 0)] * x.ndim
        widths[axis] = (1, 0)
        x = lax.slice_in_dim(jnp.pad(x, widths), 0, x.shape[axis], axis=axis)
    y = jnp.cumsum(x, axis=axis, dtype=x.dtype)
    return jnp.flip(y, axis) if reverse else y


# -- TopK -------------------------------------------------------------------------------------

def check_topk(inputs, params) -> None:
    """TopK: axis in range; largest and sorted are 0 or 1."""
    _check_axis_attr(inputs, {"axis": params.get("axis", -1)})
    flag(params, "largest")
    flag(params, "sorted")


@register("TopK", since=11, attrs={"axis": -1, "largest": 1, "sorted": 1}, static=(1,),
          check=check_topk)
@register("TopK", since=24, attrs={"axis": -1, "largest": 1, "sorted": 1}, static=(1,),
          check=check_topk)
def topk(x, k, *, axis, largest, sorted):
    """The K largest (or smallest) values along ``axis`` and their int64 indices, sorted, ties
    to the lower index (K a compile-time operand)."""
    axis = normalize_axis(axis, x.ndim)
    count = ints(k)[0]
    if not 0 <= count <= x.shape[axis]:
        raise UnsupportedModelError(f"TopK: K={count} is outside 0..{x.shape[axis]}")
    moved = jnp.moveaxis(x, axis, -1)
    if largest:
        key = moved
    elif jnp.issubdtype(x.dtype, jnp.integer):
        key = ~moved  # order-reversing without overflow (also for unsigned types)
    else:
        key = -moved
    _, idx = lax.top_k(key, count)
    values = jnp.take_along_axis(moved, idx, axis=-1)
    return (jnp.moveaxis(values, -1, axis),
            jnp.moveaxis(idx, -1, axis).astype(jax_dtype(np.int64)))


# -- gather / scatter -------------------------------------------------------------------------

def check_gather_elements(inputs, params) -> None:
    """GatherElements/ScatterElements: axis in range; indices of the data's rank."""
    _check_axis_attr(inputs, params)
    x, idx = inputs[0], inputs[1] if len(inputs) > 1 else None
    if x is not None and idx is not None and idx.rank != x.rank:
        raise ValueError(f"indices {idx.type_str()} must have the rank of the data "
                         f"{x.type_str()}")
    flag(params, "reduction", ("none", "add", "mul", "max", "min"))


@register("GatherElements", since=11, attrs={"axis": 0}, check=check_gather_elements)
@register("GatherElements", since=13, attrs={"axis": 0}, check=check_gather_elements)
def gather_elements(x, indices, *, axis):
    """out[i][j] = x[indices[i][j]][j] (axis 0; likewise for other axes)."""
    axis = normalize_axis(axis, x.ndim)
    return jnp.take_along_axis(x, _wrap(indices, x.shape[axis]), axis=axis, mode="clip")


def _scatter(target, updates, reduction):
    if reduction == "add":
        return target.add(updates)
    if reduction == "mul":
        return target.multiply(updates)
    if reduction == "max":
        return target.max(updates)
    if reduction == "min":
        return target.min(updates)
    return target.set(updates)


def check_scatter_nd(inputs, params) -> None:
    """ScatterND: reduction known; indices' last dim at most the data's rank."""
    flag(params, "reduction", ("none", "add", "mul", "max", "min"))
    x, idx = inputs[0], inputs[1] if len(inputs) > 1 else None
    if x is not None and idx is not None and isinstance(idx.shape[-1], int) \
            and idx.shape[-1] > x.rank:
        raise ValueError(f"indices {idx.type_str()} index {idx.shape[-1]} axes of the "
                         f"{x.rank}-D data")


@register("ScatterND", since=13, check=check_scatter_nd)
@register("ScatterND", since=16, attrs={"reduction": "none"}, check=check_scatter_nd)
@register("ScatterND", since=18, attrs={"reduction": "none"}, check=check_scatter_nd)
def scatter_nd(x, indices, updates, *, reduction="none"):
    """A copy of x with x[indices[i...]] replaced by updates[i...] (or combined: add, mul,
    max, min); indices' last axis indexes x's leading axes."""
    depth = indices.shape[-1]
    index = tuple(_wrap(indices[..., i], x.shape[i]) for i in range(depth))
    return _scatter(jnp.asarray(x).at[index], updates, reduction)


@register("ScatterElements", since=13, attrs={"axis": 0}, check=check_gather_elements)
@register("ScatterElements", since=16, attrs={"axis": 0, "reduction": "none"},
          check=check_gather_elements)
@register("ScatterElements", since=18, attrs={"axis": 0, "reduction": "none"},
          check=check_gather_elements)
def scatter_elements(x, indices, updates, *, axis, reduction="none"):
    """A copy of x with x[indices[i][j]][j] = updates[i][j] (axis 0; likewise for other axes;
    or combined: add, mul, max, min)."""
    axis = normalize_axis(axis, x.ndim)
    grid = list(jnp.indices(indices.shape, sparse=True))
    grid[axis] = _wrap(indices, x.shape[axis])
    return _scatter(jnp.asarray(x).at[tuple(grid)], updates, reduction)
