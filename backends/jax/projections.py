"""Exact projection operators onto the graphs of elementary operations.

Convention: ``op(*operands, target, **options) -> (*projected_operands, projected_output)``.  The
operands' current values and the output's target go in; the nearest point (Euclidean over all
operands and the output together) on the graph {(a, y): y = f(a)} comes out, output last.  Operands
broadcast against each other over leading dims and the results have the broadcast shape; vector ops
(linear, bilinear, max) work along the last axis (max: `axis`).  All functions are pure, jit- and
vmap-able, and compute in the inputs' floating dtype (float32 or float64; integer inputs promote to
the default float).  The graph of a discontinuous φ given as a piece table is taken closed; the ops'
discontinuous fns (sign, the staircases round, floor, ceil, fake_quant) keep a margin around their
jumps, so that the projected point is on the graph as the forward evaluates it (see proj_pwl).

Helpers live in sibling modules and are re-exported here: proj_pwl (piecewise-linear tables,
presets, sum_pwl, staircases), proj_smooth (sum_smooth: tanh, sigmoid, ... after a sum; the
backend's sum_activation) with proj_smooth_domain (exp, log, sqrt, rsqrt, reciprocal, square, pow:
their domains and poles), proj_bilinear (bilinear, bilinear_root), proj_losses (output constraints).
"""
from __future__ import annotations

import builtins
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from . import proj_pwl as pwl
from .proj_bilinear import bilinear, bilinear_root, bilinear_root_ab
from .proj_common import as_floats
from .proj_losses import binary_cross_entropy_prox, cross_entropy_prox, huber_prox, l1_prox, margin, squared_error
from .proj_pwl import (  # noqa: A004 - presets
    PRESETS,
    Pieces,
    Staircase,
    abs,
    clip,
    fake_quant,
    hardsigmoid,
    has_point_piece,
    leaky_relu,
    pieces,
    pwl_eval,
    quantize,
    relu,
    relu6,
    sign,
    stair_eval,
    staircase,
    step,
    sum_pwl,
    sum_staircase,
)
from .proj_reduce import mean_square, segment_sum
from .proj_smooth import SMOOTH_FNS, smooth_eval, sum_activation, sum_smooth
from .proj_smooth import handles as activation_handles

__all__ = [
    "identity", "sum", "sum_reduce", "segment_sum", "mean", "mean_square", "embed", "sum_pwl", "linear",
    "bilinear", "bilinear_root", "bilinear_root_ab", "max", "cross_entropy_prox", "margin", "squared_error",
    "binary_cross_entropy_prox", "huber_prox", "l1_prox", "Pieces", "pieces", "has_point_piece",
    "pwl_eval", "PRESETS", "relu", "leaky_relu", "clip", "abs", "sign", "step", "quantize",
    "identity_fn", "pwl", "REGISTRY", "sum_smooth", "smooth_eval", "SMOOTH_FNS", "sum_activation",
    "activation_handles", "Staircase", "staircase", "sum_staircase", "stair_eval", "fake_quant",
    "hardsigmoid", "relu6",
]

identity_fn = pwl.identity  # the piecewise-linear preset φ(x) = x (the name `identity` is the op)


def identity(a, target):
    """Project (a0, y0) onto {y = a}: a = y = (a0 + y0)/2 (elementwise)."""
    a, y = as_floats(a, target)
    m = 0.5 * (a + y)
    return m, m


def sum(*args):  # noqa: A001 - mirrors the op name
    """Project onto {y = Σ_i a_i} (n elementwise operands): r = Σa0 - y0,
    a_i = a0_i - r/(n+1), y = y0 + r/(n+1).  Call as sum(a_1, ..., a_n, target)."""
    if len(args) < 2:
        raise TypeError("sum(*operands, target) needs at least one operand and a target")
    xs = as_floats(*args)
    shape = jnp.broadcast_shapes(*(x.shape for x in xs))
    xs = [jnp.broadcast_to(x, shape) for x in xs]
    *ops, y0 = xs
    d = (builtins.sum(ops[1:], ops[0]) - y0) / (len(ops) + 1)
    new = [x - d for x in ops]
    return (*new, builtins.sum(new[1:], new[0]))  # = y0 + d, exactly f(new operands)


