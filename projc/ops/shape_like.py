"""Range, and projc's stand-ins for shape-producing ops whose shape depends on the batch.

torch exports ``torch.zeros(layers, x.size(0), hidden)`` (an RNN's initial state) as
``ConstantOfShape(Concat(..., Gather(Shape(x), 0), ...))``. With the batch symbolic that shape is
no compile-time constant, yet the op needs one. The importer (``projc.frontend.symbolic``) replaces
such an op by a ``projc.*_like`` op that reads each symbolic size from the dims of a runtime value
that carries it (a graph input): ``dims[i] >= 0`` takes ``like.shape[dims[i]]``, ``-1`` takes the
literal ``shape[i]``. Under ``jax.jit`` those dims are static, so the forward still jits for any
batch size.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .dtypes import jax_dtype, np_dtype
from .registry import register


def resolved_shape(like, shape, dims) -> tuple[int, ...]:
    """``shape`` with every entry whose ``dims`` is >= 0 read from ``like``'s dims."""
    return tuple(int(like.shape[d]) if d >= 0 else int(s) for s, d in zip(shape, dims))


@register("Range", since=11, static=(0, 1, 2))
def range_(start, limit, delta):
    """start, start + delta, ... up to (not including) limit; scalars known at compile time."""
    start, limit, delta = (np.asarray(v).item() for v in (start, limit, delta))
    dtype = jnp.result_type(np.asarray(start))
    count = max(int(math.ceil((limit - start) / delta)), 0)
    return jnp.asarray(start + delta * np.arange(count), dtype=jax_dtype(dtype))


@register("projc.fill_like", since=1, attrs={"shape": None, "dims": None, "value": 0.0,
                                             "dtype": "f32"}, frozen=(0,))
def fill_like(like, *, shape, dims, value, dtype):
    """ConstantOfShape with some sizes read from ``like``'s dims (see the module docstring)."""
    return jnp.full(resolved_shape(like, shape, dims), value, dtype=jax_dtype(np_dtype(dtype)))


@register("projc.expand_like", since=1, attrs={"shape": None, "dims": None}, frozen=(1,))
def expand_like(x, like, *, shape, dims):
    """Expand with some target sizes read from ``like``'s dims (numpy broadcasting)."""
    target = resolved_shape(like, shape, dims)
    return jnp.broadcast_to(x, np.broadcast_shapes(tuple(x.shape), target))


@register("projc.range_like", since=1, attrs={"start": 0, "delta": 1, "dim": 0, "dtype": "i64"},
          frozen=(0,))
def range_like(like, *, start, delta, dim, dtype):
    """Range whose limit is ``like``'s size along ``dim``."""
    limit = int(like.shape[dim])
    count = max(int(math.ceil((limit - start) / delta)), 0)
    return jnp.asarray(start + delta * np.arange(count), dtype=jax_dtype(np_dtype(dtype)))


__all__ = ["expand_like", "fill_like", "range_", "range_like", "resolved_shape"]
