"""Exact projection onto the graph of a segmented sum (a reduction over ragged groups).

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


__all__ = ["segment_sum"]