def _reduced_axis_last(a, target, axis):
    """a with ``axis`` moved last and the target, broadcast to one leading shape, and the negative
    axis that moves a result back."""
    a, y0 = as_floats(a, target)
    neg = axis % a.ndim - a.ndim  # stable under leading broadcast
    a = jnp.moveaxis(a, neg, -1)
    shape = jnp.broadcast_shapes(a.shape[:-1], y0.shape)
    return jnp.broadcast_to(a, shape + a.shape[-1:]), jnp.broadcast_to(y0, shape), neg


def sum_reduce(a, target, axis: int = -1):
    """Project onto {y = Σ_axis a} (y has `axis` removed): with n = a.shape[axis],
    r = Σa0 - y0, every a entry -= r/(n+1), y += r/(n+1).  Returns (a, y)."""
    a, y0, neg = _reduced_axis_last(a, target, axis)
    d = (jnp.sum(a, axis=-1) - y0) / (a.shape[-1] + 1)
    a = a - d[..., None]
    return jnp.moveaxis(a, -1, neg), jnp.sum(a, axis=-1)  # = y0 + d


def mean(a, target, axis: int = -1, weight=None):
    """Project onto {y = mean_axis a} in the metric |a - a0|² + weight·(y - y0)² (n = a.shape[axis];
    weight None means n², the default). With d = mean(a0) - y0 every entry moves by the same
    -(weight/n)·d/(1 + weight/n), and y = mean(a). weight=1 is the Euclidean projection
    (entries move by d/(n+1): y stays near the current mean); weight=n² is the Euclidean projection
    of the sum Σa onto the target n·y0 (entries move by n·d/(n+1): y ends d/(n+1) from y0).
    Returns (a, y)."""
    a, y0, neg = _reduced_axis_last(a, target, axis)
    n = a.shape[-1]
    q = (float(n) if weight is None else float(weight) / n)  # weight / n
    shift = -(q / (1.0 + q)) * (jnp.mean(a, axis=-1) - y0)
    a = a + shift[..., None]
    return jnp.moveaxis(a, -1, neg), jnp.mean(a, axis=-1)


def embed(table, indices, target):
    """Project onto {(E, y): y[n] = E[idx[n]]} (E [V, D], integer idx of any shape, y idx.shape + [D]),
    Euclidean in E and y jointly. The constraint splits by table row: row r ties E[r] to every y[n]
    with idx[n] = r, and the nearest point of {all equal} is their common mean, (E0[r] + sum of those
    y0[n]) / (count + 1); rows nobody looks up keep their value. Returns (E, y)."""
    e0, y0 = as_floats(table, target)
    v = e0.shape[0]
    idx = jnp.asarray(indices).reshape(-1)
    idx = jnp.where(idx < 0, idx + v, idx)
    y0 = jnp.broadcast_to(y0, tuple(jnp.shape(indices)) + e0.shape[1:]).reshape((idx.shape[0],) + e0.shape[1:])
    sums = jax.ops.segment_sum(y0, idx, num_segments=v)
    counts = jax.ops.segment_sum(jnp.ones(idx.shape, e0.dtype), idx, num_segments=v)
    e = (e0 + sums) / (1.0 + counts).reshape((v,) + (1,) * (e0.ndim - 1))
    return e, jnp.take(e, idx, axis=0).reshape(tuple(jnp.shape(indices)) + e0.shape[1:])


def linear(c, w, target):
    """Project onto {(w, y): y = c·w} with c constant data (dot over the last axis):
    r = c·w0 - y0, w = w0 - r c/(1+|c|²), y = y0 + r/(1+|c|²).  Returns (c, w, y)."""
    c, w, y0 = as_floats(c, w, target)
    cc = jnp.sum(c * c, axis=-1)
    r = (jnp.sum(c * w, axis=-1) - y0) / (1 + cc)
    w = w - r[..., None] * c
    return c, w, jnp.sum(c * w, axis=-1)  # = y0 + r


