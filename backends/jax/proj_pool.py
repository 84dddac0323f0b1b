"""The max family's projection over any axes, computed in place.

``projections.max`` projects over the last axis; the family rule used to move the reduced axes
last (a transpose there and back). A global max pool of a channels-last map ``[N, H, W, C]`` reduces
the middle axes, and those transposes, fused by XLA into the projection's elementwise passes, made
it the largest item of a cnn2_digits CP step (a third of it, measured). ``max_over_axes`` runs the
same algorithm with reductions over ``axes`` (keepdims), so nothing moves: the same numbers as
``projections.max`` on the transposed array, the argmax that rises being the first in the row-major
order of the reduced axes, as there.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from . import projections as P


def _add_pairs(x, y):
    return x[0] + y[0], x[1] + y[1]


def max_over_axes(a, y0, axes: tuple[int, ...]):
    """Project (a, y0) onto {y = max over ``axes`` of a}; y0 has a's shape without ``axes``.
    Returns (a', y) as ``projections.max`` does (see there for the algorithm)."""
    axes = tuple(sorted(int(x) % a.ndim for x in axes))
    keep = tuple(i for i in range(a.ndim) if i not in axes)
    n = math.prod(a.shape[i] for i in axes)
    yk = jnp.expand_dims(y0, axes)
    # the first argmax in the row-major order of the reduced axes (ties: exactly one entry rises)
    strides = np.cumprod([1] + [a.shape[i] for i in reversed(axes)])[:-1][::-1]
    flat = sum(jax.lax.broadcasted_iota(jnp.int32, a.shape, ax) * int(st) for ax, st in zip(axes, strides))
    amax = jnp.max(a, axes, keepdims=True)
    first = jnp.min(jnp.where(a == amax, flat, n), axes, keepdims=True)
    top = flat == first
    cap = 2 * int(n).bit_length() + 8
    # start from m1 = (max a + y0)/2, a lower bound of the root (F(m1) = Σ over the other entries
    # above m1 of (m1 - a_j) ≤ 0) much nearer it than projections.max's start, so Newton, which
    # rises monotonically from any point left of the root, needs fewer passes (same fixed point)
    m = jnp.maximum(jnp.minimum((jnp.sum(a, axes, keepdims=True) + yk) / (n + 1), jnp.min(a, axes, keepdims=True)),
                    0.5 * (amax + yk))

    def cond(st):
        return st[2] & (st[3] < cap)

    def body(st):
        m, cnt, _, it = st
        K = top | (a > m)
        # the count and the sum of the entries above m in one pass over a (a variadic reduction;
        # the count is a float, exact below 2^24 entries)
        k, total = jax.lax.reduce((K.astype(a.dtype), jnp.where(K, a, 0)), (zero, zero), _add_pairs, axes)
        k, total = jnp.expand_dims(k, axes), jnp.expand_dims(total, axes)
        mn = (total + yk) / (k + 1)
        return jnp.maximum(m, mn), k, jnp.any(k != cnt), it + 1

    zero = jnp.zeros((), a.dtype)
    cnt = jnp.full(m.shape, n + 1, a.dtype)
    m, _, unconverged, _ = jax.lax.while_loop(cond, body, (m, cnt, jnp.asarray(True), 0))

    def by_sort():
        at = jnp.transpose(a, keep + axes).reshape(tuple(a.shape[i] for i in keep) + (n,))
        return jnp.expand_dims(P._max_level_sort(at, y0), axes)
    m = jax.lax.cond(unconverged, by_sort, lambda: m)
    return jnp.where(top, m, jnp.minimum(a, m)), jnp.squeeze(m, axes)


__all__ = ["max_over_axes"]
