"""Layout and shape ONNX ops: values move, nothing is computed (plus Shape/Constant producers).

Shape-like operands (Reshape's shape, Slice's bounds, axes, pads, repeats) are ``static``: they
arrive as numpy arrays and are read with plain Python so the op traces under ``jax.jit``.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.errors import UnsupportedModelError

from .dtypes import jax_dtype
from .registry import register


def ints(array) -> list[int]:
    """A static integer operand as a list of Python ints (None stays None)."""
    return [int(v) for v in np.asarray(array).reshape(-1)]


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise UnsupportedModelError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


# -- reshaping ------------------------------------------------------------------------------

@register("Reshape", since=13, static=(1,))
@register("Reshape", since=14, attrs={"allowzero": 0}, static=(1,))
def reshape(x, shape, *, allowzero=0):
    """x with a new shape; 0 copies the input dim (unless allowzero), -1 is inferred."""
    dims = ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return jnp.reshape(x, dims)


@register("Flatten", since=13, attrs={"axis": 1})
@register("Flatten", since=21, attrs={"axis": 1})
def flatten(x, *, axis):
    """x as a matrix: dims before ``axis`` become rows, the rest columns."""
    axis = normalize_axis(axis, x.ndim) if axis != x.ndim else axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return jnp.reshape(x, (rows, -1) if rows else (0, int(np.prod(x.shape[axis:]))))


@register("Transpose", since=13, attrs={"perm": None})
@register("Transpose", since=21, attrs={"perm": None})
def transpose(x, *, perm):
    """Axes permuted by ``perm`` (default: reversed)."""
    return jnp.transpose(x, perm)


@register("Squeeze", since=13, static=(1,))
@register("Squeeze", since=21, static=(1,))
def squeeze(x, axes=None):
    """Remove the listed size-1 axes (all size-1 axes when omitted)."""
    if axes is None:
        return jnp.squeeze(x)
    return jnp.squeeze(x, tuple(normalize_axis(a, x.ndim) for a in ints(axes)))


@register("Unsqueeze", since=13, static=(1,))
@register("Unsqueeze", since=21, static=(1,))
def unsqueeze(x, axes):
    """Insert size-1 axes at the listed positions of the output."""
    rank = x.ndim + len(ints(axes))
    return jnp.expand_dims(x, tuple(sorted(normalize_axis(a, rank) for a in ints(axes))))


@register("Expand", since=13, static=(1,))
def expand(x, shape):
    """x broadcast against ``shape`` (numpy rules, in both directions)."""
    return jnp.broadcast_to(x, np.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))


@register("Tile", since=13, static=(1,))
def tile(x, repeats):
    """x repeated ``repeats[i]`` times along axis i."""
    return jnp.tile(x, ints(repeats))


# -- joining and splitting ------------------------------------------------------------------

@register("Concat", since=13, attrs={"axis": None})
def concat(*xs, axis):
    """Inputs joined along ``axis``."""
    return jnp.concatenate(xs, axis=normalize_axis(axis, xs[0].ndim))


def _split_sizes(dim: int, split, num_outputs: int) -> list[int]:
    if split is not None:
        return ints(split)
    chunk = -(-dim // num_outputs)  # ceil: the last chunk may be smaller (opset 18 rule)
    return [min(chunk, dim - i * chunk) for i in range(num_outputs)]


# num_outputs is implicit at opset 13 (the node's output count); the importer fills it in.
@register("Split", since=13, attrs={"axis": 0, "num_outputs": None}, static=(1,),
          arity_attr="num_outputs")
@register("Split", since=18, attrs={"axis": 0, "num_outputs": None}, static=(1,),
          arity_attr="num_outputs")
def split(x, split=None, *, axis, num_outputs):
    """x cut along ``axis`` into pieces of sizes ``split`` (equal pieces when omitted)."""
    axis = normalize_axis(axis, x.ndim)
    sizes = _split_sizes(x.shape[axis], split, num_outputs)
    bounds = np.cumsum([0] + sizes)
    return tuple(lax.slice_in_dim(x, int(lo), int(hi), axis=axis)
                 for lo, hi in zip(bounds[:-1], bounds[1:]))


def _slice_for(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice bounds (negative = from the end, clamped) as a Python slice."""
    if step == 0:
        raise UnsupportedModelError("Slice step 0 is invalid")
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)
    if start < 0:
        return slice(0, 0, 1)  # nothing left to walk backwards from
    return slice(start, end if end >= 0 else None, step)


@register("Slice", since=13, static=(1, 2, 3, 4))
def slice_(x, starts, ends, axes=None, steps=None):
    """x[starts:ends:steps] along ``axes`` (all leading axes when omitted)."""
    starts, ends = ints(starts), ints(ends)
    axes = ints(axes) if axes is not None else list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, x.ndim)
        index[axis] = _slice_for(start, end, step, x.shape[axis])
    return x[tuple(index)]