def _max_level_sort(a, y0):
    """Common value m of the top entries: sort descending, the first k with m_k ≥ a_(k+1)."""
    n = a.shape[-1]
    srt = -jnp.sort(-a, axis=-1)
    k = jnp.arange(1, n + 1, dtype=a.dtype)
    m = (jnp.cumsum(srt, axis=-1) + y0[..., None]) / (k + 1)
    nxt = jnp.concatenate([srt[..., 1:], jnp.full(srt.shape[:-1] + (1,), -jnp.inf, a.dtype)], axis=-1)
    first = jnp.argmax(m >= nxt, axis=-1)  # the last candidate is always valid
    return jnp.take_along_axis(m, first[..., None], axis=-1)[..., 0]


def _max_level_newton(a, y0, top, cap):
    """The same m by Newton on the optimality condition, from the left; (m, not converged)."""
    n = a.shape[-1]
    # F(m) = Σ_{j∈K(m)} (m - a_j) + (m - y0), K(m) = {argmax} ∪ {a_j > m}: increasing, concave,
    # piecewise linear; Newton from F ≤ 0 rises monotonically and K only shrinks (≤ n steps).
    m = jnp.minimum((jnp.sum(a, axis=-1) + y0) / (n + 1), jnp.min(a, axis=-1))

    def cond(st):
        return st[2] & (st[3] < cap)

    def body(st):
        m, cnt, _, it = st
        K = top | (a > m[..., None])
        k = jnp.sum(K, axis=-1, dtype=jnp.int32)
        mn = (jnp.sum(jnp.where(K, a, 0), axis=-1) + y0) / (k + 1).astype(a.dtype)
        return jnp.maximum(m, mn), k, jnp.any(k != cnt), it + 1

    cnt = jnp.full(m.shape, n + 1, jnp.int32)
    m, _, changed, _ = jax.lax.while_loop(cond, body, (m, cnt, jnp.asarray(True), 0))
    return m, changed


@partial(jax.jit, static_argnames=("axis",))
def max(a, target, axis: int = -1):  # noqa: A001 - mirrors the op name
    """Project onto {y = max_axis a}.  The cost is convex in the common value m of the top entries:
    with a0 sorted descending, m_k = (Σ_{j≤k} a0_(j) + y0)/(k+1) and the first k with m_k ≥ a0_(k+1) is
    optimal.  Top entries move to m, y = m; if m > max a0, one argmax entry rises.  Returns (a, y)."""
    a, y0, neg = _reduced_axis_last(a, target, axis)
    n = a.shape[-1]
    top = jnp.arange(n) == jnp.argmax(a, axis=-1)[..., None]
    # Newton finds m in a few O(n) passes (measured ≤ 15 for n ≤ 1024, also on adversarial spacings);
    # after 2·log2(n)+8 passes any unconverged batch falls back to the O(n log n) sort.
    cap = 2 * int(n).bit_length() + 8
    m, unconverged = _max_level_newton(a, y0, top, cap)
    m = jax.lax.cond(unconverged, lambda: _max_level_sort(a, y0), lambda: m)
    mk = m[..., None]
    out = jnp.where(top, mk, jnp.minimum(a, mk))
    return jnp.moveaxis(out, -1, neg), m


# name -> projection, for the backend's emitter (losses take (x, labels) and return one array)
REGISTRY: dict[str, Callable[..., Any]] = {
    "identity": identity,
    "sum": sum,
    "sum_reduce": sum_reduce,
    "segment_sum": segment_sum,
    "mean": mean,
    "mean_square": mean_square,
    "embed": embed,
    "sum_pwl": sum_pwl,
    "sum_smooth": sum_smooth,
    "linear": linear,
    "bilinear": bilinear,
    "max": max,
    "cross_entropy": cross_entropy_prox,
    "margin": margin,
    "squared_error": squared_error,
    "binary_cross_entropy": binary_cross_entropy_prox,
    "huber": huber_prox,
    "l1": l1_prox,
}
