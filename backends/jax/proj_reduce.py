"""Exact projections onto the graphs of two reductions: a segmented sum and a mean of squares.

``segment_sum(a, target, segments)``: a ``[..., N]``, target ``[..., G]``; the constraint is
y[..., g] = Σ_{k: segments[k] = g} a[..., k]. The groups are disjoint sums, so the nearest point
is the sum's (DESIGN.md §3) per group: with n_g entries and r_g = Σ_g a0 - y0_g every entry of
group g moves by -r_g/(n_g + 1) and y_g = y0_g + r_g/(n_g + 1). A masked softmax reduces its
unmasked entries, row by row, this way (passes/split.py).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .proj_common import as_floats
from .proj_smooth_domain import cubic_minima


def _onehot(segments, dtype) -> np.ndarray:
    seg = np.asarray(segments, np.int64)
    return np.equal.outer(seg, np.arange(int(seg.max()) + 1)).astype(dtype)  # [N, G]


def segment_sum(a, target, segments):
    """Project (a0, y0) onto {y = segment sums of a} (see the module docstring). Returns (a, y)."""
    a, y0 = as_floats(a, target)
    onehot = _onehot(segments, np.dtype(a.dtype))
    counts = onehot.sum(0)  # n_g
    seg = np.asarray(segments, np.int32)
    d = (a @ onehot - y0) / (counts + 1)
    a = a - jnp.take(d, seg, axis=-1)
    return a, a @ onehot


def mean_square(a, target, axis: int = -1, weight=None):
    """Project onto {y = mean_axis a²} (K = a.shape[axis]) in the metric |a - a0|² + weight·(y - y0)²
    (weight None: K², the sum's metric as ``projections.mean``: the Euclidean projection of
    s = Σ a² onto K·y0). Returns (a, y).

    The graph is invariant under rotations of a, so the nearest point keeps a0's direction:
    a = r·a0/|a0| with r ≥ 0 minimizing (r - ρ0)² + w(c r² - y0)², ρ0 = |a0|, c = 1/K. Its
    stationary points solve 2wc² r³ + (1 - 2wc·y0) r - ρ0 = 0, a depressed cubic r³ + P r + Q
    with Q = -ρ0/(2wc²) ≤ 0: the product of its roots is -Q ≥ 0 and their sum 0, so the greatest
    root is its only non-negative one (proj_smooth_domain.cubic_minima); r = 0 (the domain's end)
    is the other candidate. Where a0 = 0 any direction is optimal: the uniform one is taken.
    """
    a, y0 = as_floats(a, target)
    a = jnp.moveaxis(a, axis, -1)
    k = a.shape[-1]
    w = float(k) ** 2 if weight is None else float(weight)
    c = 1.0 / k
    rho0 = jnp.sqrt(jnp.sum(a * a, axis=-1))
    scale = 2 * w * c * c
    P = (1 - 2 * w * c * y0) / scale
    Q = -rho0 / scale
    r = jnp.maximum(cubic_minima(P, Q)[1], 0)
    cost = lambda x: (x - rho0) ** 2 + w * (c * x * x - y0) ** 2  # noqa: E731
    r = jnp.where(cost(r) <= cost(jnp.zeros_like(r)), r, 0)
    has = rho0 > 0
    unit = jnp.where(has[..., None], a / jnp.where(has, rho0, 1)[..., None], 1 / np.sqrt(k))
    a = r[..., None] * unit
    return jnp.moveaxis(a, -1, axis), jnp.mean(a * a, axis=-1)


__all__ = ["mean_square", "segment_sum"]