def _pad_widths(rank: int, pads: list[int], axes) -> list[tuple[int, int]]:
    axes = [normalize_axis(a, rank) for a in ints(axes)] if axes is not None else range(rank)
    axes = list(axes)
    if len(pads) != 2 * len(axes):
        raise UnsupportedModelError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    widths = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[i + len(axes)])
    return widths


@register("Pad", since=13, attrs={"mode": "constant"}, static=(1,), frozen=(2,))
@register("Pad", since=18, attrs={"mode": "constant"}, static=(1, 3), frozen=(2,))
@register("Pad", since=19, attrs={"mode": "constant"}, static=(1, 3), frozen=(2,))  # + wrap
@register("Pad", since=21, attrs={"mode": "constant"}, static=(1, 3), frozen=(2,))
def pad(x, pads, constant_value=None, axes=None, *, mode):
    """x padded (constant, reflect, edge or wrap); negative pads crop."""
    widths = _pad_widths(x.ndim, ints(pads), axes)
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    if mode == "constant":
        value = 0 if constant_value is None else jnp.reshape(constant_value, ())
        x = jnp.pad(x, grow, mode="constant", constant_values=value)
    elif mode in ("reflect", "edge", "wrap"):
        x = jnp.pad(x, grow, mode=mode)
    else:
        raise UnsupportedModelError(f"Pad mode {mode!r} is not supported")
    crop = tuple(slice(-min(lo, 0), x.shape[i] + min(hi, 0)) for i, (lo, hi) in enumerate(widths))
    return x[crop]


# -- indexing -------------------------------------------------------------------------------

def _wrap_negative(indices, dim: int):
    indices = jnp.asarray(indices)
    return jnp.where(indices < 0, indices + dim, indices)


@register("Gather", since=13, attrs={"axis": 0})
def gather(x, indices, *, axis):
    """x indexed along ``axis`` by ``indices`` (negative indices count from the end)."""
    axis = normalize_axis(axis, x.ndim)
    idx = _wrap_negative(indices, x.shape[axis])
    return jnp.take(x, idx, axis=axis, mode="clip")


# -- shape producers ------------------------------------------------------------------------

def shape_array(dims) -> np.ndarray:
    return np.asarray(list(dims), dtype=jax_dtype(np.int64))


# Shape and Size read only the shape of their input: never a reason to train it.
@register("Shape", since=13, frozen=(0,))
@register("Shape", since=15, attrs={"start": 0, "end": None}, frozen=(0,))
@register("Shape", since=19, attrs={"start": 0, "end": None}, frozen=(0,))
@register("Shape", since=21, attrs={"start": 0, "end": None}, frozen=(0,))
def shape(x, *, start=0, end=None):
    """The dims of x (from ``start`` to ``end``) as an int64 vector."""
    return jnp.asarray(shape_array(np.shape(x)[slice(start, end)]))


@register("Size", since=13, frozen=(0,))
@register("Size", since=19, frozen=(0,))
@register("Size", since=21, frozen=(0,))
def size(x):
    """The number of elements of x."""
    return jnp.asarray(np.asarray(int(np.prod(np.shape(x))), dtype=jax_dtype(np.int64)))


@register("ConstantOfShape", since=9, attrs={"value": None}, static=(0,))
@register("ConstantOfShape", since=20, attrs={"value": None}, static=(0,))
@register("ConstantOfShape", since=21, attrs={"value": None}, static=(0,))
def constant_of_shape(shape, *, value):
    """A tensor of the given shape filled with ``value`` (a 1-element tensor, default float 0)."""
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    dtype = jax_dtype(value.dtype)
    return jnp.full(ints(shape), value.reshape(-1)[0], dtype=dtype)


_CONSTANT_ATTRS = {"value": None, "value_float": None, "value_floats": None, "value_int": None,
                   "value_ints": None, "value_string": None, "value_strings": None,
                   "sparse_value": None}


@register("Constant", since=13, attrs=_CONSTANT_ATTRS)
@register("Constant", since=19, attrs=_CONSTANT_ATTRS)
@register("Constant", since=21, attrs=_CONSTANT_ATTRS)
def constant(**attrs):
    """The constant given by exactly one ``value*`` attribute (numpy, folded at import)."""
    given = {k: v for k, v in attrs.items() if v is not None}
    if len(given) != 1 or "sparse_value" in given:
        raise UnsupportedModelError(f"Constant with attributes {sorted(given)} is not supported")
    (name, value), = given.items()
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64, "value_string": np.str_, "value_strings": np.str_}
    return np.asarray(value, dtype=dtypes.get(name))
